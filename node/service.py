"""The node: MQTT commands in, pin changes and results out.

Every `/set` message ends in exactly one result on `<device>/result` (and on
the MQTT 5 response topic when the request names one), whether it was carried
out or refused, so a sender always learns what became of its command.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from node import commands, homeassistant
from node.commands import Command, CommandError
from node.config import BlinkPattern, DeviceConfig
from node.mqtt import Link, LinkSettings, Message
from node.outputs import Output, state_name
from node.pins import PinFactory
from node.topics import DeviceTopics

log = logging.getLogger(__name__)

# Seconds to wait before answering Home Assistant's `online`, drawn at random so a fleet does not answer at once.
ANNOUNCE_DELAY = (0.2, 2.0)


class Refused(Exception):
    """A well-formed command that is not carried out (expired, unknown output, retained)."""


def _correlation_text(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return data.hex()


class Node:
    def __init__(self, device_id: str, device: DeviceConfig, prefix: str, pins: PinFactory, link: LinkSettings,
                 discovery_prefix: str = "homeassistant") -> None:
        self.device_id = device_id
        self.device = device
        self.topics = DeviceTopics(prefix, device_id)
        self.discovery_prefix = discovery_prefix
        self.ha_status_topic = f"{discovery_prefix}/status"
        self._announce_timer: threading.Timer | None = None
        self._announce_lock = threading.Lock()
        self._stopping = False
        self.outputs = {
            name: Output(name, pins.pin(cfg.pin), cfg, on_level=self._publish_level)
            for name, cfg in device.outputs.items()
        }
        self.link = Link(
            link,
            client_id=device_id,
            subscriptions=[self.topics.set_filter, self.ha_status_topic],
            on_message=self._on_message,
            on_connect=self._on_connect,
            birth=Message(self.topics.status, "online", retain=True),
            will=Message(self.topics.status, "offline", retain=True),
        )

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        """Safe state, `offline`, clean disconnect; bounded so the process exits within 2 s."""
        self._stop_announcing()
        for output in self.outputs.values():
            output.safe()
        flushed = self.link.stop([Message(self.topics.status, "offline", retain=True)], timeout=1.0)
        if not flushed:
            log.warning("broker did not acknowledge every final message before disconnect")

    # -- callbacks (paho's network thread) ------------------------------

    def _on_connect(self, session_present: bool) -> None:
        self._publish_discovery()
        for output in self.outputs.values():
            self.link.publish(self.topics.state(output.name), output.level, retain=True)

    def _publish_level(self, output: Output, on: bool) -> None:
        self.link.publish(self.topics.state(output.name), state_name(on), retain=True)

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        if msg.topic == self.ha_status_topic:
            self._on_ha_status(msg.payload)
            return
        name = self.topics.output_of_set(msg.topic)
        if name is None:
            log.warning("message on unexpected topic %s ignored", msg.topic)
            return
        props = getattr(msg, "properties", None)
        reply_to = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        fallback_id = _correlation_text(correlation) if correlation else uuid.uuid4().hex[:12]
        output = self.outputs.get(name)
        command_id = fallback_id
        try:
            command = commands.parse(msg.payload, output.config.blink if output else BlinkPattern())
            command_id = command.id or fallback_id
            self._check(command, output, name, msg)
            result = self._apply(command, output)
        except (CommandError, Refused) as exc:
            if isinstance(exc, CommandError) and exc.command_id:
                command_id = exc.command_id
            log.warning("%s: command %s refused: %s", msg.topic, command_id, exc)
            result = {"ok": False, "error": str(exc)}
        else:
            log.info("%s: command %s done: %s%s", msg.topic, command_id, result["state"],
                     f" (from {json.dumps(command.source)})" if command.source else "")
        self._reply({"id": command_id, "output": name, **result}, reply_to, correlation)

    def _check(self, command: Command, output: Output | None, name: str, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            raise Refused("retained /set messages are never acted on (publish commands without the retain flag)")
        if output is None:
            raise Refused(f"unknown output {name!r} (device {self.device_id} has {', '.join(self.outputs)})")
        now = time.time()
        if command.expires is not None and command.expires < now:
            raise Refused(f"expired {now - command.expires:.1f} s ago (expires {command.expires})")
        waited = self.link.backlog_age()
        max_age = output.config.max_age
        if waited is not None and max_age is not None and waited > max_age:
            raise Refused(
                f"queued while the node was offline for {waited:.0f} s, longer than max_age {max_age:g} s"
            )

    def _apply(self, command: Command, output: Output) -> dict[str, Any]:
        if command.state:
            output.set(command.state)
        if command.blink:
            output.blink(command.blink)
            return {"ok": True, "state": output.state, "effect": "blink"}
        return {"ok": True, "state": output.state}

    def _reply(self, result: dict[str, Any], reply_to: str | None, correlation: bytes | None) -> None:
        payload = json.dumps(result, separators=(",", ":"))
        self.link.publish(self.topics.result, payload)
        if reply_to:
            props = Properties(PacketTypes.PUBLISH)
            if correlation:
                props.CorrelationData = correlation
            self.link.publish(reply_to, payload, properties=props)

    # -- Home Assistant -------------------------------------------------

    def _publish_discovery(self) -> None:
        for message in homeassistant.announce(self.topics, self.device, self.discovery_prefix):
            self.link.publish(message.topic, message.payload, retain=message.retain)

    def _on_ha_status(self, payload: bytes) -> None:
        """Home Assistant restarted (`online`): announce again, after a random delay, off paho's thread."""
        status = payload.decode("utf-8", "replace").strip()
        if status != "online":
            log.info("Home Assistant status %r on %s: nothing to do", status[:40], self.ha_status_topic)
            return
        delay = random.uniform(*ANNOUNCE_DELAY)
        log.info("Home Assistant is online: announcing discovery, availability and state in %.1f s", delay)
        timer = threading.Timer(delay, self._announce)
        timer.daemon = True
        with self._announce_lock:
            if self._announce_timer is not None:
                self._announce_timer.cancel()  # one answer to a burst of `online`
            self._announce_timer = timer
        timer.start()

    def _announce(self) -> None:
        # What a reconnect sends: `online`, then discovery and every output's state.
        # Under the lock, so a stop never publishes `offline` before a late `online`.
        with self._announce_lock:
            if self._stopping:
                return
            self.link.publish(self.topics.status, "online", retain=True)
            self._on_connect(session_present=True)

    def _stop_announcing(self) -> None:
        with self._announce_lock:
            self._stopping = True
            if self._announce_timer is not None:
                self._announce_timer.cancel()
                self._announce_timer = None


def forget(device_id: str, device: DeviceConfig, prefix: str, discovery_prefix: str, link: LinkSettings,
           timeout: float = 10.0) -> bool:
    """Remove the device's entities from Home Assistant: publish empty retained configs, then disconnect.

    Uses its own client id and no session, so a running node keeps its
    connection and the commands the broker holds for it.
    """
    messages = homeassistant.forget(DeviceTopics(prefix, device_id), device, discovery_prefix)
    connected = threading.Event()
    client = Link(replace(link, session_expiry=0), client_id=f"{device_id}-forget", subscriptions=[],
                  on_message=lambda msg: None, on_connect=lambda session_present: connected.set())
    client.start()
    if not connected.wait(timeout):
        log.error("could not connect to %s within %.0f s: nothing removed", link.address, timeout)
        client.stop(timeout=0)
        return False
    done = client.stop(messages, timeout=timeout)
    if done:
        log.info("removed %d Home Assistant config(s) of %s", len(messages), device_id)
    else:
        log.error("the broker did not acknowledge every removal of %s", device_id)
    return done
