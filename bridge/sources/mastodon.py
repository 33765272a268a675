"""Mastodon (and the fediverse): the home timeline of a bot account, from the streaming API.

The bot account follows the allowed accounts (the bridge follows them at start
when its token has `write:follows`), so their posts reach its `user` stream.
At start: the token is checked (verify_credentials), the streaming URL comes
from /api/v2/instance, each allowed `acct` is resolved to its account id (the
allow-list keys on ids). The stream is server-sent events over httpx: `:thump`
heartbeats every 15 s, so no data for stall_timeout seconds means a dead
connection. Mastodon has no replay: after every (re)connect the bridge first
opens the stream, then reads the home timeline from the last status id seen
(kept in --state) following its Link pagination, and only then reads the
stream, so nothing falls between the two; duplicates are dropped by id.
A 429 waits until X-RateLimit-Reset.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx

from bridge.backoff import ExponentialBackoff
from bridge.matching import Post
from bridge.pipeline import Pipeline, network_log
from bridge.sources import EXIT_AUTH, USER_AGENT, Ended, Refused, Skipped, StreamSource, iso_time, split_lines
from bridge.state import Cursors

log = network_log("mastodon")

PAGE = 40  # statuses per page of the home timeline (Mastodon's maximum)
MAX_RATE_WAIT = 3600.0


class MastodonError(Exception):
    def __init__(self, status: int, message: str, reset: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status
        self.reset = reset  # 429: unix time the limit resets (X-RateLimit-Reset)


def _reset_time(value: str | None) -> float | None:
    """X-RateLimit-Reset: an ISO 8601 time (Mastodon), or unix seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return iso_time(value)


