"""A local stand-in for the X API v2 filtered stream, speaking the protocol as X documents it.

A real threaded HTTP/1.1 server: bearer auth, `GET /2/users/by`, the rules
endpoints with their real response shapes (201 for an add, `meta.summary`,
`DuplicateRule` and too-long errors), and `GET /2/tweets/search/stream` as a
never-ending chunked body of `\\r\\n`-terminated JSON lines with bare `\\r\\n`
keep-alives. Lines are deliberately sent across chunk boundaries (the `\\r` and
the `\\n` in different chunks). Faults are planned per connection attempt
(401/409/429/503 with X's bodies, a socket closed before any answer) or pushed
into the open stream (in-stream errors, close, TCP reset, stall, raw bytes).
"""

from __future__ import annotations

import json
import queue
import socket
import struct
import time
from collections import deque
from datetime import datetime, timezone
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testkit.standins.base import Handler, StandIn, base_url, serve, stop

TOKEN = "test-bearer-token"
PROBLEMS = "https://api.twitter.com/2/problems"

BODY_401 = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
BODY_409 = {"title": "ConnectionException", "detail": "You must define rules using the POST "
            "/2/tweets/search/stream/rules endpoint before connecting to filtered stream.",
            "connection_issue": "RuleConfigurationIssue", "type": f"{PROBLEMS}/streaming-connection"}
BODY_429 = {"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank", "status": 429}
BODY_429_CONNECTIONS = {"title": "ConnectionException", "detail": "This stream is currently at the maximum allowed "
                        "connection limit.", "connection_issue": "TooManyConnections",
                        "type": f"{PROBLEMS}/streaming-connection"}
BODY_429_CAP = {"title": "UsageCapExceeded", "detail": "Usage cap exceeded: Monthly product cap",
                "type": f"{PROBLEMS}/usage-capped", "period": "Monthly", "scope": "Product"}
BODY_503 = {"title": "Service Unavailable", "detail": "Service Unavailable", "type": "about:blank", "status": 503}
OPERATIONAL_DISCONNECT = {"errors": [{
    "title": "operational-disconnect", "disconnect_type": "OperationalDisconnect",
    "detail": "This stream has been disconnected for operational reasons.",
    "type": f"{PROBLEMS}/operational-disconnect"}]}

# Pushed into an open stream besides posts (dicts), raw bytes, CLOSE and STALL: a TCP reset.
RESET = "reset"


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def post(post_id: str, text: str, author_id: str, username: str, kind: str | None = None,
         created_at: str | None = None, note: str | None = None) -> dict[str, Any]:
    """A delivered post as the stream sends it; kind is None, 'retweeted', 'replied_to' or 'quoted'."""
    data: dict[str, Any] = {"id": post_id, "text": text, "author_id": author_id,
                            "created_at": created_at or now_iso(), "edit_history_tweet_ids": [post_id]}
    users = [{"id": author_id, "name": username.title(), "username": username}]
    if kind:
        data["referenced_tweets"] = [{"type": kind, "id": "1" + post_id}]
        users.insert(0, {"id": "777", "name": "Other", "username": "someone_else"})  # never index [0]
    if kind == "replied_to":
        data["in_reply_to_user_id"] = "777"
    if note:
        data["note_tweet"] = {"text": note}
    return {"data": data, "includes": {"users": users}, "matching_rules": [{"id": "1500000000000000001"}]}


