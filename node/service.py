"""The node: MQTT commands in, pin changes and results out.

Every `/set` message ends in exactly one result on `<device>/result` (and on
the MQTT 5 response topic when the request names one), whether it was carried
out or refused, so a sender always learns what became of its command.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from node import commands
from node.commands import Command, CommandError
from node.config import BlinkPattern, DeviceConfig
from node.mqtt import Link, LinkSettings, Message
from node.outputs import Output, state_name
from node.pins import PinFactory
from node.topics import DeviceTopics

log = logging.getLogger(__name__)


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
    def __init__(self, device_id: str, device: DeviceConfig, prefix: str, pins: PinFactory, link: LinkSettings) -> None:
        self.device_id = device_id
        self.topics = DeviceTopics(prefix, device_id)
        self.outputs = {
            name: Output(name, pins.pin(cfg.pin), cfg, on_level=self._publish_level)
            for name, cfg in device.outputs.items()
        }
        self.link = Link(
            link,
            client_id=device_id,
            subscriptions=[self.topics.set_filter],
            on_message=self._on_message,
            on_connect=self._on_connect,
            birth=Message(self.topics.status, "online", retain=True),
            will=Message(self.topics.status, "offline", retain=True),
        )

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        """Safe state, `offline`, clean disconnect; bounded so the process exits within 2 s."""
        for output in self.outputs.values():
            output.safe()
        flushed = self.link.stop([Message(self.topics.status, "offline", retain=True)], timeout=1.0)
        if not flushed:
            log.warning("broker did not acknowledge every final message before disconnect")

    # -- callbacks (paho's network thread) ------------------------------

    def _on_connect(self, session_present: bool) -> None:
        for output in self.outputs.values():
            self.link.publish(self.topics.state(output.name), output.level, retain=True)

    def _publish_level(self, output: Output, on: bool) -> None:
        self.link.publish(self.topics.state(output.name), state_name(on), retain=True)

    def _on_message(self, msg: paho.MQTTMessage) -> None:
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
