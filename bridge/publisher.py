"""Commands out over MQTT; a command is never lost between a post and the broker's PUBACK.

`keep` writes a command to the outbox in --state (fsynced) before anything is
sent (and the outbox is what remembers its post as acted on until then);
`flush` hands what waits to MQTT while the broker is reachable (and the link's
on_connect flushes again on every connect); the broker's PUBACK removes
it from the outbox. Whatever is not acknowledged when the bridge stops stays on
disk and is published by the next run. A command whose `expires` passes while
it waits is dropped with a log line instead of reaching the device late.

This is the only module that talks to node.mqtt (the link and its settings).
"""

from __future__ import annotations

import json
import logging
import threading
import time

from bridge.state import Outbox, Outgoing, SeenPosts
from node.link import Message, Session
from node.mqtt import LinkSettings, MqttLink

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, settings: LinkSettings, client_id: str, outbox: Outbox, seen: SeenPosts,
                 max_pending: int = 100) -> None:
        self.outbox = outbox
        self.seen = seen
        self._max_pending = max_pending
        self._lock = threading.Condition()
        self._handed: set[str] = set()  # ids handed to MQTT by this process (paho resends them after a reconnect)
        self._announced: set[str] = set()  # ids logged as waiting for the broker
        self._was_connected = False  # before the first connection a command waits for it, not for a lost broker
        self.link = MqttLink(settings, client_id)

    def start(self) -> None:
        if len(self.outbox):
            log.info("%d command(s) kept from an earlier run in %s: publishing when the broker is reachable",
                     len(self.outbox), self.outbox.path)
        self.link.start(Session(on_connect=lambda session_present: self.connected()))

    def __contains__(self, command_id: str) -> bool:
        with self._lock:
            return command_id in self.outbox

    def pending(self) -> list[Outgoing]:
        with self._lock:
            return list(self.outbox)

    def keep(self, out: Outgoing) -> None:
        """Make the command safe: on disk when this returns (OSError if it cannot be written)."""
        with self._lock:
            if len(self.outbox) >= self._max_pending:
                oldest = next((o for o in self.outbox if o.id not in self._handed), None)
                if oldest is not None:
                    log.warning("pending queue full (%d): dropped command %s for %s", self._max_pending, oldest.id,
                                oldest.topic)
                    self._finish(oldest.id)
            self.outbox.add(out)

    def flush(self) -> None:
        """Hand every kept command to MQTT while connected (called after `keep` and on every connect)."""
        while True:
            with self._lock:
                if not self.link.connected:
                    for out in self.outbox:
                        if out.id not in self._handed and out.id not in self._announced:
                            self._announced.add(out.id)
                            why = "broker unreachable" if self._was_connected else "not connected to the broker yet"
                            log.info("%s: command %s for %s kept (%d pending)", why, out.id, out.topic,
                                     len(self.outbox))
                    return
                found = next((o for o in self.outbox if o.id not in self._handed), None)
                if found is None:
                    return
                out = found
                self._handed.add(out.id)
                remaining = out.command["expires"] - time.time()
                if remaining <= 0:
                    log.warning("command %s for %s expired %.0f s ago while waiting for the broker: dropped",
                                out.id, out.topic, -remaining)
                    self._finish(out.id)
                    continue
            if self._publish(out, remaining) is None:  # never under our lock: the link acknowledges under its own
                with self._lock:
                    self._handed.discard(out.id)  # not queued: tried again at the next connect
                return

    def connected(self) -> None:
        with self._lock:
            self._was_connected = True
            waiting = sum(1 for o in self.outbox if o.id not in self._handed)
        if waiting:
            log.info("broker reachable: publishing %d kept command(s)", waiting)
        self.flush()

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` until the broker has acknowledged every kept command."""
        with self._lock:
            return self._lock.wait_for(lambda: not len(self.outbox), timeout)

    def stop(self, timeout: float) -> int:
        """Disconnect (after up to `timeout` for outstanding PUBACKs); the number of commands left on disk."""
        self.link.stop(timeout=timeout)
        with self._lock:
            left = len(self.outbox)
            self.outbox.close()
        if left:
            log.warning("%d command(s) not yet acknowledged by the broker are kept in %s: the next run publishes "
                        "them", left, self.outbox.path)
        return left

    def _settle(self, command_id: str, refusal: str | None) -> None:
        """The broker's PUBACK of a command: it leaves the outbox (a refusal is logged: retrying cannot help)."""
        with self._lock:
            if refusal:
                log.error("the broker refused command %s: %s (check the bridge user's access rules)", command_id,
                          refusal)
            else:
                log.debug("the broker acknowledged command %s", command_id)
            self._finish(command_id)

    def _finish(self, command_id: str) -> None:
        self.seen.sync()  # the post stays known as acted on once its command leaves the outbox
        self.outbox.remove(command_id)
        self._handed.discard(command_id)
        self._announced.discard(command_id)
        self._lock.notify_all()

    def _publish(self, out: Outgoing, remaining: float) -> int | None:
        """Hand one command to MQTT, with MQTT 5's expiry and its source as user properties (dropped on 3.1.1)."""
        source = out.command.get("source", {})
        message = Message(out.topic, json.dumps(out.command, separators=(",", ":"), ensure_ascii=False).encode(),
                          expiry=max(1, int(remaining)),
                          user_properties=tuple((f"{source.get('via', 'source')}_{k}", str(v))
                                                for k, v in source.items()))
        mid = self.link.publish(message, on_acknowledged=lambda refusal: self._settle(out.id, refusal))
        if mid is not None:
            log.info("published command %s to %s", out.id, out.topic)
        return mid
