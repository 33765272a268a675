"""Which broker to try next, and when: the one reconnect policy of every MQTT client here.

Start with the first address. When a connection is lost, or an attempt
fails, go on to the next address at once, unless it failed recently too:
each address that failed waits before its next attempt, 1 s doubling to 30 s,
with jitter so a fleet does not come back in step; a connection that was up
resets its address to 1 s. It never gives up. Pure (no I/O), so the whole
policy is tested with a fake clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

MIN_DELAY = 1.0
MAX_DELAY = 30.0


class ReconnectPolicy:
    """Per address: when it may be tried again. `next()` says which to try and how long to wait first."""

    def __init__(self, count: int, clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random) -> None:
        if count < 1:
            raise ValueError("at least one broker address is needed")
        self._clock = clock
        self._jitter = jitter
        self._due = [0.0] * count  # monotonic time from which each address may be tried
        self._failures = [0] * count  # failed attempts in a row, per address
        self._start = 0  # rotation: the address after the one tried last comes first

    def next(self) -> tuple[int, float]:
        """(index of the address to try, seconds to wait before trying it)."""
        now = self._clock()
        order = [(self._start + k) % len(self._due) for k in range(len(self._due))]
        ready = [i for i in order if self._due[i] <= now]
        if ready:
            return ready[0], 0.0
        best = min(order, key=lambda i: self._due[i])
        return best, self._due[best] - now

    def failed(self, index: int) -> None:
        """An attempt at `index` got no usable connection: back off that address."""
        self._failures[index] += 1
        self._hold(index, min(MAX_DELAY, MIN_DELAY * 2 ** (self._failures[index] - 1)))

    def lost(self, index: int) -> None:
        """A connection to `index` that was up has dropped: the next address comes first, this one in 1 s."""
        self._failures[index] = 0
        self._hold(index, MIN_DELAY)

    def _hold(self, index: int, delay: float) -> None:
        # Between half and all of the delay, never under MIN_DELAY ("full jitter" bounded below).
        self._due[index] = self._clock() + max(MIN_DELAY, delay * (0.5 + 0.5 * self._jitter()))
        self._start = (index + 1) % len(self._due)
