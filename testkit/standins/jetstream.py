"""Local stand-ins for Bluesky: a Jetstream `/subscribe` WebSocket server and the handle resolver, as documented.

Jetstream: JSON text frames; `wantedCollections` (NSIDs or `prefix.*`, commit
events only) and `wantedDids` (every event kind) as repeated parameters, a
comma-separated list refused with HTTP 400; `cursor` in unix microseconds,
inclusive, replaying the kept events from there before the live ones (absent:
live only); `maxMessageSizeBytes`; a ping from the server every
`ping_interval` seconds. Faults: planned answers to the next handshakes (an
HTTP status, or accept and close at once), frames pushed past the filters
(garbage, binary, oversized, unwanted kinds), closing every connection.
The resolver answers `com.atproto.identity.resolveHandle` with `{"did"}` or
HTTP 400 `{"error":"InvalidRequest","message":"Unable to resolve handle"}`.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection
from websockets.sync.server import serve as serve_websocket

from testkit.standins.base import Handler, StandIn, base_url, serve, stop

POST = "app.bsky.feed.post"
CLOSE, DROP = "close", "drop"  # a clean close frame; a TCP close without one


def now_us() -> int:
    return time.time_ns() // 1000


def post_event(did: str, rkey: str, text: str = "L Chika", *, operation: str = "create", reply: bool = False,
               embed: str | None = None, collection: str = POST, time_us: int | None = None) -> dict[str, Any]:
    """A commit event as Jetstream sends it; embed is an embed $type (app.bsky.embed.record, ...)."""
    commit: dict[str, Any] = {"rev": "3l3qo2vutsw2b", "operation": operation, "collection": collection, "rkey": rkey}
    if operation != "delete":
        record: dict[str, Any] = {"$type": collection, "createdAt": "2024-09-09T19:46:02.102Z", "langs": ["en"]}
        if collection == POST:
            record["text"] = text
        else:  # a repost: the subject post, no text
            record["subject"] = {"uri": f"at://did:plc:other/{POST}/3l3qabc", "cid": "bafyreia"}
        if reply:
            parent = {"uri": f"at://did:plc:other/{POST}/3l3qparent", "cid": "bafyreib"}
            record["reply"] = {"root": parent, "parent": parent}
        if embed == "app.bsky.embed.record":
            record["embed"] = {"$type": embed, "record": {"uri": f"at://did:plc:other/{POST}/3l3q", "cid": "bafyc"}}
        elif embed:
            record["embed"] = {"$type": embed, "record": {"record": {"uri": f"at://did:plc:other/{POST}/3l3q"}},
                               "media": {"$type": "app.bsky.embed.images", "images": []}}
        commit["record"] = record
        commit["cid"] = "bafyreidwaivazkwu67xztlmuobx35hs2lnfh3kolmgfmucldvhd3sgzcqi"
    event: dict[str, Any] = {"did": did, "kind": "commit", "commit": commit}
    if time_us is not None:
        event["time_us"] = time_us
    return event


def identity_event(did: str, handle: str) -> dict[str, Any]:
    return {"did": did, "kind": "identity",
            "identity": {"did": did, "handle": handle, "seq": 1409752997, "time": "2024-09-05T06:11:04.870Z"}}


class _Subscriber:
    def __init__(self, collections: list[str], dids: list[str], max_size: int) -> None:
        self.collections = collections
        self.dids = set(dids)
        self.max_size = max_size
        self.frames: queue.Queue[str | bytes] = queue.Queue()

    def wants(self, event: dict[str, Any], frame: str) -> bool:
        if self.dids and event.get("did") not in self.dids:
            return False
        if self.max_size and len(frame.encode()) > self.max_size:
            return False
        if event.get("kind") != "commit" or not self.collections:
            return True
        collection = str((event.get("commit") or {}).get("collection", ""))
        return any(collection == c or c.endswith(".*") and collection.startswith(c[:-1]) for c in self.collections)


class JetstreamServer(StandIn):
    name = "Jetstream stand-in"

    def __init__(self, ping_interval: float = 0.5) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []  # what the service keeps, in time_us order
        self.queries: list[dict[str, list[str]]] = []  # query of every accepted subscription
        self.attempts: list[tuple[float, str]] = []  # (monotonic time, outcome) of every handshake
        self._plan: deque[int | str] = deque()
        self.refusing: int | None = None  # every handshake gets this HTTP status while set
        self._subscribers: list[_Subscriber] = []
        self._drop: set[int] = set()  # connections to close as soon as they are accepted
        self._server: Server = serve_websocket(self._handler, "127.0.0.1", 0, process_request=self._process_request,
                                     ping_interval=ping_interval, ping_timeout=None, compression=None,
                                     max_size=None)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.socket.getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/subscribe"

    def start(self) -> JetstreamServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self.close_all(DROP)
        self._server.shutdown()

    # -- test controls ---------------------------------------------------------

    def plan(self, *answers: int | str) -> None:
        """Answers to the next handshakes: an HTTP status, or DROP (accept, then close at once)."""
        with self._changed:
            self._plan.extend(answers)

    def publish(self, *events: dict[str, Any]) -> list[dict[str, Any]]:
        """Events the service receives now (time_us set if absent): kept, and sent to matching subscribers."""
        with self._changed:
            for event in events:
                if "time_us" not in event:
                    event["time_us"] = max(now_us(), (self.events[-1]["time_us"] + 1) if self.events else 0)
                self.events.append(event)
                self.events.sort(key=lambda e: e["time_us"])
                frame = json.dumps(event)
                for sub in self._subscribers:
                    if sub.wants(event, frame):
                        sub.frames.put(frame)
        return list(events)

    def refuse(self, status: int | None) -> None:
        """Answer every handshake with `status` until called with None (the service is away)."""
        with self._changed:
            self.refusing = status

    def push_raw(self, *frames: str | bytes | dict[str, Any]) -> None:
        """Frames sent to every live subscriber past all filters (a hostile or broken server)."""
        with self._changed:
            for sub in self._subscribers:
                for frame in frames:
                    sub.frames.put(json.dumps(frame) if isinstance(frame, dict) else frame)

    def close_all(self, how: str = CLOSE) -> None:
        with self._changed:
            for sub in self._subscribers:
                sub.frames.put(how)

    def describe(self) -> str:
        return f"attempts {self.attempts}"

    def wait_subscribed(self, count: int = 1, timeout: float = 15.0) -> None:
        """Until `count` subscriptions have been accepted in all, and one is live."""
        self.wait(lambda: len(self.queries) >= count and bool(self._subscribers), timeout, f"{count} subscription(s)")

    # -- protocol ----------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        parts = urlsplit(request.path)
        query = parse_qs(parts.query)
        with self._changed:
            planned = self._plan.popleft() if self._plan else self.refusing
            if parts.path != "/subscribe":
                outcome, answer = "404", connection.respond(404, "not found\n")
            elif any("," in v for v in query.get("wantedCollections", []) + query.get("wantedDids", [])):
                outcome, answer = "400", connection.respond(400, "invalid wantedDids or wantedCollections\n")
            elif isinstance(planned, int):
                outcome, answer = str(planned), connection.respond(planned, "planned failure\n")
            else:
                outcome, answer = planned or "101", None
                self.queries.append(query)
                if planned == DROP:
                    self._drop.add(id(connection))
            self.attempts.append((time.monotonic(), outcome))
            self._changed.notify_all()
        return answer

    def _handler(self, connection: ServerConnection) -> None:
        query = parse_qs(urlsplit(connection.request.path if connection.request else "").query)
        sub = _Subscriber(query.get("wantedCollections", []), query.get("wantedDids", []),
                          int(query.get("maxMessageSizeBytes", ["0"])[0]))
        with self._changed:
            if id(connection) in self._drop:
                self._drop.discard(id(connection))
                connection.close_socket()
                return
            cursor = query.get("cursor")
            if cursor:  # replay from the cursor (inclusive), then live: no gap, under one lock
                for event in self.events:
                    frame = json.dumps(event)
                    if event["time_us"] >= int(cursor[0]) and sub.wants(event, frame):
                        sub.frames.put(frame)
            self._subscribers.append(sub)
            self._changed.notify_all()
        try:
            while not self._closing.is_set():
                try:
                    item = sub.frames.get(timeout=0.2)
                except queue.Empty:
                    if connection.close_code is not None:
                        return
                    continue
                if item == CLOSE:
                    connection.close()
                    return
                if item == DROP:
                    connection.close_socket()
                    return
                connection.send(item)
        except (ConnectionClosed, OSError):
            return
        finally:
            with self._changed:
                self._subscribers.remove(sub)
                self._changed.notify_all()


class HandleResolver:
    """`GET /xrpc/com.atproto.identity.resolveHandle?handle=...` for the handles it knows."""

    def __init__(self, handles: dict[str, str]) -> None:
        self.handles = handles
        self.requests: list[str] = []
        resolver = self

        class ResolverHandler(Handler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                handle = parse_qs(parts.query).get("handle", [""])[0]
                resolver.requests.append(handle)
                did = resolver.handles.get(handle.lower())
                if parts.path != "/xrpc/com.atproto.identity.resolveHandle":
                    self.send_json(404, {"error": "MethodNotImplemented", "message": "Method Not Implemented"})
                elif did:
                    self.send_json(200, {"did": did})
                else:
                    self.send_json(400, {"error": "InvalidRequest", "message": "Unable to resolve handle"})

        self.httpd = serve(ResolverHandler)

    @property
    def url(self) -> str:
        return base_url(self.httpd)

    def stop(self) -> None:
        stop(self.httpd)
