"""The node: MQTT commands in, pin changes and results out.

Every `/set` message ends in exactly one result on `<device>/result` (and on
the MQTT 5 response topic when the request names one), whether it was carried
out, repeated or refused: `_on_set` publishes what `_answer` returns, and
`_answer` turns every failure into an error result instead of raising. A
command with an id takes effect at most once (see node.journal). The node
depends on node.link's Link, so its decisions can be tested in memory.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from node import commands, homeassistant
from node.commands import Command, CommandError
from node.config import BlinkPattern, DeviceConfig, OutputConfig
from node.inputs import Input, InputWatcher
from node.journal import Entry, Journal, JournalError
from node.link import Incoming, Link, Message, Session
from node.outputs import Output
from node.pins import Pin, PinError, PinFactory, PwmChannel
from node.topics import DeviceTopics

log = logging.getLogger(__name__)

# Seconds to wait before answering Home Assistant's `online`, drawn at random so a fleet does not answer at once.
ANNOUNCE_DELAY = (0.2, 2.0)
INTERRUPTED = "interrupted by a restart of the node: not repeated, state may be partial"


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


def _describe(command: Command, result: dict[str, Any]) -> str:
    done = str(result["state"])
    if "brightness" in result and (command.brightness is not None or command.transition is not None):
        done += f" at brightness {result['brightness']}"
    if command.transition:
        done += f" over {command.transition:g} s"
    if command.blink is None:
        return done
    p = command.blink
    return f"blink {p.count} x ({p.on_time:g} s on, {p.off_time:g} s off), then {done}"


@contextmanager
def _at(key_path: str) -> Iterator[None]:
    """A pin that cannot be set up is refused at start with the key path of its entry in topics.yaml."""
    try:
        yield
    except PinError as exc:
        raise PinError(f"{key_path}: {exc}") from exc


def _output_pin(pins: PinFactory, cfg: OutputConfig) -> Pin:
    if not cfg.pwm:
        return pins.pin(cfg.pin, cfg.active_low)
    if cfg.pwm_chip is None or cfg.pwm_channel is None:
        return pins.pwm(cfg.pin, cfg.pwm_period)
    return pins.pwm(cfg.pin, cfg.pwm_period, PwmChannel(cfg.pwm_chip, cfg.pwm_channel))


class Node:
    def __init__(self, topics: DeviceTopics, device: DeviceConfig, pins: PinFactory, link: Link, journal: Journal,
                 announce_delay: tuple[float, float] = ANNOUNCE_DELAY) -> None:
        self.topics = topics
        self.device = device
        self.link = link
        self.journal = journal
        self._announce_delay = announce_delay
        self._announce_timer: threading.Timer | None = None
        self._announcing = 0  # announcements publishing right now
        self._announce_changed = threading.Condition()
        self._stopping = False
        self.outputs: dict[str, Output] = {}
        for name, cfg in device.outputs.items():
            with _at(f"devices.{topics.device}.outputs.{name}"):
                self.outputs[name] = Output(name, _output_pin(pins, cfg), cfg, on_change=self._publish_output)
        self.inputs = self._watch_inputs(pins)

    def _watch_inputs(self, pins: PinFactory) -> InputWatcher:
        lines = {}
        for name, cfg in self.device.inputs.items():
            with _at(f"devices.{self.topics.device}.inputs.{name}"):
                lines[name] = (cfg, pins.input(cfg.pin, cfg.pull, cfg.active_low, cfg.debounce))
        return InputWatcher(lines, on_state=self._publish_input, on_event=self._publish_event)

    def start(self) -> None:
        status = self.topics.status
        self.link.start(Session(
            subscriptions=self.topics.subscriptions,
            on_message=self._on_message,
            on_connect=self._on_connect,
            birth=Message(status, b"online", retain=True),
            will=Message(status, b"offline", retain=True),
        ))
        self.inputs.start()

    def stop(self) -> None:
        """Safe state, `offline`, clean disconnect; bounded so the process exits within 2 s."""
        self.inputs.stop()
        self._stop_announcing()
        for output in self.outputs.values():
            try:
                output.safe()
            except PinError as exc:
                log.error("%s could not go to its safe state: %s", output.name, exc)
        if not self.link.stop([Message(self.topics.status, b"offline", retain=True)], timeout=1.0):
            log.warning("broker did not acknowledge every final message before disconnect")

    # -- callbacks (the link's network thread) ----------------------------

    def _on_connect(self, session_present: bool) -> None:
        self._announce_all()

    def _announce_all(self) -> None:
        """Discovery and the state of every output: what a broker without persistence has forgotten."""
        for message in homeassistant.announce(self.topics, self.device):
            self.link.publish(message)
        for output in self.outputs.values():
            output.report()
        for item in self.inputs.inputs.values():
            self._publish_input(item)

    def _publish_output(self, output: Output, changes: dict[str, str]) -> None:
        topics = {"state": self.topics.state, "brightness": self.topics.brightness, "effect": self.topics.effect}
        for field, value in changes.items():
            self.link.publish(Message(topics[field](output.name), value.encode(), retain=True))

    def _publish_input(self, item: Input) -> None:
        self.link.publish(Message(self.topics.state(item.name), item.state.encode(), retain=True))

    def _publish_event(self, item: Input, event_type: str) -> None:
        payload = json.dumps({"event_type": event_type, "id": uuid.uuid4().hex[:12]}, separators=(",", ":"))
        self.link.publish(Message(self.topics.event(item.name), payload.encode()))

    def _on_message(self, message: Incoming) -> None:
        if message.topic == self.topics.ha_status:
            self._on_ha_status(message.payload)
            return
        name = self.topics.output_of_set(message.topic)
        if name is None:
            log.warning("message on unexpected topic %s ignored", message.topic)
            return
        self._on_set(message, name)

    # -- commands ---------------------------------------------------------

    def _on_set(self, message: Incoming, name: str) -> None:
        """The one way from a `/set` message to its result: `_answer` never raises, so there is always one."""
        payload = json.dumps(self._answer(message, name), separators=(",", ":")).encode()
        self.link.publish(Message(self.topics.result, payload))
        if message.response_topic and self.topics.own(message.response_topic):
            log.warning("%s: response topic %r is one of the device's own topics: the result went to %s only",
                        message.topic, message.response_topic[:200], self.topics.result)
        elif message.response_topic:
            self.link.publish(Message(message.response_topic, payload, correlation_data=message.correlation_data))

    def _answer(self, message: Incoming, name: str) -> dict[str, Any]:
        """The result for `message`: carried out, a repeat, or an error; every failure becomes an error result."""
        correlation = message.correlation_data
        head: dict[str, Any] = {"id": _correlation_text(correlation) if correlation else uuid.uuid4().hex[:12],
                                "output": name}
        started: str | None = None  # the journal's id once the command is recorded as started
        try:
            output = self.outputs.get(name)
            command = commands.parse(message.payload, output.config.blink if output else BlinkPattern())
            head["id"] = command.id or head["id"]
            output = self._admit(message, output, name)
            if command.id is not None:
                known = self.journal.get(command.id)
                if known is not None:
                    return self._repeat(message, head, known)
            self._check_age(command, output)
            if command.id is not None:
                self.journal.start(command.id)  # on disk before the effect: never carried out twice
                started = command.id
            result = {**head, **self._apply(command, output, head["id"])}
            self._log_done(message, command, result, output.changing)
        except (CommandError, Refused) as exc:
            if isinstance(exc, CommandError) and exc.command_id:
                head["id"] = exc.command_id
            log.warning("%s: command %s refused: %s", message.topic, head["id"], exc)
            result = {**head, "ok": False, "error": str(exc)}
        except (PinError, JournalError) as exc:
            log.error("%s: command %s failed: %s", message.topic, head["id"], exc)
            result = {**head, "ok": False, "error": str(exc)}
        except Exception as exc:  # a bug: still one answer, and the log has the traceback
            log.exception("%s: command %s failed", message.topic, head["id"])
            result = {**head, "ok": False, "error": f"internal error ({type(exc).__name__}): see the node's log"}
        if started is not None:
            self.journal.finish(started, result)
        return result

    def _admit(self, message: Incoming, output: Output | None, name: str) -> Output:
        """The output a well-formed command may act on, or Refused."""
        if message.retain:
            raise Refused("retained /set messages are never acted on (publish commands without the retain flag)")
        if output is None:
            raise Refused(f"unknown output {name!r} (device {self.topics.device} has {', '.join(self.outputs)})")
        return output

    def _repeat(self, message: Incoming, head: dict[str, Any], known: Entry) -> dict[str, Any]:
        """A command id seen before: its result again, never its effect."""
        if known.result is None:
            log.warning("%s: command %s was %s", message.topic, head["id"], INTERRUPTED)
            result = {**head, "ok": False, "error": INTERRUPTED}
            self.journal.finish(head["id"], result)
        else:
            log.info("%s: command %s is a repeat: answered with its result, not carried out again", message.topic,
                     head["id"])
            result = json.loads(known.result)
        return {**result, "repeat": True}

    def _check_age(self, command: Command, output: Output) -> None:
        now = time.time()
        if command.expires is not None and command.expires < now:
            raise Refused(f"expired {now - command.expires:.1f} s ago (expires {command.expires})")
        waited = self.link.backlog_age()
        max_age = output.config.max_age
        if waited is not None and max_age is not None and waited > max_age:
            raise Refused(f"queued while the node was offline for {waited:.0f} s, longer than max_age {max_age:g} s")

    def _apply(self, command: Command, output: Output, cause: str) -> dict[str, Any]:
        dims = command.brightness is not None or command.transition is not None
        if dims and not output.config.pwm:
            raise Refused(f"output {output.name!r} has no brightness: it is on a GPIO pin (set pwm: true in "
                          "topics.yaml for a PWM pin)")
        if command.state or command.brightness is not None:
            output.set(command.state, cause, command.brightness, command.transition)
        result: dict[str, Any] = {"ok": True, "state": output.state}
        if output.config.pwm:
            result["brightness"] = output.brightness
        if command.blink:
            output.blink(command.blink, cause)
            result["effect"] = "blink"
        return result

    def _log_done(self, message: Incoming, command: Command, result: dict[str, Any], changing: bool) -> None:
        source = f" (from {json.dumps(command.source)})" if command.source else ""
        verb = "started" if changing else "done"  # a blink or a fade is answered as it starts; its end is logged
        if message.dup and command.id is None:
            log.warning("%s: command %s %s: %s%s; it came again (DUP) without an id, so it may have been carried "
                        "out before: give commands an id to make resending safe", message.topic, result["id"], verb,
                        _describe(command, result), source)
        else:
            log.info("%s: command %s %s: %s%s", message.topic, result["id"], verb, _describe(command, result), source)

    # -- Home Assistant -----------------------------------------------------

    def _on_ha_status(self, payload: bytes) -> None:
        """Home Assistant restarted (`online`): announce again, after a random delay, off the network thread."""
        status = payload.decode("utf-8", "replace").strip()
        if status != "online":
            log.info("Home Assistant status %r on %s: nothing to do", status[:40], self.topics.ha_status)
            return
        delay = random.uniform(*self._announce_delay)
        log.info("Home Assistant is online: announcing discovery, availability and state in %.1f s", delay)
        timer = threading.Timer(delay, self._announce)
        timer.daemon = True
        with self._announce_changed:
            if self._stopping:
                return
            if self._announce_timer is not None:
                self._announce_timer.cancel()  # one answer to a burst of `online`
            self._announce_timer = timer
        timer.start()

    def _announce(self) -> None:
        """What a reconnect sends: `online`, then discovery and every output's state; never after stop()."""
        with self._announce_changed:
            if self._stopping:
                return
            self._announcing += 1
        try:
            self.link.publish(Message(self.topics.status, b"online", retain=True))
            self._announce_all()
        finally:
            with self._announce_changed:
                self._announcing -= 1
                self._announce_changed.notify_all()

    def _stop_announcing(self) -> None:
        """After this no `online` can follow, so the `offline` of stop() is the last word."""
        with self._announce_changed:
            self._stopping = True
            if self._announce_timer is not None:
                self._announce_timer.cancel()
            self._announce_changed.wait_for(lambda: not self._announcing, timeout=1.0)


def forget(topics: DeviceTopics, device: DeviceConfig, link: Link, timeout: float = 10.0) -> bool:
    """Remove the device's entities from Home Assistant: publish empty retained configs, then disconnect.

    `link` must be a client of its own with a session that ends with it (MqttLink
    with persistent=False and another client id), so a running node keeps its
    connection and the commands the broker holds for it.
    """
    messages = homeassistant.forget(topics, device)
    connected = threading.Event()
    link.start(Session(on_connect=lambda session_present: connected.set()))
    if not connected.wait(timeout):
        log.error("could not connect to the broker within %.0f s: nothing removed", timeout)
        link.stop(timeout=0)
        return False
    done = link.stop(messages, timeout=timeout)
    if done:
        log.info("removed %d Home Assistant config(s) of %s", len(messages), topics.device)
    else:
        log.error("the broker did not acknowledge every removal of %s", topics.device)
    return done
