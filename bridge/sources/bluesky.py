"""Bluesky: new posts of allowed accounts from Jetstream, a public WebSocket service (no account, no key).

Handles are resolved to DIDs once at start (com.atproto.identity.resolveHandle)
and everything keys on DIDs, which never change. The subscription asks only
for `app.bsky.feed.post` commits of the allowed DIDs; every event is checked
again here all the same. Jetstream keeps about a day of events: the last
`time_us` is kept in --state and a reconnect (or a restart) resumes a few
seconds before it, so posts made while the bridge was away are replayed once
(duplicates are dropped by id, stale posts by expiry). A filtered stream can
be silent for days, so a dead connection is found with WebSocket pings (every
stall_timeout / 2 seconds, each answered within stall_timeout / 2), not by
silence. websockets does the protocol, the pings and the size limit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from bridge.backoff import ExponentialBackoff
from bridge.matching import Post
from bridge.pipeline import Pipeline, network_log
from bridge.sources import MAX_LINE, USER_AGENT, Ended, Refused, StreamSource
from bridge.state import Cursors

log = network_log("bluesky")
# websockets logs a failed keepalive with a traceback; the reconnect line already says it, once.
quiet = logging.getLogger("bridge.bluesky.websockets")
quiet.setLevel(logging.CRITICAL)

POST = "app.bsky.feed.post"
QUOTE_EMBEDS = ("app.bsky.embed.record", "app.bsky.embed.recordWithMedia")
CURSOR_KEY = "bluesky"
REPLAY_MARGIN_US = 5_000_000  # resume this long before the last event seen: the cursor is a clock, not a sequence
HARD_MAX_FRAME = 16 * MAX_LINE  # beyond this websockets closes the connection; up to it we skip bigger frames


def resolve_handle(client: httpx.Client, handle: str) -> str:
    """The DID of a handle; Refused if it has none, httpx errors for the network's faults."""
    response = client.get("/xrpc/com.atproto.identity.resolveHandle", params={"handle": handle})
    if response.status_code == 400:
        raise Refused(f"unknown Bluesky handle in bridge.allow.bluesky: {handle} "
                      f"({str(client.base_url).rstrip('/')} cannot resolve it)")
    response.raise_for_status()
    body = response.json()
    did = body.get("did") if isinstance(body, dict) else None
    if not isinstance(did, str) or not did.startswith("did:"):
        raise httpx.DecodingError(f"resolveHandle({handle}) answered without a DID")
    return did


def subscribe_url(base: str, dids: list[str], cursor: int | None) -> str:
    """One parameter per value: Jetstream rejects comma-separated lists."""
    params: list[tuple[str, str | int]] = [("wantedCollections", POST), *(("wantedDids", d) for d in dids),
                                           ("maxMessageSizeBytes", MAX_LINE)]
    if cursor is not None:
        params.append(("cursor", cursor))
    return f"{base}{'&' if '?' in base else '?'}{urlencode(params)}"


def _uri(did: str, rkey: str) -> str:
    return f"at://{did}/{POST}/{rkey}"


def parse_commit(event: dict[str, Any], handles: dict[str, str]) -> Post | None:
    """A post (or an edit) from a commit event; None for what is no post (a delete, another collection)."""
    did, commit = event.get("did"), event.get("commit")
    if not isinstance(did, str) or not isinstance(commit, dict):
        raise TypeError("commit event without did or commit")
    rkey, operation, collection = commit.get("rkey"), commit.get("operation"), commit.get("collection")
    if not isinstance(rkey, str) or not rkey:
        raise TypeError("commit without rkey")
    time_us = event.get("time_us")
    when = time_us / 1e6 if isinstance(time_us, int) else None
    handle = handles.get(did)
    source = {"did": did, **({"handle": handle} if handle else {}), "uri": _uri(did, rkey)}

    def post(text: str, kind: str, reply: bool = False, quote: bool = False) -> Post:
        return Post(network="bluesky", id=rkey, command_id=f"bsky:{did}/{rkey}", author_id=did, author=handle,
                    text=text, time=when, kind=kind, reply=reply, quote=quote, source=source)

    if collection == "app.bsky.feed.repost":
        return post("", "repost")
    if collection != POST or operation not in ("create", "update"):
        return None
    record = commit.get("record")
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise TypeError(f"post {rkey} has no record text")
    embed = record.get("embed")
    return post(record["text"], "post" if operation == "create" else "edit",
                reply=isinstance(record.get("reply"), dict),
                quote=isinstance(embed, dict) and embed.get("$type") in QUOTE_EMBEDS)


