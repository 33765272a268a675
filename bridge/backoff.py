"""Reconnect schedules, one per network, each kept by its source's one loop.

Both share one rule: when an established connection drops, reconnect at once,
but only the first time after a short-lived connection; a connection that
drops again before `healthy_after` seconds counts as a failed attempt, so a
server that accepts and closes at once cannot cause a tight loop. A connection
that stayed up `healthy_after` seconds resets the schedule. All delays are
multiplied by `scale` (1.0 in service; tests use a small value so the real
schedule can be checked quickly).

XBackoff is X's published schedule for the filtered stream
(handling-disconnections):
- network (TCP/TLS) errors: linear, +250 ms per attempt, up to 16 s;
- HTTP errors: exponential from 5 s, doubling, up to 320 s;
- 429: exponential from 60 s, doubling (X states no ceiling; we stop at an hour);
- monthly usage cap: an hour at a time (retrying sooner cannot help).

ExponentialBackoff is for Bluesky's Jetstream and Mastodon's streaming API:
1 s doubling up to 60 s, each delay drawn from the upper half of its step
(jitter), so bridges cut off together do not all come back in the same instant.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

NETWORK_STEP, NETWORK_MAX = 0.25, 16.0
HTTP_START, HTTP_MAX = 5.0, 320.0
TOO_MANY_START, TOO_MANY_MAX = 60.0, 3600.0
USAGE_CAP_WAIT = 3600.0
EXPONENTIAL_START, EXPONENTIAL_MAX = 1.0, 60.0


@dataclass
class Reconnect:
    scale: float = 1.0
    healthy_after: float = 30.0
    _quick_drop: bool = False

    def failed(self) -> float:
        """A connection attempt failed: the next delay."""
        raise NotImplementedError

    def reset(self) -> None:
        self._quick_drop = False

    def after(self, connected_at: float | None) -> float:
        """The wait after an attempt that failed (`connected_at` None) or a connection established at `connected_at`."""
        if connected_at is None:
            return self.failed()
        return self.dropped(time.monotonic() - connected_at)

    def dropped(self, lasted: float) -> float:
        """An established connection ended after `lasted` seconds: the delay before reconnecting."""
        if lasted >= self.healthy_after:
            self.reset()
            return 0.0
        if not self._quick_drop:
            self._quick_drop = True
            return 0.0
        return self.failed()


@dataclass
class XBackoff(Reconnect):
    _network: float = 0.0
    _http: float = 0.0
    _too_many: float = 0.0

    def failed(self) -> float:
        return self.network()

    def network(self) -> float:
        self._network = min(self._network + NETWORK_STEP, NETWORK_MAX)
        return self._network * self.scale

    def http(self) -> float:
        self._http = min(self._http * 2, HTTP_MAX) if self._http else HTTP_START
        return self._http * self.scale

    def too_many(self) -> float:
        self._too_many = min(self._too_many * 2, TOO_MANY_MAX) if self._too_many else TOO_MANY_START
        return self._too_many * self.scale

    def usage_cap(self) -> float:
        return USAGE_CAP_WAIT * self.scale

    def connected(self) -> None:
        """The stream answered 200: HTTP back-off is over (network back-off waits for a healthy run)."""
        self._http = self._too_many = 0.0

    def reset(self) -> None:
        super().reset()
        self._network = self._http = self._too_many = 0.0


@dataclass
class ExponentialBackoff(Reconnect):
    rng: random.Random = field(default_factory=random.Random)
    _step: float = 0.0

    def failed(self) -> float:
        self._step = min(self._step * 2, EXPONENTIAL_MAX) if self._step else EXPONENTIAL_START
        return self._step * self.rng.uniform(0.5, 1.0) * self.scale

    def reset(self) -> None:
        super().reset()
        self._step = 0.0
