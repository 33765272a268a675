"""X: the API v2 filtered stream, its rules and user lookup, and posts in its format from stdin.

httpx does HTTP; this module adds X's conventions: bearer auth, a versioned
User-Agent, problem bodies turned into XError, rule changes judged by
`meta.summary` and `errors` (X's status codes for them disagree), stream lines
split on raw bytes, and X's reconnect schedule (backoff.XBackoff). Usernames
are resolved to ids once at start, and every rule and check keys on ids.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.backoff import XBackoff
from bridge.matching import Post
from bridge.pipeline import Pipeline, network_log
from bridge.sources import EXIT_AUTH, USER_AGENT, Ended, Refused, Skipped, StreamSource, iso_time, split_lines

log = network_log("x")

STREAM_PATH = "/2/tweets/search/stream"
RULES_PATH = "/2/tweets/search/stream/rules"
STREAM_PARAMS = {
    "tweet.fields": "author_id,created_at,referenced_tweets,note_tweet",
    "expansions": "author_id",
    "user.fields": "username",
}


class XError(Exception):
    """X answered with an error; `kind` says what the bridge should do about it."""

    def __init__(self, status: int, body: Any, reason: str = "") -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        detail = self.body.get("detail") or self.body.get("title") or (str(body)[:200] if body else "")
        super().__init__(f"HTTP {status}{' ' + reason if reason else ''}{': ' + detail if detail else ''}")

    @property
    def kind(self) -> str:
        """auth | no-rules | usage-cap | too-many | http"""
        if self.status in (401, 403):
            return "auth"
        if self.status == 409:
            return "no-rules"
        if self.status == 429:
            capped = self.body.get("title") == "UsageCapExceeded" or str(self.body.get("type", "")).endswith(
                "/usage-capped")
            return "usage-cap" if capped else "too-many"
        return "http"

    @classmethod
    def from_response(cls, response: httpx.Response) -> XError:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return cls(response.status_code, body, response.reason_phrase)


@dataclass(frozen=True)
class User:
    id: str
    username: str


class XClient:
    def __init__(self, base_url: str, token: str, stall_timeout: float, timeout: float = 20.0) -> None:
        self.stall_timeout = stall_timeout
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, path, **kwargs)
        if not response.is_success:
            raise XError.from_response(response)
        try:
            body = response.json()
        except ValueError:
            raise XError(response.status_code, response.text, "answer is not JSON") from None
        if not isinstance(body, dict):
            raise XError(response.status_code, body, "answer is not a JSON object")
        return body

    def lookup_users(self, usernames: list[str]) -> dict[str, User]:
        """Usernames (case-insensitive keys, lower case) to users; every unknown one is named in Refused."""
        found: dict[str, User] = {}
        for i in range(0, len(usernames), 100):
            batch = usernames[i : i + 100]
            body = self._json("GET", "/2/users/by", params={"usernames": ",".join(batch)})
            for user in body.get("data") or []:
                if isinstance(user, dict) and user.get("username") and user.get("id"):
                    found[str(user["username"]).lower()] = User(str(user["id"]), str(user["username"]))
        missing = [name for name in usernames if name.lower() not in found]
        if missing:
            raise Refused(f"unknown X account(s) in bridge.allow: {', '.join(missing)}")
        return found

    def list_rules(self) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = []
        params: dict[str, Any] = {"max_results": 1000}
        while True:
            body = self._json("GET", RULES_PATH, params=params)
            rules += body.get("data") or []
            token = (body.get("meta") or {}).get("next_token")
            if not token:
                return rules
            params["pagination_token"] = token

    def sync_rules(self, wanted: list[str], tag: str) -> tuple[list[str], list[str]]:
        """Make the rules tagged `tag` exactly `wanted`; other rules are never touched. Returns (added, deleted)."""
        own = [r for r in self.list_rules() if r.get("tag") == tag]
        stale = [r for r in own if r.get("value") not in wanted]
        present = {r.get("value") for r in own}
        missing = [value for value in wanted if value not in present]
        if stale:
            body = self._json("POST", RULES_PATH, json={"delete": {"ids": [r["id"] for r in stale]}})
            summary = (body.get("meta") or {}).get("summary") or {}
            if summary.get("deleted") != len(stale) or body.get("errors"):
                raise XError(200, body, f"deleting stale rules: {summary} {body.get('errors') or ''}")
        if missing:
            body = self._json("POST", RULES_PATH, json={"add": [{"value": v, "tag": tag} for v in missing]})
            errors = [e for e in body.get("errors") or [] if e.get("title") != "DuplicateRule"]
            summary = (body.get("meta") or {}).get("summary") or {}
            if errors or summary.get("invalid"):
                details = "; ".join(
                    f"{e.get('value', '')!r}: {e.get('title')} {e.get('details') or e.get('detail') or ''}"
                    for e in errors)
                raise Refused(f"X rejected stream rules: {details or summary}")
        return missing, [r.get("value", "") for r in stale]

    @contextmanager
    def stream(self) -> Iterator[Iterator[bytes | Skipped]]:
        """Open the filtered stream; XError unless it answers 200. Reads time out after stall_timeout."""
        timeout = httpx.Timeout(10.0, read=self.stall_timeout)
        with self._http.stream("GET", STREAM_PATH, params=STREAM_PARAMS, timeout=timeout) as response:
            if response.status_code != 200:
                response.read()
                raise XError.from_response(response)
            yield split_lines(response.iter_bytes())


class NotAPost(ValueError):
    """The message has `data` but not the fields a post must carry."""


class StreamDisconnect(Exception):
    """X sent an `errors` message without a post: it is about to close the stream."""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def parse_post(message: dict[str, Any]) -> Post:
    """A post from a stream message that has `data` (extra and missing optional fields tolerated)."""
    data = message.get("data")
    if not isinstance(data, dict):
        raise NotAPost("`data` is not an object")
    post_id, author_id = data.get("id"), data.get("author_id")
    if not isinstance(post_id, str) or not post_id.isdigit():
        raise NotAPost(f"post id {post_id!r} is not a numeric string")
    if not isinstance(author_id, str) or not author_id.isdigit():
        raise NotAPost(f"post {post_id}: author_id {author_id!r} is missing or not numeric "
                       "(tweet.fields lacks author_id?)")
    note = data.get("note_tweet")
    text = note.get("text") if isinstance(note, dict) and isinstance(note.get("text"), str) else data.get("text")
    if not isinstance(text, str):
        raise NotAPost(f"post {post_id}: no text")
    # OAS 2.167 spells these *_posts; the data dictionary and the live API *_tweets.
    refs = _list(data.get("referenced_tweets", data.get("referenced_posts")))
    kinds = {r.get("type") for r in refs if isinstance(r, dict)}
    includes = message.get("includes")
    includes = includes if isinstance(includes, dict) else {}
    users = {u.get("id"): u.get("username") for u in _list(includes.get("users")) if isinstance(u, dict)}
    username = users.get(author_id)
    username = username if isinstance(username, str) else None
    source = {"account_id": author_id, "post_id": post_id, **({"username": username} if username else {})}
    return Post(
        network="x", id=post_id, command_id=f"x:{post_id}", author_id=author_id, author=username, text=text,
        time=iso_time(data.get("created_at")), kind="repost" if "retweeted" in kinds else "post",
        reply="replied_to" in kinds or isinstance(data.get("in_reply_to_user_id"), str), quote="quoted" in kinds,
        source=source,
    )


def build_rules(user_ids: list[str], max_length: int) -> list[str]:
    """`(from:a OR from:b) -is:retweet` rules, each within max_length characters, covering every id once."""
    def rule(ids: list[str]) -> str:
        return f"({' OR '.join(f'from:{i}' for i in ids)}) -is:retweet"

    rules: list[str] = []
    batch: list[str] = []
    for user_id in sorted(set(user_ids), key=lambda i: (len(i), i)):
        if len(rule([user_id])) > max_length:
            raise ValueError(f"rule_max_length {max_length} is too short for even one account ({user_id})")
        if batch and len(rule([*batch, user_id])) > max_length:
            rules.append(rule(batch))
            batch = []
        batch.append(user_id)
    if batch:
        rules.append(rule(batch))
    return rules


def _problem(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    kind = error.get("title") or str(error.get("type", "")).rsplit("/", 1)[-1]
    return f"{kind}: {error.get('detail', '')}".strip(": ")


def handle_line(pipeline: Pipeline, line: bytes | Skipped) -> None:
    """One stream line. Raises StreamDisconnect for an in-stream error message; bad lines are logged and skipped."""
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
            raise StreamDisconnect("; ".join(_problem(e) for e in _list(message["errors"])))
        log.info("ignored a stream message without a post (keys: %s)", ", ".join(sorted(message)))
        return
    if message.get("errors"):
        log.info("post message also carries errors: %s", "; ".join(_problem(e) for e in _list(message["errors"])))
    try:
        post = parse_post(message)
    except NotAPost as exc:
        log.warning("skipped a stream message: %s", exc)
        return
    pipeline.handle(post)


class XSource(StreamSource[bytes | Skipped]):
    """The filtered stream, kept open by X's reconnect rules."""

    network = "x"
    log = log

    def __init__(self, pipeline: Pipeline, client: XClient, accounts: Sequence[str], rule_tag: str,
                 rule_max_length: int, backoff: XBackoff) -> None:
        """`accounts`: usernames, or ids (all digits), from allow.x."""
        self.pipeline = pipeline
        self.client = client
        self.rule_tag = rule_tag
        self.rule_max_length = rule_max_length
        self.backoff: XBackoff = backoff
        self._ids: set[str] = set()
        self._rules: list[str] | None = None  # None: to be written (again) before connecting
        self.usernames = [a for a in accounts if not a.isdigit()]
        self._unresolved = list(self.usernames)
        for user_id in (a for a in accounts if a.isdigit()):
            self.allow_id(user_id)

    def allow_id(self, user_id: str) -> None:
        self._ids.add(user_id)
        self.pipeline.allow("x", user_id)

    def prepare(self, stop: threading.Event) -> None:
        """Usernames resolved to ids (once: ids never change, usernames may), and our stream rules in place."""
        if self._unresolved:
            for user in self.client.lookup_users(self._unresolved).values():
                log.info("account @%s is id %s", user.username, user.id)
                self.allow_id(user.id)
            self._unresolved = []
        if self._rules is None:
            try:
                wanted = build_rules(sorted(self._ids), self.rule_max_length)
            except ValueError as exc:
                raise Refused(str(exc)) from None
            added, deleted = self.client.sync_rules(wanted, self.rule_tag)
            log.info("stream rules (tag %s): %d in place, %d added, %d stale deleted", self.rule_tag,
                     len(wanted), len(added), len(deleted))
            self._rules = wanted

    def open(self) -> AbstractContextManager[Iterator[bytes | Skipped]]:
        return self.client.stream()

    def connected(self) -> None:
        self.backoff.connected()
        super().connected()

    def handle(self, item: bytes | Skipped) -> None:
        handle_line(self.pipeline, item)

    def ended(self, exc: Exception, connected_at: float | None) -> Ended | None:
        """X's answers have back-offs of their own; a closed or stalled stream is reconnected at once."""
        if isinstance(exc, XError):
            if exc.kind == "auth":
                return Ended(f"X refused the bearer token ({exc}): check X_BEARER_TOKEN; retrying cannot help",
                             exit=EXIT_AUTH)
            if exc.kind == "no-rules":
                self._rules = None  # X has none of our rules: write them again before reconnecting
                return Ended(f"no stream rules ({exc})", self.backoff.http())
            if exc.kind == "usage-cap":
                log.error("X MONTHLY USAGE CAP REACHED (%s): the stream is off until the cap resets", exc)
                return Ended(f"usage cap ({exc})", self.backoff.usage_cap())
            if exc.kind == "too-many":
                return Ended(f"too many requests ({exc})", self.backoff.too_many())
            return Ended(f"HTTP error ({exc})", self.backoff.http())
        if isinstance(exc, StreamDisconnect):
            return Ended(f"X ended the stream: {exc}")
        if isinstance(exc, httpx.ReadTimeout):
            return Ended(f"stalled: no data or keep-alive for {self.client.stall_timeout:g} s")
        if isinstance(exc, (httpx.TransportError, httpx.StreamError)):
            return Ended(f"network error: {exc or type(exc).__name__}")
        return None
