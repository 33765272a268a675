"""Commands out over MQTT, kept while the broker is unreachable.

The bridge publishes only while connected; otherwise the command waits in a
bounded queue (the oldest is dropped, with a log line, when it is full) and is
sent from the link's on_connect. A command whose `expires` passes while it
waits is dropped with a log line instead of reaching the device late.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from node.mqtt import Link, LinkSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    command: dict[str, Any]  # has "id" and "expires"; user properties come from "source"


class Publisher:
    def __init__(self, settings: LinkSettings, client_id: str, max_pending: int = 100) -> None:
        self._pending: deque[Outgoing] = deque()
        self._max_pending = max_pending
        self._lock = threading.Condition()
        self.link = Link(settings, client_id=client_id, subscriptions=[], on_message=lambda msg: None,
                         on_connect=self._on_connect)

    def start(self) -> None:
        self.link.start()

    def publish(self, out: Outgoing) -> None:
        with self._lock:
            if self.link.connected and not self._pending:
                self._send(out)
                return
            if len(self._pending) >= self._max_pending:
                dropped = self._pending.popleft()
                log.warning("pending queue full (%d): dropped command %s for %s", self._max_pending,
                            dropped.command["id"], dropped.topic)
            self._pending.append(out)
            log.info("broker unreachable: command %s for %s kept (%d pending)", out.command["id"], out.topic,
                     len(self._pending))

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` until nothing waits for the broker."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending, timeout)

    def stop(self, timeout: float) -> bool:
        """Disconnect after the broker acknowledged what was sent (up to `timeout`); False if anything is lost."""
        flushed = self.link.stop(timeout=timeout)
        with self._lock:
            left = len(self._pending)
        if left:
            log.error("stopping with %d command(s) never published (broker unreachable)", left)
        return flushed and not left

    def _on_connect(self, session_present: bool) -> None:
        with self._lock:
            if self._pending:
                log.info("broker reachable: publishing %d kept command(s)", len(self._pending))
            while self._pending and self.link.connected:
                self._send(self._pending.popleft())
            self._lock.notify_all()

    def _send(self, out: Outgoing) -> None:
        remaining = out.command["expires"] - time.time()
        if remaining <= 0:
            log.warning("command %s for %s expired %.0f s ago while waiting for the broker: dropped",
                        out.command["id"], out.topic, -remaining)
            return
        props = None
        if self.link.mqtt5:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = max(1, int(remaining))
            props.UserProperty = [(f"x_{k}", str(v)) for k, v in out.command.get("source", {}).items()]
        self.link.publish(out.topic, json.dumps(out.command, separators=(",", ":"), ensure_ascii=False),
                          qos=1, properties=props)
        log.info("published command %s to %s", out.command["id"], out.topic)
