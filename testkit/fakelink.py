"""An MQTT link in memory, to test what a client decides without a broker (gpiozero's MockFactory, for MQTT).

It records every publish, and the test plays the broker: `connect()` (a new
or a resumed session, with the backlog age the real link would measure),
`deliver()` a message to a subscription, `drop()` the connection (the will
is published, as a broker would). MQTT 3.1.1 is simulated by dropping the
MQTT 5 properties both ways, as the real link does.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from node.link import Acknowledged, Incoming, Message, Session


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT topic filter matching (`+` one level, `#` the rest)."""
    levels, wanted = topic.split("/"), filter_.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or (level != "+" and level != levels[i]):
            return False
    return len(levels) == len(wanted)


_M = TypeVar("_M", bound=Message)


def _without_properties(message: _M) -> _M:
    return replace(message, response_topic=None, correlation_data=None, expiry=None, user_properties=())


class FakeLink:
    """node.link.Link in memory; `published` is what the client sent, in order."""

    def __init__(self, mqtt5: bool = True) -> None:
        self.mqtt5 = mqtt5
        self.session = Session()
        self.published: list[Message] = []
        self.connected = False
        self.stopped = False
        self.backlog: float | None = None
        self._mid = 0
        self._unacknowledged: list[Acknowledged] = []  # published while offline: acknowledged at the next connect
        self._changed = threading.Condition()  # publishes come from several threads (blinks, the announcer)

    # -- node.link.Link ---------------------------------------------------

    def start(self, session: Session) -> None:
        self.session = session

    def publish(self, message: Message, on_acknowledged: Acknowledged | None = None) -> int | None:
        """Recorded; a QoS 1 publish is acknowledged at once while connected, else at the next connect."""
        if not self.mqtt5:
            message = _without_properties(message)
        with self._changed:
            self.published.append(message)
            self._mid += 1
            self._changed.notify_all()
            mid = self._mid if message.qos else None
            if on_acknowledged is not None and mid is not None and not self.connected:
                self._unacknowledged.append(on_acknowledged)
                on_acknowledged = None
        if on_acknowledged is not None and mid is not None:
            on_acknowledged(None)
        return mid

    def backlog_age(self) -> float | None:
        return self.backlog

    def stop(self, final: Sequence[Message] = (), timeout: float = 1.0) -> bool:
        if self.connected:
            for message in final:
                self.publish(message)
        self.connected = False
        self.stopped = True
        return True

    # -- the broker's side ------------------------------------------------

    def connect(self, session_present: bool = False, backlog_age: float | None = None) -> None:
        self.connected = True
        self.backlog = backlog_age
        with self._changed:
            waiting, self._unacknowledged = self._unacknowledged, []
        for acknowledged in waiting:
            acknowledged(None)
        if self.session.birth:
            self.publish(self.session.birth)
        self.session.on_connect(session_present)

    def drop(self) -> None:
        """The connection is lost: the broker publishes the will."""
        self.connected = False
        self.backlog = None
        if self.session.will:
            self.publish(self.session.will)

    def deliver(self, topic: str, payload: bytes | str, **fields: object) -> Incoming:
        """Hand the client a message as the broker would: only when connected, only on a subscription."""
        assert self.connected, "the broker delivers nothing while the client is offline"
        assert any(topic_matches(f, topic) for f in self.session.subscriptions), f"no subscription matches {topic}"
        data = payload.encode() if isinstance(payload, str) else payload
        message = Incoming(topic, data, **fields)  # type: ignore[arg-type]
        if not self.mqtt5:
            message = _without_properties(message)
        self.session.on_message(message)
        return message

    # -- for assertions ---------------------------------------------------

    def on(self, topic: str) -> list[Message]:
        with self._changed:
            return [m for m in self.published if m.topic == topic]

    def wait_for(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[Message]:
        """The messages on `topic` once there are at least `count` (publishes from other threads)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.on(topic)) >= count, timeout):
                raise AssertionError(f"{len(self.on(topic))} of {count} message(s) on {topic} within {timeout} s: "
                                     f"{[(m.topic, m.payload) for m in self.published[-10:]]}")
            return self.on(topic)
