"""A local stand-in for a Mastodon instance: the REST API the bridge uses and the streaming API, as documented.

Two real HTTP/1.1 servers, as on a real instance: the REST API, and the
streaming server that /api/v2/instance names in `configuration.urls.streaming`.
Bearer tokens with scopes (401 `{"error": "The access token is invalid"}`,
403 outside the scopes); accounts/lookup (404 `Record not found`),
relationships, follow (`requested` for a locked account); the home timeline
(the bot's own posts and those of accounts it follows) with `min_id`,
`max_id`, `since_id` and `limit`, newest first, and `Link` headers (`next`:
older, `prev`: newer); X-RateLimit headers and planned 429s with
X-RateLimit-Reset as an ISO 8601 time. The `user` stream is server-sent
events: `update`, `status.update`, `delete`, `notification`, a `:thump`
heartbeat every `heartbeat` seconds. Faults: planned HTTP errors per path,
stalls (no heartbeat), closes, raw bytes.
"""

from __future__ import annotations

import html
import json
import queue
import time
from collections import deque
from datetime import datetime, timezone
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from testkit.standins.base import Handler, StandIn, base_url, serve, stop

TOKEN = "test-mastodon-token"
BOT_ID = "100"


def iso(t: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if t is None else t, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class MastodonServer(StandIn):
    name = "Mastodon stand-in"

    def __init__(self, accounts: dict[str, str], locked: tuple[str, ...] = (), heartbeat: float = 0.3,
                 scopes: tuple[str, ...] = ("read", "write:follows")) -> None:
        """accounts: acct -> account id, besides the bot (`bot`, id BOT_ID)."""
        super().__init__()
        self.accounts = {"bot": BOT_ID, **accounts}
        self.locked = set(locked)
        self.heartbeat = heartbeat
        self.scopes = set(scopes)
        self.following: set[str] = set()
        self.requested: set[str] = set()
        self.statuses: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.streams: list[tuple[float, str]] = []  # (monotonic time, outcome) of every stream request
        self._plan: dict[str, deque[int]] = {}
        self.refusing: int | None = None  # every stream request gets this HTTP status while set
        self._current: list[queue.Queue[Any]] = []
        self._last_id = int(time.time() * 1000) << 16
        self.api = self._server(streaming=False)
        self.streaming = self._server(streaming=True)

    @property
    def url(self) -> str:
        return base_url(self.api)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.api.server_address[1]}"

    def stop(self) -> None:
        self._closing.set()
        for httpd in (self.api, self.streaming):
            stop(httpd)

    def describe(self) -> str:
        return f"streams {self.streams}"

    # -- test controls ---------------------------------------------------------

    def account(self, acct: str) -> dict[str, Any]:
        account_id = self.accounts[acct]
        return {"id": account_id, "username": acct.split("@")[0], "acct": acct, "display_name": acct.title(),
                "locked": acct in self.locked, "bot": acct == "bot", "url": f"https://{self.host}/@{acct}"}

    def plan(self, path: str, *statuses: int) -> None:
        """The next requests to `path` are answered with these statuses (429 carries X-RateLimit-Reset)."""
        with self._changed:
            self._plan.setdefault(path, deque()).extend(statuses)

    def post(self, acct: str, text: str = "L Chika", *, reply_to: str | None = None, reblog_of: str | None = None,
             quote_of: str | None = None, created_at: float | None = None, html_content: str | None = None,
             stream: bool = True) -> dict[str, Any]:
        """A new status by `acct`; it reaches the home timeline (and the streams) if the bot follows `acct`."""
        with self._changed:
            self._last_id = max(self._last_id + 1, int(time.time() * 1000) << 16)
            status_id = str(self._last_id)
            content = html_content if html_content is not None else f"<p>{html.escape(text)}</p>"
            if reply_to:
                parent = self.statuses[reply_to]["account"]
                mention = (f'<span class="h-card" translate="no"><a href="{parent["url"]}" class="u-url mention">'
                           f'@<span>{parent["username"]}</span></a></span> ')
                content = content.replace("<p>", "<p>" + mention, 1)
            status: dict[str, Any] = {
                "id": status_id, "created_at": iso(created_at), "in_reply_to_id": reply_to,
                "in_reply_to_account_id": self.statuses[reply_to]["account"]["id"] if reply_to else None,
                "sensitive": False, "spoiler_text": "", "visibility": "public", "language": "en",
                "uri": f"https://{self.host}/users/{acct}/statuses/{status_id}",
                "url": f"https://{self.host}/@{acct}/{status_id}", "replies_count": 0, "reblogs_count": 0,
                "favourites_count": 0, "edited_at": None, "content": "" if reblog_of else content,
                "reblog": self.statuses[reblog_of] if reblog_of else None, "account": self.account(acct),
                "media_attachments": [], "mentions": [], "tags": [], "emojis": [], "card": None, "poll": None,
            }
            if quote_of:
                status["quote"] = {"state": "accepted", "quoted_status": self.statuses[quote_of]}
            self.statuses[status_id] = status
            if stream and self._in_home(status):
                self._push_locked("update", json.dumps(status))
            return status

    def edit(self, status_id: str, text: str) -> None:
        with self._changed:
            status = self.statuses[status_id]
            status.update(content=f"<p>{html.escape(text)}</p>", edited_at=iso())
            self._push_locked("status.update", json.dumps(status))

    def delete(self, status_id: str) -> None:
        with self._changed:
            self.statuses.pop(status_id)
            self._push_locked("delete", status_id)

    def refuse_streams(self, status: int | None) -> None:
        """Answer every stream request with `status` until called with None (the streaming server is away)."""
        with self._changed:
            self.refusing = status

    def push(self, *items: tuple[str, str] | bytes | str) -> None:
        """Into the open streams: (event, data), raw bytes, CLOSE or STALL."""
        with self._changed:
            for item in items:
                for q in self._current:
                    q.put(item)

    def wait_streaming(self, count: int = 1, timeout: float = 15.0) -> None:
        """Until `count` streams have been opened in all, and one is open."""
        self.wait(lambda: sum(1 for _, o in self.streams if o == "200") >= count and bool(self._current), timeout,
                  f"{count} stream(s)")

    def home_requests(self) -> list[dict[str, list[str]]]:
        with self._changed:
            return [q for m, path, q in self.requests if path == "/api/v1/timelines/home"]

    # -- protocol ----------------------------------------------------------------

    def _in_home(self, status: dict[str, Any]) -> bool:
        return status["account"]["id"] in self.following | {BOT_ID}

    def _push_locked(self, event: str, data: str) -> None:
        for q in self._current:
            q.put((event, data))

    def _home(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        def bound(name: str) -> int | None:
            return int(query[name][0]) if query.get(name) else None

        limit = min(int(query.get("limit", ["20"])[0]), 40)
        min_id, max_id, since_id = bound("min_id"), bound("max_id"), bound("since_id")
        home = sorted((s for s in self.statuses.values() if self._in_home(s)), key=lambda s: int(s["id"]))
        home = [s for s in home if (max_id is None or int(s["id"]) < max_id)
                and (since_id is None or int(s["id"]) > since_id)]
        if min_id is not None:  # the statuses immediately newer than min_id, still newest first
            return list(reversed([s for s in home if int(s["id"]) > min_id][:limit]))
        return list(reversed(home[-limit:]))

    def _server(self, streaming: bool) -> ThreadingHTTPServer:
        server = self

        class MastodonHandler(Handler):
            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                self.send_json(status, body, {"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "299",
                                              "X-RateLimit-Reset": iso(time.time() + 0.5), **(headers or {})})

            def _authorised(self, scope: str = "read") -> bool:
                if not self.bearer(TOKEN):
                    self._send(401, {"error": "The access token is invalid"})
                    return False
                if scope not in server.scopes:
                    self._send(403, {"error": "This action is outside the authorized scopes"})
                    return False
                return True

            def _planned(self, path: str) -> bool:
                with server._changed:
                    planned = server._plan.get(path)
                    status = planned.popleft() if planned else None
                if status is None:
                    return False
                if status == 429:
                    self._send(429, {"error": "Too many requests"},
                               {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": iso(time.time() + 0.5)})
                else:
                    self._send(status, {"error": "planned failure"})
                return True

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                with server._changed:
                    server.requests.append(("GET", parts.path, query))
                if streaming:
                    self._streaming(parts.path)
                    return
                if self._planned(parts.path) or not self._authorised():
                    return
                if parts.path == "/api/v1/accounts/verify_credentials":
                    self._send(200, server.account("bot"))
                elif parts.path == "/api/v2/instance":
                    self._send(200, {"domain": server.host, "title": "Test", "version": "4.3.0", "configuration": {
                        "urls": {"streaming": f"ws://127.0.0.1:{server.streaming.server_address[1]}"}}})
                elif parts.path == "/api/v1/accounts/lookup":
                    acct = query.get("acct", [""])[0]
                    if acct in server.accounts:
                        self._send(200, server.account(acct))
                    else:
                        self._send(404, {"error": "Record not found"})
                elif parts.path == "/api/v1/accounts/relationships":
                    with server._changed:
                        self._send(200, [{"id": i, "following": i in server.following,
                                          "requested": i in server.requested, "followed_by": False,
                                          "blocking": False, "muting": False} for i in query.get("id[]", [])])
                elif parts.path == "/api/v1/timelines/home":
                    with server._changed:
                        page = server._home(query)
                    links = []
                    if page:
                        base = f"{server.url}{parts.path}"
                        limit = {"limit": query["limit"][0]} if query.get("limit") else {}
                        links = [f'<{base}?{urlencode({**limit, "max_id": page[-1]["id"]})}>; rel="next"',
                                 f'<{base}?{urlencode({**limit, "min_id": page[0]["id"]})}>; rel="prev"']
                    self._send(200, page, {"Link": ", ".join(links)} if links else None)
                else:
                    self._send(404, {"error": "Record not found"})

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server._changed:
                    server.requests.append(("POST", parts.path, {}))
                if streaming or self._planned(parts.path) or not self._authorised("write:follows"):
                    return
                segments = parts.path.split("/")
                if len(segments) == 6 and segments[:4] == ["", "api", "v1", "accounts"] and segments[5] == "follow":
                    account_id = segments[4]
                    acct = next((a for a, i in server.accounts.items() if i == account_id), None)
                    if acct is None:
                        self._send(404, {"error": "Record not found"})
                        return
                    with server._changed:
                        (server.requested if acct in server.locked else server.following).add(account_id)
                        self._send(200, {"id": account_id, "following": account_id in server.following,
                                         "requested": account_id in server.requested})
                else:
                    self._send(404, {"error": "Record not found"})

            def _streaming(self, path: str) -> None:
                if path == "/api/v1/streaming/health":
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"OK")
                    return
                with server._changed:
                    planned = server._plan.get(path)
                    status = planned.popleft() if planned else server.refusing
                    if status is None and not self.bearer(TOKEN):
                        status = 401
                    if status is None and path != "/api/v1/streaming/user":
                        status = 404
                    server.streams.append((time.monotonic(), str(status or 200)))
                    events: queue.Queue[Any] = queue.Queue()
                    if status is None:
                        server._current.append(events)
                    server._changed.notify_all()
                if status is not None:
                    body = {401: {"error": "The access token is invalid"}}.get(status, {"error": "planned failure"})
                    self._send(status, body)
                    return
                try:
                    self._serve(events)
                finally:
                    with server._changed:
                        server._current.remove(events)
                        server._changed.notify_all()

            def _serve(self, events: queue.Queue[Any]) -> None:
                self.start_stream("text/event-stream", {"Cache-Control": "private, no-store"})
                self.chunk(b":)\n")
                self.pump(events, server.heartbeat, b":thump\n", self._event, lambda: not server._closing.is_set())

            def _event(self, item: tuple[str, str]) -> bool:
                event, data = item
                self.chunk(f"event: {event}\ndata: {data}\n\n".encode())
                return True

        return serve(MastodonHandler)
