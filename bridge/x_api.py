"""The X API v2 as the bridge needs it: user lookup, its own stream rules, the filtered stream.

httpx does HTTP; this module adds X's conventions: bearer auth, a versioned
User-Agent, problem bodies turned into XError, rule changes judged by
`meta.summary` and `errors` (X's status codes for them disagree), and the
stream split into lines on raw bytes (U+2028 is legal inside a post, so
decoded-text line splitting would cut posts in half).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from node import __version__


USER_AGENT = f"edison-bridge/{__version__}"
MAX_LINE = 1 << 20  # 1 MiB: far above any real post, small enough to never exhaust memory
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


class Refused(Exception):
    """X refused a request in a way retrying cannot fix (unknown account, invalid rule)."""


@dataclass(frozen=True)
class Skipped:
    """A stream line that could not be used, and why (logged by the caller, connection kept)."""

    reason: str


def split_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE) -> Iterator[bytes | Skipped]:
    """Lines of a byte stream: split on b"\\n", `\\r` stripped, b"" for a keep-alive.

    A line longer than `max_line` is skipped up to its end; bytes left without a
    newline when the stream ends are a truncated line.
    """
    buffer = bytearray()
    oversize = 0  # bytes of an over-long line discarded so far
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                piece = chunk[start:]
                if oversize:
                    oversize += len(piece)
                elif len(buffer) + len(piece) > max_line:
                    oversize = len(buffer) + len(piece)
                    buffer.clear()
                else:
                    buffer += piece
                break
            piece = chunk[start:end]
            if oversize or len(buffer) + len(piece) > max_line:
                yield Skipped(f"line of {oversize + len(buffer) + len(piece) + 1} bytes is over the {max_line}-byte limit")
                oversize = 0
                buffer.clear()
            else:
                buffer += piece
                yield bytes(buffer).rstrip(b"\r")
                buffer.clear()
            start = end + 1
    if oversize or buffer:
        yield Skipped(f"stream ended inside a line ({oversize + len(buffer)} bytes without a newline)")


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
                details = "; ".join(f"{e.get('value', '')!r}: {e.get('title')} {e.get('details') or e.get('detail') or ''}"
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
