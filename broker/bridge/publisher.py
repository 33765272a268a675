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

from node.link import Message, Session
from node.mqtt import LinkSettings, MqttLink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    command: dict[str, Any]  # has "id" and "expires"; user properties come from "source"


class Publisher:
    def __init__(self, settings: LinkSettings, client_id: str, max_pending: int = 100) -> None:
        self._pending: deque[Outgoing] = deque()
        self._max_pending = max_pending
        self._lock = threading.Condition()  # never held while publishing: paho calls back under its own locks
        self._draining = False  # on_connect is sending the kept commands: new ones queue behind them
        self.link = MqttLink(settings, client_id)

    def start(self) -> None:
        self.link.start(Session(on_connect=self._on_connect))

    def publish(self, out: Outgoing) -> None:
        with self._lock:
            direct = self.link.connected and not self._pending and not self._draining
            if not direct:
                if len(self._pending) >= self._max_pending:
                    dropped = self._pending.popleft()
                    log.warning("pending queue full (%d): dropped command %s for %s", self._max_pending,
                                dropped.command["id"], dropped.topic)
                self._pending.append(out)
                log.info("broker unreachable: command %s for %s kept (%d pending)", out.command["id"], out.topic,
                         len(self._pending))
        if direct:
            self._send(out)

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` until nothing waits for the broker."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending and not self._draining, timeout)

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
            self._draining = True
        try:
            while True:
                with self._lock:
                    if not (self._pending and self.link.connected):
                        self._stop_draining()  # in the same hold as the check: nothing is left behind
                        return
                    out = self._pending.popleft()
                self._send(out)
        except Exception:
            with self._lock:
                self._stop_draining()
            raise

    def _stop_draining(self) -> None:
        self._draining = False
        self._lock.notify_all()

    def _send(self, out: Outgoing) -> None:
        remaining = out.command["expires"] - time.time()
        if remaining <= 0:
            log.warning("command %s for %s expired %.0f s ago while waiting for the broker: dropped",
                        out.command["id"], out.topic, -remaining)
            return
        payload = json.dumps(out.command, separators=(",", ":"), ensure_ascii=False).encode()
        user_properties = tuple((f"x_{k}", str(v)) for k, v in out.command.get("source", {}).items())
        self.link.publish(Message(out.topic, payload, expiry=max(1, int(remaining)), user_properties=user_properties))
        log.info("published command %s to %s", out.command["id"], out.topic)
