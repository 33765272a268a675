"""What the node (and the bridge) need of an MQTT connection, without naming an MQTT library.

`Link` is the interface; node.mqtt implements it with paho-mqtt for real
brokers, testkit.fakelink in memory for tests. Messages are this module's own
type both ways, so only node.mqtt imports paho.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    expiry: int | None = None  # MQTT 5 message expiry interval, seconds
    user_properties: tuple[tuple[str, str], ...] = ()

    @property
    def has_properties(self) -> bool:
        """Whether it carries MQTT 5 properties (dropped on MQTT 3.1.1)."""
        return bool(self.response_topic or self.correlation_data or self.expiry is not None or self.user_properties)


@dataclass(frozen=True)
class Incoming(Message):
    """A message from the broker; `dup` says the broker sent it before (QoS 1 redelivery)."""

    dup: bool = False


def _ignore(*args: object) -> None:
    return None


# Called once the broker has acknowledged a QoS 1 publish: with None, or with the reason it refused it (MQTT 5).
Acknowledged = Callable[[str | None], None]


@dataclass(frozen=True)
class Session:
    """What a client keeps on its broker and how it hears from it.

    `on_connect(session_present)` and `on_message(message)` run on the link's
    network thread and must not block. `birth` is published on every connect,
    after the subscriptions; `will` is the broker's Last Will for us.
    """

    subscriptions: tuple[str, ...] = ()
    on_message: Callable[[Incoming], None] = _ignore
    on_connect: Callable[[bool], None] = _ignore
    birth: Message | None = None
    will: Message | None = None


class Link(Protocol):
    """One MQTT connection that stays up and resumes its session."""

    @property
    def connected(self) -> bool: ...

    def start(self, session: Session) -> None:
        """Connect in the background, and reconnect whenever the connection drops."""

    def publish(self, message: Message, on_acknowledged: Acknowledged | None = None) -> int | None:
        """Queue a publish (sent now or after the next reconnect); the message id of a pending QoS 1 publish.

        `on_acknowledged` runs once the broker acknowledged it (possibly before publish returns).
        """

    def backlog_age(self) -> float | None:
        """Seconds we were offline, while the broker still delivers what it queued meanwhile; else None."""

    def stop(self, final: Sequence[Message] = (), timeout: float = 1.0) -> bool:
        """Publish `final` if connected, wait up to `timeout` for the broker's acknowledgements, disconnect.

        Returns whether every publish was acknowledged.
        """
