"""What the broker logs about its clients: their strings made safe to show, and floods summed up.

A client chooses its client id, user name and topics, so they are escaped
before they reach a log line (a newline in one must not forge another line);
a flood of the same refusal is logged once per interval with a count, so it
cannot fill the disk.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("edison-broker")


def shown(text: str | None, limit: int = 100) -> str:
    """A client-chosen string as a log may show it: control characters escaped (no forged lines), shortened."""
    if text is None:
        return "(none)"
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return safe + ("..." if len(text) > limit else "")


class Squelch:
    """One warning per kind of event every `every` seconds, counting those not logged: floods must not flood the log."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._seen: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        self._log(logging.WARNING, key, message, *args)

    def info(self, key: str, message: str, *args: object) -> None:
        self._log(logging.INFO, key, message, *args)

    def _log(self, level: int, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if len(self._seen) > 10_000:  # keys can be chosen by clients (addresses, users): keep the recent ones
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.every}
        last, hidden = self._seen.get(key, (-self.every, 0))
        if now - last < self.every:
            self._seen[key] = (last, hidden + 1)
            return
        self._seen[key] = (now, 0)
        log.log(level, message + (f" (and {hidden} more in the last {self.every:g} s)" if hidden else ""), *args)