class _Text(HTMLParser):
    """Mastodon's status HTML as text: paragraphs and <br> are line breaks, tags dropped, entities unescaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append("\n")
        elif tag == "p" and self.parts:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(content: str) -> str:
    parser = _Text()
    parser.feed(content)
    parser.close()
    return "".join(parser.parts)


def _status_key(status_id: str) -> tuple[int, str]:
    """Status ids are numbers in strings: compare them as numbers."""
    return (len(status_id), status_id)


def parse_status(status: dict[str, Any], host: str, kind: str = "post") -> Post:
    """A Post from a Status entity (an `update` event, or the home timeline); kind is "edit" for status.update."""
    status_id, account = status.get("id"), status.get("account")
    if not isinstance(status_id, str) or not status_id or not isinstance(account, dict):
        raise TypeError("a status without id or account")
    account_id, acct = account.get("id"), account.get("acct")
    if not isinstance(account_id, str) or not isinstance(acct, str):
        raise TypeError(f"status {status_id}: account without id or acct")
    if status.get("reblog"):
        kind = "repost"
    content = status.get("content")
    source = {"account_id": account_id, "acct": acct, "status_id": status_id,
              **({"url": status["url"]} if isinstance(status.get("url"), str) else {})}
    return Post(network="mastodon", id=status_id, command_id=f"mastodon:{host}/{status_id}", author_id=account_id,
                author=acct, text=html_to_text(content) if isinstance(content, str) else "",
                time=iso_time(status.get("created_at")), kind=kind, reply=status.get("in_reply_to_id") is not None,
                quote=bool(status.get("quote")), source=source)


@dataclass(frozen=True)
class Event:
    name: str
    data: str


def sse_events(lines: Iterator[bytes | Skipped]) -> Iterator[Event | Skipped]:
    """Server-sent events from byte lines: `event:` and `data:` fields, dispatched at a blank line."""
    name, data, broken = "message", list[str](), False
    for line in lines:
        if isinstance(line, Skipped):
            broken = True  # the event it belonged to is unusable
            yield line
            continue
        if not line:
            if data and not broken:
                yield Event(name, "\n".join(data))
            name, data, broken = "message", list[str](), False
            continue
        if line.startswith(b":"):
            log.debug("heartbeat")
            continue
        field, _, value = line.decode("utf-8", "replace").partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


class MastodonClient:
    def __init__(self, base_url: str, token: str, stall_timeout: float, timeout: float = 20.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.host = urlsplit(self.base_url).netloc
        self.stall_timeout = stall_timeout
        self.streaming_url = self.base_url
        self._http = httpx.Client(headers={"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT},
                                  timeout=timeout)

    def _check(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            message = str(response.json().get("error", ""))
        except (ValueError, AttributeError):
            message = response.text[:200]
        reset = _reset_time(response.headers.get("X-RateLimit-Reset")) if response.status_code == 429 else None
        raise MastodonError(response.status_code, message, reset)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, url if "://" in url else self.base_url + url, **kwargs)
        self._check(response)
        return response

    def _json(self, method: str, url: str, kind: type, **kwargs: Any) -> tuple[Any, httpx.Response]:
        response = self.request(method, url, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, kind):
            raise MastodonError(response.status_code, f"{url}: the answer is not a JSON {kind.__name__}")
        return body, response

    def object(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self._json(method, url, dict, **kwargs)[0]
        return body

    def items(self, method: str, url: str, **kwargs: Any) -> tuple[list[dict[str, Any]], httpx.Response]:
        """The objects of a JSON list (anything else in it is left out), and the response (for its Link)."""
        body, response = self._json(method, url, list, **kwargs)
        return [item for item in body if isinstance(item, dict)], response

    def account_id(self, acct: str) -> str:
        account = self.object("GET", "/api/v1/accounts/lookup", params={"acct": acct})
        if not isinstance(account.get("id"), (str, int)):
            raise MastodonError(200, f"accounts/lookup?acct={acct}: an account without id")
        return str(account["id"])

    @contextmanager
    def stream(self) -> Iterator[Iterator[Event | Skipped]]:
        timeout = httpx.Timeout(10.0, read=self.stall_timeout)
        with self._http.stream("GET", f"{self.streaming_url}/api/v1/streaming/user", timeout=timeout,
                               headers={"Accept": "text/event-stream"}) as response:
            if not response.is_success:
                response.read()
                self._check(response)
            yield sse_events(split_lines(response.iter_bytes()))


class MastodonSource(StreamSource[Event | Skipped]):
    network = "mastodon"
    log = log

    def __init__(self, pipeline: Pipeline, accounts: Sequence[str], base_url: str, token: str, cursors: Cursors,
                 stall_timeout: float, backoff_scale: float = 1.0) -> None:
        self.pipeline = pipeline
        self.accounts = accounts
        self.client = MastodonClient(base_url, token, stall_timeout)
        self.cursors = cursors
        self.cursor_key = f"mastodon:{self.client.host}"
        self.backoff = ExponentialBackoff(backoff_scale, healthy_after=stall_timeout)
        self._ready = False

    @property
    def last_id(self) -> str | None:
        value = self.cursors.get(self.cursor_key)
        return value if isinstance(value, str) else None

    def _seen_status(self, status_id: str) -> None:
        last = self.last_id
        if last is None or _status_key(status_id) > _status_key(last):  # a late remote post may be older
            self.cursors.set(self.cursor_key, status_id)

    def prepare(self, stop: threading.Event) -> None:
        if not self._ready:
            self._start()
            self._ready = True

    def open(self) -> AbstractContextManager[Iterator[Event | Skipped]]:
        return self.client.stream()

    def connected(self) -> None:
        """Mastodon has no replay: the stream is open, so what the timeline holds since the last status comes first."""
        log.info("stream: connected to %s", self.client.streaming_url)
        self.backfill()

    def handle(self, item: Event | Skipped) -> None:
        self.handle_event(item)

    def ended(self, exc: Exception, connected_at: float | None) -> Ended | None:
        if isinstance(exc, MastodonError):
            if exc.status == 401 or (exc.status == 403 and not self._ready):  # 403 at start: no read scope
                return Ended(f"{self.client.host} refused the access token ({exc}): check MASTODON_ACCESS_TOKEN; "
                             "retrying cannot help", exit=EXIT_AUTH)
            if exc.status == 429:
                wait = max(0.0, min((exc.reset or 0) - time.time(), MAX_RATE_WAIT)) if exc.reset else None
                return Ended(f"rate-limited ({exc}); waiting until X-RateLimit-Reset",
                             wait if wait is not None else self.backoff.failed())
            return Ended(f"HTTP error ({exc})")
        if isinstance(exc, httpx.ReadTimeout):
            return Ended(f"stalled: no data or heartbeat for {self.client.stall_timeout:g} s")
        if isinstance(exc, (httpx.TransportError, httpx.StreamError)):
            return Ended(f"network error: {exc or type(exc).__name__}")
        return None

    def closed(self) -> None:
        self.cursors.flush()

    def _start(self) -> None:
        """Token, streaming URL, account ids and follows; the newest status on a first run."""
        me = self.client.object("GET", "/api/v1/accounts/verify_credentials")
        log.info("signed in to %s as @%s", self.client.host, me.get("acct"))
        configuration = self.client.object("GET", "/api/v2/instance").get("configuration")
        urls = configuration.get("urls") if isinstance(configuration, dict) else None
        streaming = urls.get("streaming") if isinstance(urls, dict) else None
        if isinstance(streaming, str) and streaming:
            self.client.streaming_url = re.sub(r"^ws", "http", streaming.rstrip("/"))
        ids: dict[str, str] = {}
        for acct in self.accounts:
            try:
                account_id = self.client.account_id(acct)
            except MastodonError as exc:
                if exc.status == 404:
                    raise Refused(f"unknown Mastodon account in bridge.allow.mastodon: {acct} ({self.client.host} "
                                  f"does not know it)") from None
                raise
            ids[account_id] = acct
            log.info("account @%s is id %s", acct, account_id)
            self.pipeline.allow("mastodon", account_id)
        self._follow({i: a for i, a in ids.items() if i != str(me.get("id"))})
        if self.last_id is None:  # first run: from now on, not the posts already on the timeline ("0": none yet)
            newest, _ = self.client.items("GET", "/api/v1/timelines/home", params={"limit": 1})
            self.cursors.set(self.cursor_key, str(newest[0].get("id", "0")) if newest else "0")
            self.cursors.flush()

    def _follow(self, ids: dict[str, str]) -> None:
        """The user stream carries only followed accounts: follow the allowed ones that are not followed yet."""
        if not ids:
            return
        relations, _ = self.client.items("GET", "/api/v1/accounts/relationships", params=[("id[]", i) for i in ids])
        known = {str(r.get("id")): r for r in relations}
        missing = []
        for account_id, acct in ids.items():
            relation = known.get(account_id, {})
            if relation.get("following"):
                continue
            if relation.get("requested"):
                log.warning("@%s has not accepted the bot's follow request yet: its posts arrive once it does", acct)
                continue
            try:
                relation = self.client.object("POST", f"/api/v1/accounts/{account_id}/follow")
            except MastodonError as exc:
                if exc.status != 403:
                    raise
                missing.append(acct)
                continue
            if relation.get("following"):
                log.info("now following @%s", acct)
            else:
                log.warning("asked to follow @%s: its posts arrive once it accepts", acct)
        if missing:
            log.warning("the bot account must follow %s for their posts to arrive, and its token may not follow "
                        "(no write:follows scope): follow them from the bot account",
                        ", ".join(f"@{a}" for a in missing))

    def backfill(self) -> None:
        """Statuses newer than the last one seen, oldest first, following the Link pagination."""
        last = self.last_id
        if last is None:
            return
        url: str | None = "/api/v1/timelines/home"
        params: dict[str, Any] | None = {"min_id": last, "limit": PAGE}
        count = 0
        while url:
            statuses, response = self.client.items("GET", url, params=params)
            if not statuses:
                break
            ordered = sorted((s for s in statuses if isinstance(s.get("id"), str)), key=lambda s: _status_key(s["id"]))
            for status in ordered:
                self._status(status, "post")
                count += 1
            url, params = response.links.get("prev", {}).get("url"), None
            if url and urlsplit(url).netloc != self.client.host:
                log.warning("backfill stopped: the next page is on another host (%s)", urlsplit(url).netloc)
                break
        if count:
            log.info("backfill: %d status(es) since %s from the home timeline", count, last)

    def handle_event(self, event: Event | Skipped) -> None:
        if isinstance(event, Skipped):
            log.warning("skipped a stream line: %s", event.reason)
            return
        if event.name in ("update", "status.update"):
            try:
                status = json.loads(event.data)
                if not isinstance(status, dict):
                    raise TypeError("not a JSON object")
            except (ValueError, TypeError) as exc:
                log.warning("skipped a %s event that is not a status (%d bytes): %s", event.name, len(event.data),
                            exc)
                return
            self._status(status, "post" if event.name == "update" else "edit")
        elif event.name == "delete":
            log.info("status %s was deleted: nothing to do", event.data.strip()[:40])
        else:
            log.debug("ignored a %s event", event.name)

    def _status(self, status: dict[str, Any], kind: str) -> None:
        try:
            post = parse_status(status, self.client.host, kind)
        except TypeError as exc:
            log.warning("skipped a status: %s", exc)
            return
        self.pipeline.handle(post, done=lambda: self._seen_status(post.id) if kind == "post" else None)
