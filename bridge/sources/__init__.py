"""One module per network: each turns its network's events into `matching.Post`s for the pipeline.

What they share is here: the loop that follows a stream (`StreamSource`: connect,
read, say why it ended, back off, stop on what retrying cannot fix), `Refused`,
how a stream is cut into lines, the exit codes, the User-Agent, and the
reconnect log line (`stream: <why>; reconnecting in D s`). What is each
network's own (how to connect, how to read an event, which failures are whose)
is in its module.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from bridge.backoff import Reconnect
from node import __version__

USER_AGENT = f"edison-bridge/{__version__}"
MAX_LINE = 1 << 20  # 1 MiB: far above any real post, small enough to never exhaust memory
EXIT_REFUSED = 2  # configuration the network will not accept (unknown account, invalid rule)
EXIT_AUTH = 3  # the network refused the token


class Source(Protocol):
    network: str

    def run(self, stop: threading.Event) -> int:
        """Follow the network until `stop` is set (0) or it refuses to go on (an exit code)."""
        ...


class Refused(Exception):
    """The network refused something retrying cannot fix (an unknown account, an invalid rule): exit 2."""


@dataclass(frozen=True)
class Ended:
    """Why a connection ended or an attempt failed, and what comes next.

    `delay` None: the source's back-off decides. `exit` set: retrying cannot
    help; `reason` is logged as an error and the source stops with that code.
    """

    reason: str
    delay: float | None = None
    exit: int | None = None


Item = TypeVar("Item")


class StreamSource(ABC, Generic[Item]):
    """The loop every network's stream follows, written once.

    Until `stop`: `prepare` (what must hold before connecting, such as resolved
    accounts), `open` the stream, `connected`, `handle` each item; when it ends,
    `ended` names the reason (or a network's fault), the source's back-off says
    how long to wait, and the loop connects again. `Refused` stops it with exit 2.
    """

    network: str
    log: logging.Logger
    backoff: Reconnect

    def prepare(self, stop: threading.Event) -> None:
        """Before each attempt: what the stream needs first. Raise Refused when it cannot be had."""

    @abstractmethod
    def open(self) -> AbstractContextManager[Iterable[Item]]:
        """Connect: the items of the stream, until it ends."""

    def connected(self) -> None:
        """The stream is open: log it, catch up on what it does not replay."""
        self.log.info("stream: connected")

    @abstractmethod
    def handle(self, item: Item) -> None:
        """One item of the stream; anything unusable is logged and skipped, never raised."""

    @abstractmethod
    def ended(self, exc: Exception, connected_at: float | None) -> Ended | None:
        """Why `exc` ended the stream (or the attempt), if it is one of this network's faults; else None."""

    def closed(self) -> None:
        """After each attempt, however it ended: keep what must survive a restart."""

    def run(self, stop: threading.Event) -> int:
        """Follow the network until `stop` is set (0) or it refuses to go on (an exit code)."""
        while not stop.is_set():
            connected_at: float | None = None
            try:
                self.prepare(stop)
                if stop.is_set():
                    return 0
                with self.open() as items:
                    connected_at = time.monotonic()
                    self.connected()
                    for item in items:
                        if stop.is_set():
                            return 0
                        self.handle(item)
                end = Ended("the server closed the stream")
            except Refused as exc:
                self.log.error("%s", exc)
                return EXIT_REFUSED
            except Exception as exc:
                known = self.ended(exc, connected_at)
                if known is None:
                    raise
                end = known
            finally:
                self.closed()
            if end.exit is not None:
                self.log.error("%s", end.reason)
                return end.exit
            if stop.is_set():
                return 0
            reconnect(self.log, stop, self.backoff, end.reason, connected_at, end.delay)
        return 0


@dataclass(frozen=True)
class Skipped:
    """A line or frame that could not be used, and why (logged by the caller, connection kept)."""

    reason: str


def split_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE) -> Iterator[bytes | Skipped]:
    """Lines of a byte stream: split on b"\\n", `\\r` stripped, b"" for an empty line.

    Split on bytes, not decoded text: U+2028 is legal inside a post, and text
    line splitting would cut the post in half. A line longer than `max_line` is
    skipped up to its end; bytes left without a newline when the stream ends
    are a truncated line.
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
                size = oversize + len(buffer) + len(piece) + 1
                yield Skipped(f"line of {size} bytes is over the {max_line}-byte limit")
                oversize = 0
                buffer.clear()
            else:
                buffer += piece
                yield bytes(buffer).rstrip(b"\r")
                buffer.clear()
            start = end + 1
    if oversize or buffer:
        yield Skipped(f"stream ended inside a line ({oversize + len(buffer)} bytes without a newline)")


def iso_time(value: Any) -> float | None:
    """Unix time of an ISO 8601 time as the networks write it (`...Z`); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()  # noqa: FURB162 - 3.10 reads no Z
    except ValueError:
        return None


def reconnect(log: logging.Logger, stop: threading.Event, backoff: Reconnect, reason: str, connected_at: float | None,
              delay: float | None = None) -> None:
    """Say why the stream ended and wait before the next attempt: `delay`, or what the back-off says."""
    lasted = time.monotonic() - connected_at if connected_at is not None else None
    if delay is None:
        if lasted is not None and lasted >= backoff.healthy_after:
            log.info("stream: was healthy (%.0f s): back-off reset", lasted)
        delay = backoff.after(connected_at)
    after = f" after {lasted:.1f} s connected" if lasted is not None else ""
    log.warning("stream: %s%s; reconnecting in %.4g s", reason, after, delay)
    stop.wait(delay)
