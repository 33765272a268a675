"""What the node decides, in memory: refuse, apply, reply, answer a repeat, expire, announce (no broker, no process).

The real-broker tests in test_process.py check the contract between processes;
these check every decision of the Node through its MQTT link (testkit.fakelink)
and its pins (simulated), fast enough to cover each case.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.journal import Journal
from node.link import Message
from node.pins import PinError
from tests.node.hass import ha_turn_on
from tests.node.rig import DEVICE, TOPICS, Rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "state")
    yield r
    r.close()


def wait_levels(rig: Rig, count: int, pin: int = 20) -> list[int]:
    """The pin's levels once it has changed `count` times (blinks run on their own thread)."""
    rig.link.wait_for(TOPICS.state("led" if pin == 20 else "relay"), count + 1)  # +1: the state sent on connect
    return rig.levels(pin)


# -- apply and reply ----------------------------------------------------------------

@pytest.mark.parametrize("payload, levels, state", [
    ("ON", [1], "ON"),
    ("  toggle \n", [1], "ON"),
    ('{"state": "ON"}', [1], "ON"),
    ('{"state": "TOGGLE"}', [1], "ON"),
    ("OFF", [], "OFF"),
])
def test_state_commands_move_the_pin_and_answer(rig, payload, levels, state):
    result = rig.send(payload)
    assert result["ok"] is True and result["state"] == state and result["output"] == "led"
    assert rig.levels() == levels
    assert rig.states() == ["OFF", *(["ON"] if levels else [])]  # the connect's state, then the change
    assert all(m.retain for m in rig.link.on(TOPICS.state("led")))


def test_every_command_gets_its_own_generated_id(rig):
    ids = {rig.send(payload)["id"] for payload in ("ON", "OFF", "TOGGLE")}
    assert len(ids) == 3


def test_active_low_output_inverts_the_pin(rig):
    assert rig.send("ON", output="relay")["state"] == "ON"
    assert rig.levels(21) == [1, 0]  # safe state OFF is high at start; ON drives it low


def test_blink_runs_the_default_pattern_and_restores_the_state(rig, logs):
    result = rig.send('{"effect": "blink", "id": "b1"}')
    assert result == {"id": "b1", "output": "led", "ok": True, "state": "OFF", "effect": "blink"}
    assert wait_levels(rig, 4) == [1, 0, 1, 0]  # count 2
    assert {c.id for c in rig.changes()} == {"b1"}  # every change of the blink carries its command's id
    logs.wait_for(r"command b1 started: blink 2 x \(0.02 s on, 0.02 s off\), then OFF")  # answered as it starts
    logs.wait_for(r"led: blink of command b1 ended")
    rig.send('{"state": "ON", "id": "on1"}')
    logs.wait_for(r"command on1 done: ON")


def test_state_and_blink_together_blink_then_stay_on(rig):
    rig.send('{"state": "ON", "effect": "blink", "count": 1, "on_time": 0.02, "off_time": 0.02}')
    assert wait_levels(rig, 3) == [1, 0, 1]


def test_a_newer_command_cancels_the_blink(rig):
    rig.send('{"effect": "blink", "count": 1000, "on_time": 0.05, "off_time": 0.05}')
    wait_levels(rig, 1)
    assert rig.send("OFF")["state"] == "OFF"
    assert not rig.node.outputs["led"].blinking
    assert rig.pins.pin(20).value == 0


# -- refuse ---------------------------------------------------------------------------

