"""X's published reconnect schedule for the filtered stream (handling-disconnections).

- an established connection drops: reconnect at once;
- network (TCP/TLS) errors: linear, +250 ms per attempt, up to 16 s;
- HTTP errors: exponential from 5 s, doubling, up to 320 s;
- 429: exponential from 60 s, doubling (X states no ceiling; we stop at an hour);
- monthly usage cap: an hour at a time (retrying sooner cannot help).

A connection that drops soon after it was established (before `healthy_after`
seconds) is reconnected at once only the first time; after that it counts as a
network error, so a server that accepts and closes at once cannot cause a tight
loop. All delays are multiplied by `scale` (1.0 in service; tests use a small
value so the real schedule can be checked quickly).
"""

from __future__ import annotations

from dataclasses import dataclass

NETWORK_STEP, NETWORK_MAX = 0.25, 16.0
HTTP_START, HTTP_MAX = 5.0, 320.0
TOO_MANY_START, TOO_MANY_MAX = 60.0, 3600.0
USAGE_CAP_WAIT = 3600.0


@dataclass
class Backoff:
    scale: float = 1.0
    healthy_after: float = 30.0
    _network: float = 0.0
    _http: float = 0.0
    _too_many: float = 0.0
    _quick_drop: bool = False

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

    def dropped(self, lasted: float) -> float:
        """An established connection ended after `lasted` seconds."""
        if lasted >= self.healthy_after:
            self.reset()
            return 0.0
        if not self._quick_drop:
            self._quick_drop = True
            return 0.0
        return self.network()

    def reset(self) -> None:
        self._network = self._http = self._too_many = 0.0
        self._quick_drop = False