class XStreamServer(StandIn):
    name = "X stand-in"

    def __init__(self, users: dict[str, str], keepalive: float = 0.5, rule_limit: int = 512) -> None:
        super().__init__()
        self.users = {name.lower(): (uid, name) for name, uid in users.items()}  # username -> id
        self.keepalive = keepalive
        self.rule_limit = rule_limit
        self.rules: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.user_agents: set[str] = set()
        self.attempts: list[tuple[float, str]] = []  # stream connection attempts: (monotonic time, outcome)
        self._plan: deque[tuple[int, dict] | None] = deque()  # None: close the socket without an answer
        self._current: queue.Queue | None = None
        self._next_rule = 1600000000000000000
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.httpd is not None, "not started"
        return base_url(self.httpd)

    def start(self) -> XStreamServer:
        self.httpd = serve(self._handler_class())
        return self

    def stop(self) -> None:
        self._closing.set()
        if self.httpd is not None:
            stop(self.httpd)

    def describe(self) -> str:
        return f"attempts {self.attempts}"

    # -- test controls ---------------------------------------------------

    def plan(self, *answers: tuple[int, dict] | None) -> None:
        """Answers for the next stream connection attempts; after them the stream opens normally."""
        with self._changed:
            self._plan.extend(answers)

    def push(self, *actions: dict | bytes | str) -> None:
        """Send into the open stream: a post (dict), raw bytes, CLOSE, RESET or STALL."""
        with self._changed:
            assert self._current is not None, "no open stream"
            for action in actions:
                self._current.put(action)

    def add_rule(self, value: str, tag: str | None) -> str:
        with self._changed:
            return self._add_rule_locked(value, tag)

    def wait_streaming(self, count: int = 1, timeout: float = 15.0) -> None:
        """Until `count` stream connections have been answered with 200."""
        self.wait(lambda: sum(1 for _, o in self.attempts if o == "200") >= count, timeout, f"{count} stream(s)")

    def wait_attempts(self, count: int, timeout: float = 15.0) -> None:
        self.wait(lambda: len(self.attempts) >= count, timeout, f"{count} attempt(s)")

    # -- protocol ----------------------------------------------------------

    def _add_rule_locked(self, value: str, tag: str | None) -> str:
        self._next_rule += 1
        rule_id = str(self._next_rule)
        self.rules[rule_id] = {"id": rule_id, "value": value, **({"tag": tag} if tag else {})}
        return rule_id

    def _handler_class(self) -> type[Handler]:
        server = self

        class XHandler(Handler):
            def _send_json(self, status: int, body: dict) -> None:
                self.send_json(status, body, {"x-rate-limit-limit": "50", "x-rate-limit-remaining": "49",
                                              "x-rate-limit-reset": str(int(time.time()) + 900)})

            def _authorised(self) -> bool:
                if self.bearer(TOKEN):
                    return True
                self._send_json(401, BODY_401)
                return False

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                with server._changed:
                    server.requests.append(("GET", parts.path, query))
                    server.user_agents.add(self.headers.get("User-Agent", ""))
                if parts.path == "/2/tweets/search/stream":
                    self._stream()
                elif not self._authorised():
                    return
                elif parts.path == "/2/users/by":
                    self._users(query)
                elif parts.path == "/2/tweets/search/stream/rules":
                    with server._changed:
                        data = list(server.rules.values())
                    meta = {"sent": now_iso(), "result_count": len(data)}
                    self._send_json(200, {"data": data, "meta": meta} if data else {"meta": meta})
                else:
                    self._send_json(404, {"title": "Not Found Error", "type": "about:blank", "status": 404})

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with server._changed:
                    server.requests.append(("POST", parts.path, {"body": [raw.decode()]}))
                if not self._authorised():
                    return
                if parts.path != "/2/tweets/search/stream/rules":
                    self._send_json(404, {"title": "Not Found Error", "type": "about:blank", "status": 404})
                    return
                body = json.loads(raw)
                with server._changed:
                    if "add" in body:
                        status, answer = 201, server._add(body["add"])
                    else:
                        status, answer = 200, server._delete(body["delete"]["ids"])
                    server._changed.notify_all()
                self._send_json(status, answer)

            def _users(self, query: dict[str, list[str]]) -> None:
                names = query.get("usernames", [""])[0].split(",")
                data, errors = [], []
                for name in names:
                    found = server.users.get(name.lower())
                    if found:
                        data.append({"id": found[0], "name": found[1].title(), "username": found[1]})
                    else:
                        errors.append({"value": name, "detail": f"Could not find user with usernames: [{name}].",
                                       "title": "Not Found Error", "resource_type": "user", "parameter": "usernames",
                                       "resource_id": name, "type": f"{PROBLEMS}/resource-not-found"})
                self._send_json(200, {**({"data": data} if data else {}), **({"errors": errors} if errors else {})})

            def _stream(self) -> None:
                with server._changed:
                    planned = server._plan.popleft() if server._plan else ()
                    if planned is None:
                        outcome = "reset"
                    elif planned:
                        outcome = str(planned[0])
                    elif not self.bearer(TOKEN):
                        outcome, planned = "401", (401, BODY_401)
                    elif not server.rules:
                        outcome, planned = "409", (409, BODY_409)
                    else:
                        outcome = "200"
                    actions: queue.Queue = queue.Queue()
                    if outcome == "200":
                        server._current = actions
                    server.attempts.append((time.monotonic(), outcome))
                    server._changed.notify_all()
                if planned is None:
                    self._reset()
                elif planned:
                    self._send_json(*planned)
                else:
                    self.start_stream("application/json; charset=utf-8")
                    self.pump(actions, server.keepalive, b"\r\n", self._write,
                              lambda: not server._closing.is_set() and server._current is actions)

            def _write(self, action: dict | str) -> bool:
                if action == RESET:
                    self._reset()
                    return False
                assert isinstance(action, dict), action
                # Chunk boundaries are not line boundaries: half a line, the rest with \r, then \n.
                data = json.dumps(action, ensure_ascii=False, separators=(",", ":")).encode()
                middle = len(data) // 2
                for piece in (data[:middle], data[middle:] + b"\r", b"\n"):
                    if piece:
                        self.chunk(piece)
                return True

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

        return XHandler

    def _add(self, rules: list[dict[str, str]]) -> dict[str, Any]:
        created: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        existing = {r["value"]: r["id"] for r in self.rules.values()}
        for rule in rules:
            value = rule["value"]
            if value in existing:
                errors.append({"value": value, "id": existing[value], "title": "DuplicateRule",
                               "type": f"{PROBLEMS}/duplicate-rules"})
            elif len(value) > self.rule_limit:
                errors.append({"value": value, "details": [f"Rule length exceeds the max allowed {self.rule_limit}."],
                               "title": "UnprocessableEntity", "type": f"{PROBLEMS}/invalid-rules"})
            else:
                rule_id = self._add_rule_locked(value, rule.get("tag"))
                created.append(self.rules[rule_id])
        invalid = sum(1 for e in errors if e["title"] != "DuplicateRule")
        summary = {"created": len(created), "not_created": len(errors), "valid": len(rules) - invalid,
                   "invalid": invalid}
        answer: dict[str, Any] = {"meta": {"sent": now_iso(), "summary": summary}}
        if created:
            answer["data"] = created
        if errors:
            answer["errors"] = errors
        return answer

    def _delete(self, ids: list[str]) -> dict[str, Any]:
        deleted = [i for i in ids if self.rules.pop(i, None) is not None]
        summary = {"deleted": len(deleted), "not_deleted": len(ids) - len(deleted)}
        answer: dict[str, Any] = {"meta": {"sent": now_iso(), "summary": summary}}
        missing = [i for i in ids if i not in deleted]
        if missing:
            answer["errors"] = [{"parameters": {"ids": missing}, "message": "Rule ids not found"}]
        return answer