@pytest.mark.parametrize("payload, error", [
    (b"", "empty payload"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
    (b"ON" * 3000, "over the 4096-byte limit"),
    (b'{"state": "ON"', "malformed JSON"),
    (b"DANCE", "unknown command"),
    ("o\ufb00".encode(), "ASCII"),
    (b'{"effect": "blink", "count": 5000}', "count"),
    (b'{"effect": "blink", "on_time": true}', "on_time"),
    (b'{"state": "ON", "expires": NaN}', "NaN is not a JSON number"),
    (b'{"state": "OFF", "state": "ON"}', "given more than once"),
    (b"[" * 999 + b"]" * 999, "nested more than"),
    (b'{"state": "ON", "colour": "red"}', "unknown key"),
])
def test_bad_input_gets_an_error_result_and_no_pin_change(rig, logs, payload, error):
    result = rig.send(payload)
    assert result["ok"] is False and error in result["error"] and "state" not in result
    assert rig.levels() == []
    logs.wait_for(r"refused")
    assert rig.send('{"state": "ON", "id": "after"}')["ok"]  # still serving


def test_a_refused_command_keeps_its_id(rig):
    assert rig.send(b'{"id": "abc", "state": "MAYBE"}')["id"] == "abc"


def test_unknown_output_is_refused(rig):
    link, before = rig.link, len(rig.pins.history)
    link.deliver(f"edison/{DEVICE}/lamp/set", '{"state": "ON", "id": "u"}')
    result = json.loads(link.on(TOPICS.result)[-1].payload)
    assert result["ok"] is False and "unknown output 'lamp'" in result["error"] and result["id"] == "u"
    assert len(rig.pins.history) == before


def test_expired_command_is_refused(rig):
    result = rig.send(json.dumps({"state": "ON", "id": "old", "expires": time.time() - 5}))
    assert result["ok"] is False and "expired" in result["error"]
    assert rig.send(json.dumps({"state": "ON", "id": "new", "expires": time.time() + 60}))["ok"]
    assert rig.levels() == [1]


def test_command_queued_longer_than_max_age_is_refused(rig):
    rig.link.drop()
    rig.link.connect(session_present=True, backlog_age=61)  # relay: max_age 60
    assert "longer than max_age 60 s" in rig.send("ON", output="relay")["error"]
    assert rig.send("ON")["ok"]  # led: max_age 300


def test_retained_set_is_never_acted_on(rig, logs):
    """A retained command would be replayed at every reconnect ("ghost switching")."""
    result = rig.send("ON", retain=True)
    assert result["ok"] is False and "retained" in result["error"]
    assert rig.levels() == []
    logs.wait_for(r"retained /set")


# -- replies -----------------------------------------------------------------------

def test_mqtt5_response_topic_gets_the_result_with_the_correlation_data(rig):
    rig.link.deliver(TOPICS.set("led"), "ON", response_topic="edison/edison-t/reply/me", correlation_data=b"corr-42")
    reply = rig.link.on("edison/edison-t/reply/me")
    assert len(reply) == 1 and reply[0].correlation_data == b"corr-42"
    assert json.loads(reply[0].payload) == {"id": "corr-42", "output": "led", "ok": True, "state": "ON"}
    assert rig.link.on(TOPICS.result)[-1].payload == reply[0].payload


@pytest.mark.parametrize("topic", ["edison/edison-t/status", "edison/edison-t/result", "edison/edison-t/led/state",
                                   "edison/edison-t/button/event", "homeassistant/switch/edison-t/ghost/config"])
def test_a_reply_never_goes_to_one_of_the_devices_own_topics(rig, logs, topic):
    """Whoever may command the device could otherwise make it say it is offline, that a button was pressed, or
    announce an output it does not have: the result goes to the result topic only, and the log says why."""
    before = len(rig.link.on(topic))
    rig.link.deliver(TOPICS.set("led"), '{"state": "ON", "id": "spoof-1"}', response_topic=topic)
    logs.wait_for(r"response topic .* is one of the device's own topics")
    assert json.loads(rig.link.on(TOPICS.result)[-1].payload)["id"] == "spoof-1"
    sent = [m for m in rig.link.on(topic)[before:] if b"spoof-1" in m.payload]
    assert len(sent) == (1 if topic == TOPICS.result else 0)  # the result itself, once


def test_on_mqtt_3_1_1_there_is_no_response_topic(tmp_path):
    rig = Rig(tmp_path / "state", mqtt5=False)
    try:
        rig.link.deliver(TOPICS.set("led"), "ON", response_topic="edison/edison-t/reply/me", correlation_data=b"c")
        assert rig.link.on("edison/edison-t/reply/me") == []
        assert json.loads(rig.link.on(TOPICS.result)[-1].payload)["ok"] is True
    finally:
        rig.close()


# -- exactly once ------------------------------------------------------------------

def test_a_repeated_id_is_answered_with_the_first_result_and_not_carried_out(rig, logs):
    first = rig.send('{"state": "TOGGLE", "id": "t1"}')
    again = rig.send('{"state": "TOGGLE", "id": "t1"}', dup=True)
    assert again == {**first, "repeat": True}
    assert rig.levels() == [1]
    logs.wait_for(r"command t1 is a repeat")
    assert rig.send('{"state": "TOGGLE", "id": "t2"}')["state"] == "OFF"  # another id is another command


def test_a_repeated_blink_does_not_blink_again(rig, monkeypatch):
    rig.send('{"effect": "blink", "id": "b"}')
    wait_levels(rig, 4)
    started: list[str | None] = []
    monkeypatch.setattr(rig.node.outputs["led"], "blink", lambda pattern, cause=None: started.append(cause))
    assert rig.send('{"effect": "blink", "id": "b"}')["repeat"] is True
    assert started == []
    rig.send('{"effect": "blink", "id": "c"}')
    assert started == ["c"]


def test_ids_survive_a_restart_of_the_node(tmp_path):
    first = Rig(tmp_path / "state")
    result = first.send('{"state": "TOGGLE", "id": "t1"}')
    first.close()
    second = Rig(tmp_path / "state")
    try:
        assert second.send('{"state": "TOGGLE", "id": "t1"}') == {**result, "repeat": True}
        assert second.levels() == []
    finally:
        second.close()


def test_a_command_cut_short_by_a_restart_is_answered_with_an_error_not_repeated(tmp_path):
    journal = Journal(tmp_path / "state")
    journal.start("t1")  # on disk before the effect; the node died before recording the result
    journal.close()
    rig = Rig(tmp_path / "state")
    try:
        result = rig.send('{"state": "TOGGLE", "id": "t1"}')
        assert result["ok"] is False and result["repeat"] is True
        assert result["error"] == "interrupted by a restart of the node: not repeated, state may be partial"
        assert rig.send('{"state": "TOGGLE", "id": "t1"}') == result  # and so on every time
        assert rig.levels() == []
    finally:
        rig.close()


def test_a_command_that_cannot_be_recorded_is_not_carried_out(rig, monkeypatch):
    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("node.journal.os.fsync", disk_full)
    result = rig.send('{"state": "ON", "id": "t1"}')
    assert result["ok"] is False and "cannot record the command" in result["error"]
    assert rig.levels() == []
    monkeypatch.undo()
    assert rig.send('{"state": "ON", "id": "t1"}')["ok"] is True  # not a repeat: it never took effect


def test_a_redelivered_command_without_id_says_an_id_makes_it_safe(rig, logs):
    rig.send("TOGGLE", dup=True)
    logs.wait_for(r"WARNING .*came again \(DUP\) without an id.*give commands an id")


# -- pin failures ----------------------------------------------------------------------

def test_a_failing_pin_write_gives_an_error_result_and_keeps_the_state(rig):
    rig.pins.pin(20).fault = PinError("mraa could not write 1 on GPIO pin 20 (mraa result 5)")
    result = rig.send('{"state": "ON", "id": "w"}')
    assert result["ok"] is False and "mraa result 5" in result["error"]
    assert rig.node.outputs["led"].state == "OFF" and rig.states() == ["OFF"]
    rig.pins.pin(20).fault = None
    assert rig.send('{"state": "ON", "id": "w"}')["repeat"] is True  # answered as it was, never carried out
    assert rig.send("ON")["state"] == "ON"


def test_any_exception_from_the_pin_becomes_an_error_result(rig):
    rig.pins.pin(20).fault = OSError(errno.EIO, "I/O error")
    result = rig.send("ON")
    assert result["ok"] is False and "writing GPIO pin 20 failed" in result["error"]


def test_a_blink_that_fails_is_logged_and_the_output_keeps_serving(rig, logs):
    rig.pins.pin(20).fault = PinError("GPIO pin 20 is gone")
    assert rig.send('{"effect": "blink", "id": "b"}')["ok"] is True  # the pattern starts in the background
    logs.wait_for(r"ERROR blink of led \(command b\) stopped by an error")
    rig.pins.pin(20).fault = None
    assert rig.send("ON")["state"] == "ON"


# -- connect, Home Assistant, stop -----------------------------------------------------

def test_connect_announces_online_discovery_and_states(rig):
    topics = [m.topic for m in rig.link.published]
    assert topics[0] == TOPICS.status and rig.link.published[0].payload == b"online"
    assert "homeassistant/light/edison-t/led/config" in topics
    assert rig.states() == ["OFF"] and rig.states("relay") == ["OFF"]
    assert rig.link.session.subscriptions == ("edison/edison-t/+/set", "homeassistant/status")
    assert rig.link.session.will == Message(TOPICS.status, b"offline", retain=True)


def test_home_assistant_online_brings_discovery_and_states_again(rig, logs):
    rig.send("ON")
    before = len(rig.link.published)
    rig.link.deliver("homeassistant/status", "online")
    rig.link.wait_for(TOPICS.state("relay"), 2)  # the last thing an announcement sends
    again = rig.link.published[before:]
    assert again[0] == Message(TOPICS.status, b"online", retain=True)
    assert {m.topic for m in again} >= {"homeassistant/light/edison-t/led/config",
                                        "homeassistant/button/edison-t/relay_blink/config"}
    assert rig.states()[-1] == "ON"


def test_home_assistant_offline_changes_nothing(rig, logs):
    before = len(rig.link.published)
    rig.link.deliver("homeassistant/status", "offline")
    logs.wait_for(r"Home Assistant status 'offline'.*nothing to do")
    assert len(rig.link.published) == before


def test_stop_goes_to_the_safe_state_and_offline_is_the_last_word(tmp_path):
    rig = Rig(tmp_path / "state")
    rig.send('{"effect": "blink", "count": 1000, "on_time": 0.05, "off_time": 0.05}')
    wait_levels(rig, 1)
    rig.close()
    assert rig.pins.pin(20).value == 0 and rig.pins.pin(21).value == 1  # OFF; the relay is active-low
    assert rig.link.published[-1] == Message(TOPICS.status, b"offline", retain=True)
    assert rig.link.stopped



def test_turn_on_with_the_blink_effect_from_home_assistant_blinks_then_stays_on(rig):
    light = json.loads(rig.link.on("homeassistant/light/edison-t/led/config")[-1].payload)
    for topic, payload in ha_turn_on(light, "blink"):  # what Home Assistant publishes, in its order
        rig.link.deliver(topic, payload)
    assert wait_levels(rig, 5) == [1, 0, 1, 0, 1]
    assert rig.node.outputs["led"].state == "ON"


# -- brightness and inputs ------------------------------------------------------------

@pytest.fixture
def dimmer(tmp_path: Path) -> Iterator[Rig]:
    from tests.node.rig import DIMMER_YAML

    r = Rig(tmp_path / "state", topics_yaml=DIMMER_YAML)
    yield r
    r.close()


def wait_duty(rig: Rig, duty: float, pin: int = 20) -> None:
    reached = threading.Event()
    rig.pins._listeners.append(lambda change: reached.set() if (change.pin, change.duty) == (pin, duty) else None)
    if rig.pins.pin(pin).duty != duty:  # type: ignore[attr-defined]
        assert reached.wait(10), rig.duties(pin)


def payloads(rig: Rig, topic: str) -> list[str]:
    return [m.payload.decode() for m in rig.link.on(topic)]


def test_brightness_sets_the_duty_and_is_reported_and_on_restores_it(dimmer):
    result = dimmer.send('{"brightness": 51, "id": "b1"}')
    assert result == {"id": "b1", "output": "led", "ok": True, "state": "ON", "brightness": 51}
    assert dimmer.duties() == [0.2] and {c.id for c in dimmer.changes()} == {"b1"}
    assert payloads(dimmer, TOPICS.brightness("led")) == ["255", "51"]  # at connect, then the change
    assert all(m.retain for m in dimmer.link.on(TOPICS.brightness("led")))
    assert dimmer.send("OFF")["brightness"] == 51  # kept while OFF
    assert dimmer.send("ON")["state"] == "ON"
    assert dimmer.duties() == [0.2, 0.0, 0.2]
    assert dimmer.send('{"brightness": 0}')["state"] == "OFF" and dimmer.duties()[-1] == 0.0
    assert dimmer.states() == ["OFF", "ON", "OFF", "ON", "OFF"]


def test_a_transition_reaches_its_target_and_off_cancels_it(dimmer):
    dimmer.send('{"state": "ON", "brightness": 200, "transition": 0.1, "id": "t1"}')
    dimmer.link.wait_for(TOPICS.state("led"), 2)  # ON once the fade has begun
    wait_duty(dimmer, round(200 / 255, 4))  # the fade runs on its own thread: its last step
    steps = dimmer.duties()
    assert steps == sorted(steps) and len(steps) > 2  # upwards, in steps
    dimmer.send('{"state": "OFF", "transition": 30, "id": "t2"}')
    dimmer.link.wait_for(TOPICS.state("led"), 2)
    assert dimmer.node.outputs["led"].changing
    result = dimmer.send("OFF")
    assert result["state"] == "OFF" and not dimmer.node.outputs["led"].changing
    assert dimmer.duties()[-1] == 0.0


def test_a_blink_blinks_at_the_brightness_and_its_effect_is_reported(dimmer):
    dimmer.send('{"brightness": 102}')
    dimmer.send('{"effect": "blink", "id": "e1"}')
    dimmer.link.wait_for(TOPICS.effect("led"), 3)  # off at connect, blink, off at the end
    assert payloads(dimmer, TOPICS.effect("led")) == ["off", "blink", "off"]
    assert set(dimmer.duties()[1:]) == {0.4, 0.0} and dimmer.duties()[-1] == 0.4  # back to the state: ON at 102


@pytest.mark.parametrize("payload, error", [
    ('{"brightness": 300}', "brightness: expected from 0 to 255 (got 300)"),
    ('{"state": "ON", "transition": -1}', "transition: expected from 0 to 3600 (got -1)"),
    ('{"effect": "blink", "transition": 2}', 'transition needs "state" or "brightness" (what to fade to)'),
])
def test_bad_brightness_values_are_refused(dimmer, payload, error):
    result = dimmer.send(payload)
    assert result["ok"] is False and result["error"] == error and dimmer.changes() == []


def test_brightness_on_a_gpio_output_is_refused(dimmer):
    result = dimmer.send('{"brightness": 10}', output="relay")
    assert result["ok"] is False and "has no brightness: it is on a GPIO pin" in result["error"]
    assert dimmer.changes(21) == []


def test_inputs_publish_state_at_connect_and_events_on_a_press(dimmer):
    assert payloads(dimmer, TOPICS.state("button")) == ["OFF"] and payloads(dimmer, TOPICS.state("door")) == ["OFF"]
    button = dimmer.pins.input(36, "up")
    button.drive(0)
    dimmer.link.wait_for(TOPICS.state("button"), 2)
    button.drive(1)
    event = json.loads(dimmer.link.wait_for(TOPICS.event("button"))[0].payload)
    assert event["event_type"] == "press" and len(event["id"]) == 12
    assert payloads(dimmer, TOPICS.state("button")) == ["OFF", "ON", "OFF"]
    assert not dimmer.link.on(TOPICS.event("button"))[0].retain
    dimmer.pins.input(37, "down").drive(1)
    assert payloads(dimmer, TOPICS.state("door"))[-1] == "OFF"  # not yet: debounced
    dimmer.link.wait_for(TOPICS.state("door"), 2)
    assert dimmer.link.on(TOPICS.event("door")) == []  # a binary sensor has no events
    dimmer.link.drop()
    dimmer.link.connect(session_present=True)
    assert payloads(dimmer, TOPICS.state("door"))[-1] == "ON"  # right after a reconnect