class BlueskySource(StreamSource[str | bytes]):
    network = "bluesky"
    log = log

    def __init__(self, pipeline: Pipeline, accounts: Sequence[str], jetstreams: list[str], api_url: str,
                 cursors: Cursors, stall_timeout: float, backoff_scale: float = 1.0) -> None:
        self.pipeline = pipeline
        self.accounts = accounts
        self.jetstreams = jetstreams
        self.api_url = api_url
        self.cursors = cursors
        self.keepalive = stall_timeout / 2
        self.backoff = ExponentialBackoff(backoff_scale, healthy_after=stall_timeout)
        self.handles: dict[str, str] = {}  # DID -> handle, for the log and the command's source
        self._dids: list[str] | None = None  # None: the handles are still to be resolved
        self._instance = 0

    def prepare(self, stop: threading.Event) -> None:
        if self._dids is None:
            self._resolve(stop)

    def open(self) -> ClientConnection:
        last = self.cursors.get(CURSOR_KEY)
        cursor = last - REPLAY_MARGIN_US if isinstance(last, int) else None
        return connect(subscribe_url(self._url, self._dids or [], cursor), user_agent_header=USER_AGENT,
                       open_timeout=10, ping_interval=self.keepalive, ping_timeout=self.keepalive,
                       close_timeout=min(self.keepalive, 5), max_size=HARD_MAX_FRAME, logger=quiet)

    @property
    def _url(self) -> str:
        return self.jetstreams[self._instance]

    def connected(self) -> None:
        log.info("stream: connected to %s (%d account(s))", self._url, len(self._dids or []))

    def handle(self, item: str | bytes) -> None:
        self.handle_frame(item)

    def ended(self, exc: Exception, connected_at: float | None) -> Ended | None:
        """A failed attempt moves on to the next instance, in turn; a dropped connection retries the same."""
        if isinstance(exc, InvalidStatus):
            end = Ended(f"{self._url} refused the subscription: HTTP {exc.response.status_code}")
        elif isinstance(exc, ConnectionClosed):
            end = Ended(f"connection lost: {exc}")
        elif isinstance(exc, (OSError, InvalidHandshake, InvalidURI)):
            end = Ended(f"network error: {exc or type(exc).__name__}")
        else:
            return None
        if connected_at is None:
            self._instance = (self._instance + 1) % len(self.jetstreams)
        return end

    def closed(self) -> None:
        self.cursors.flush()

    def _resolve(self, stop: threading.Event) -> None:
        """Handles to DIDs, retried on network faults; Refused for one Bluesky does not know."""
        dids = [a for a in self.accounts if a.startswith("did:")]
        handles = [a for a in self.accounts if not a.startswith("did:")]
        with httpx.Client(base_url=self.api_url, headers={"User-Agent": USER_AGENT}, timeout=20) as client:
            while handles and not stop.is_set():
                handle = handles[0]
                try:
                    did = resolve_handle(client, handle)
                except (httpx.HTTPError, ValueError) as exc:
                    delay = self.backoff.failed()
                    log.warning("cannot resolve @%s: %s; retrying in %.4g s", handle, exc, delay)
                    stop.wait(delay)
                    continue
                log.info("account @%s is %s", handle, did)
                self.handles[did] = handle
                dids.append(did)
                handles.pop(0)
        if stop.is_set():
            return
        self.backoff.reset()
        if self.cursors.get(CURSOR_KEY) is None:  # first run: from now on, also if the bridge stops before a post
            self.cursors.set(CURSOR_KEY, time.time_ns() // 1000)
            self.cursors.flush()
        self._dids = sorted(set(dids))
        for did in self._dids:
            self.pipeline.allow("bluesky", did)

    def handle_frame(self, frame: str | bytes) -> None:
        """One Jetstream frame: a post goes to the pipeline; anything unusable is logged and skipped."""
        if isinstance(frame, bytes):
            log.warning("skipped a binary frame of %d bytes (Jetstream sends JSON text)", len(frame))
            return
        if len(frame) > MAX_LINE:
            log.warning("skipped a frame of %d characters: over the %d limit", len(frame), MAX_LINE)
            return
        try:
            event = json.loads(frame)
            if not isinstance(event, dict):
                raise TypeError("not a JSON object")
            self._handle_event(event)
        except (ValueError, TypeError) as exc:
            log.warning("skipped a frame (%d characters): %s", len(frame), exc)

    def _advance(self, event: dict[str, Any]) -> None:
        """The cursor moves past an event once it is dealt with (a post: decided, its command safe)."""
        time_us = event.get("time_us")
        if isinstance(time_us, int) and time_us > (self.cursors.get(CURSOR_KEY) or 0):
            self.cursors.set(CURSOR_KEY, time_us)

    def _handle_event(self, event: dict[str, Any]) -> None:
        kind, did = event.get("kind"), event.get("did")
        if kind == "commit":
            post = parse_commit(event, self.handles)
            if post is not None:
                self.pipeline.handle(post, done=lambda: self._advance(event))
                return
            commit = event["commit"]
            log.info("%s %s of %s by %s: nothing to do", commit.get("collection"), commit.get("operation"),
                     commit.get("rkey"), self._who(did))
        elif kind == "identity":
            identity = event.get("identity")
            handle = identity.get("handle") if isinstance(identity, dict) else None
            if isinstance(did, str) and isinstance(handle, str) and self.handles.get(did) != handle:
                log.info("account %s is now @%s (it stays allowed: the allow-list keys on the DID)",
                         self._who(did), handle)
                self.handles[did] = handle
        elif kind == "account":
            account = event.get("account")
            active = account.get("active") if isinstance(account, dict) else None
            log.info("account %s is %s", self._who(did), "active" if active else "not active")
        else:
            log.debug("ignored an event of kind %r", kind)
        self._advance(event)

    def _who(self, did: Any) -> str:
        handle = self.handles.get(did) if isinstance(did, str) else None
        return f"@{handle} ({did})" if handle else str(did)
