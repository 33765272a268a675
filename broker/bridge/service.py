"""The bridge: stream lines in, one log line and at most one command per post out.

`Bridge.handle` turns one line into a verdict (accepted, or why not) and a
command; `follow_stream` keeps the X stream connected by X's reconnect rules;
`read_lines` feeds the same handler from a file (stdin) for trying triggers
without an X account.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any, BinaryIO

import httpx

from broker.bridge import matching
from broker.bridge.backoff import Backoff
from broker.bridge.config import BridgeConfig
from broker.bridge.publisher import Outgoing, Publisher
from broker.bridge.state import SeenPosts
from broker.bridge.x_api import Refused, Skipped, XClient, XError, split_lines
from node.config import Config
from node.topics import DeviceTopics

log = logging.getLogger(__name__)

EXIT_REFUSED = 2  # configuration X will not accept (unknown account, invalid rule)
EXIT_AUTH = 3  # X refused the bearer token


class StreamDisconnect(Exception):
    """X sent an `errors` message without a post: it is about to close the stream."""


def _created(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Bridge:
    def __init__(self, config: Config, bridge: BridgeConfig, publisher: Publisher, seen: SeenPosts,
                 allowed_ids: set[str], allowed_names: frozenset[str] = frozenset()) -> None:
        self.config = config
        self.bridge = bridge
        self.publisher = publisher
        self.seen = seen
        self.allowed_ids = allowed_ids
        self.allowed_names = allowed_names
        self._recent: dict[str, deque[float]] = defaultdict(deque)  # author id -> monotonic accept times
        self._lock = threading.Lock()
        self._stopped = False

    def stop(self) -> None:
        """No post is handled after this returns (one being handled is finished first)."""
        with self._lock:
            self._stopped = True

    @property
    def stopped(self) -> bool:
        return self._stopped

    def handle(self, line: bytes | Skipped) -> None:
        """One stream line. Raises StreamDisconnect for an in-stream error message; nothing else escapes."""
        try:
            self._handle(line)
        except StreamDisconnect:
            raise
        except Exception:
            log.exception("error handling a stream line of %d bytes (line skipped, stream kept)",
                          0 if isinstance(line, Skipped) else len(line))

    def _handle(self, line: bytes | Skipped) -> None:
        if isinstance(line, Skipped):
            log.warning("skipped a stream line: %s", line.reason)
            return
        if not line:
            log.debug("keep-alive")
            return
        try:
            message = json.loads(line)
        except ValueError as exc:
            log.warning("skipped a stream line that is not JSON (%d bytes): %s", len(line), exc)
            return
        if not isinstance(message, dict):
            log.warning("skipped a stream line that is not a JSON object: %.80s", line)
            return
        if "data" not in message:
            if message.get("errors"):
                raise StreamDisconnect("; ".join(_problem(e) for e in message["errors"]))
            log.info("ignored a stream message without a post (keys: %s)", ", ".join(sorted(message)))
            return
        if message.get("errors"):
            log.info("post message also carries errors: %s", "; ".join(_problem(e) for e in message["errors"]))
        try:
            post = matching.parse_post(message)
        except matching.NotAPost as exc:
            log.warning("skipped a stream message: %s", exc)
            return
        with self._lock:
            if not self._stopped:
                self._decide(post)

    def _decide(self, post: matching.Post) -> None:
        who = f"@{post.username} ({post.author_id})" if post.username else post.author_id
        verdict = matching.judge(post, self.bridge, self.allowed_ids, self.allowed_names)
        if verdict.trigger is None:
            log.info("post %s from %s ignored: %s", post.id, who, verdict.reason)
            return
        if post.id in self.seen:
            log.info("post %s from %s ignored: duplicate (already acted on)", post.id, who)
            return
        now = time.time()
        created = _created(post.created_at)
        expires = min(created, now) + self.bridge.expiry if created is not None else now + self.bridge.expiry
        if expires <= now:
            log.info("post %s from %s ignored: expired (posted %.0f s ago, expiry %g s)", post.id, who,
                     now - (created or now), self.bridge.expiry)
            return
        recent = self._recent[post.author_id]
        mono = time.monotonic()
        while recent and recent[0] <= mono - 60:
            recent.popleft()
        if len(recent) >= self.bridge.rate_limit:
            log.info("post %s from %s ignored: rate-limited (%d commands in the last minute)", post.id, who,
                     self.bridge.rate_limit)
            return
        recent.append(mono)
        trigger = verdict.trigger
        topic = DeviceTopics(self.config.prefix, trigger.device).set(trigger.output)
        source: dict[str, Any] = {"via": "x", "account_id": post.author_id, "post_id": post.id}
        if post.username:
            source["username"] = post.username
        body = {**matching.command(trigger), "id": f"x:{post.id}", "expires": round(expires, 3), "source": source}
        self.seen.add(post.id)
        log.info("post %s from %s accepted: %r -> %s", post.id, who, trigger.phrase, topic)
        self.publisher.publish(Outgoing(topic, body))


def _problem(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    kind = error.get("title") or str(error.get("type", "")).rsplit("/", 1)[-1]
    return f"{kind}: {error.get('detail', '')}".strip(": ")


def read_lines(bridge: Bridge, source: BinaryIO) -> None:
    """Posts as JSON lines from a file (the stream's own format); ends at end of file."""
    chunks: Iterable[bytes] = iter(lambda: source.read1(65536), b"")
    for line in split_lines(chunks):
        if bridge.stopped:
            return
        try:
            bridge.handle(line)
        except StreamDisconnect as exc:
            log.warning("stream error message in the input: %s", exc)


def follow_stream(bridge: Bridge, client: XClient, usernames: list[str], rule_tag: str, rule_max_length: int,
                  backoff: Backoff, stop: threading.Event) -> int:
    """Resolve accounts, sync rules, and keep the stream open until `stop`; returns the exit code."""
    rules: list[str] | None = None
    unresolved = list(usernames)
    while not stop.is_set():
        connected_at: float | None = None
        try:
            if unresolved:  # once: ids never change, usernames may
                for user in client.lookup_users(unresolved).values():
                    log.info("account @%s is id %s", user.username, user.id)
                    bridge.allowed_ids.add(user.id)
                unresolved = []
            if rules is None:
                try:
                    wanted = matching.build_rules(sorted(bridge.allowed_ids), rule_max_length)
                except ValueError as exc:
                    raise Refused(str(exc)) from None
                added, deleted = client.sync_rules(wanted, rule_tag)
                log.info("stream rules (tag %s): %d in place, %d added, %d stale deleted", rule_tag, len(wanted),
                         len(added), len(deleted))
                rules = wanted
            with client.stream() as lines:
                connected_at = time.monotonic()
                backoff.connected()
                log.info("stream: connected")
                for line in lines:
                    if stop.is_set():
                        return 0
                    bridge.handle(line)
            reason = "the server closed the stream"
        except Refused as exc:
            log.error("%s", exc)
            return EXIT_REFUSED
        except XError as exc:
            if exc.kind == "auth":
                log.error("X refused the bearer token (%s): check X_BEARER_TOKEN; retrying cannot help", exc)
                return EXIT_AUTH
            if exc.kind == "no-rules":
                rules = None  # X has none of our rules: sync them again before reconnecting
                reason, delay = f"no stream rules ({exc})", backoff.http()
            elif exc.kind == "usage-cap":
                log.error("X MONTHLY USAGE CAP REACHED (%s): the stream is off until the cap resets", exc)
                reason, delay = f"usage cap ({exc})", backoff.usage_cap()
            elif exc.kind == "too-many":
                reason, delay = f"too many requests ({exc})", backoff.too_many()
            else:
                reason, delay = f"HTTP error ({exc})", backoff.http()
            _log_reconnect(reason, delay, connected_at)
            stop.wait(delay)
            continue
        except StreamDisconnect as exc:
            reason = f"X ended the stream: {exc}"
        except httpx.ReadTimeout:
            reason = f"stalled: no data or keep-alive for {client.stall_timeout:g} s"
        except (httpx.TransportError, httpx.StreamError) as exc:
            reason = f"network error: {exc or type(exc).__name__}"
        if stop.is_set():
            return 0
        if connected_at is None:
            delay = backoff.network()
        else:
            lasted = time.monotonic() - connected_at
            delay = backoff.dropped(lasted)
            if lasted >= backoff.healthy_after:
                log.info("stream: was healthy (%.0f s): back-off reset", lasted)
        _log_reconnect(reason, delay, connected_at)
        stop.wait(delay)
    return 0


def _log_reconnect(reason: str, delay: float, connected_at: float | None) -> None:
    lasted = f" after {time.monotonic() - connected_at:.1f} s connected" if connected_at is not None else ""
    log.warning("stream: %s%s; reconnecting in %.4g s", reason, lasted, delay)
