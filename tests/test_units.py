"""The pure parts: the payload grammar, topics.yaml validation, outputs on simulated pins, the mraa backend."""

from __future__ import annotations

import importlib
import json
import sys
import threading
from pathlib import Path

import pytest
from paho.mqtt.client import topic_matches_sub as topic_matches

from node import commands, config
from node.commands import CommandError
from node.config import BlinkPattern, ConfigError, OutputConfig
from node.outputs import Output
from node.pins import PinError
from node.pins.backends import make_factory
from node.pins.sim import Change, SimFactory
from node.topics import DeviceTopics, Layout

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = BlinkPattern(count=10, on_time=0.3, off_time=0.3)


# -- the payload grammar -------------------------------------------------------

@pytest.mark.parametrize("payload, state", [(b"ON", "ON"), (b" off\n", "OFF"), (b"Toggle", "TOGGLE")])
def test_plain_states_are_trimmed_and_case_insensitive(payload, state):
    assert commands.parse(payload, DEFAULT) == commands.Command(state=state)


def test_plain_blink_uses_the_outputs_default_pattern():
    assert commands.parse(b"blink", DEFAULT).blink == DEFAULT


def test_json_command_with_every_key():
    cmd = commands.parse(json.dumps({
        "state": "on", "effect": "BLINK", "count": 3, "on_time": 0.05, "id": 7, "expires": 2e9,
        "source": {"via": "x", "post": "1"}}).encode(), DEFAULT)
    assert cmd.state == "ON"
    assert cmd.blink == BlinkPattern(count=3, on_time=0.05, off_time=0.3)
    assert (cmd.id, cmd.expires, cmd.source) == ("7", 2e9, {"via": "x", "post": "1"})


@pytest.mark.parametrize("payload, error", [
    (b"", "empty payload"),
    (b"   ", "empty payload"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"\x00\x01\x02", "control characters"),
    (b"x" * 4097, "over the 4096-byte limit"),
    (b"DANCE", "unknown command 'DANCE'"),
    (b"{", "malformed JSON"),
    (b'{"state": "ON",}', "malformed JSON"),
    (b"[1, 2]", "must be an object"),
    (b"{}", 'needs "state", "effect" or "brightness"'),
    (b'{"state": "DIM"}', "state"),
    (b'{"effect": "strobe"}', "effect"),
    (b'{"effect": "blink", "count": 0}', "count"),
    (b'{"effect": "blink", "count": 1001}', "count"),
    (b'{"effect": "blink", "count": 2.5}', "count"),
    (b'{"effect": "blink", "on_time": 0.01}', "on_time"),
    (b'{"effect": "blink", "off_time": 61}', "off_time"),
    (b'{"state": "ON", "count": 3}', 'need "effect": "blink"'),
    (b'{"state": "ON", "colour": "red"}', "colour: unknown key"),
    (b'{"on": true}', "on: unknown key"),
    (b'{"state": "ON", "expires": "soon"}', "expires"),
    (b'{"state": "ON", "expires": NaN}', "NaN is not a JSON number"),
    (b'{"state": "ON", "expires": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"state": "ON", "expires": 1e999}', "number 1e999 is out of range"),
    (b'{"state": "ON", "expires": true}', "expires: expected a number"),
    (b'{"effect": "blink", "on_time": true}', "on_time: expected a number"),
    (b'{"effect": "blink", "count": true}', "count"),
    (b'{"state": "BAD", "state": "ON"}', "key 'state' is given more than once"),
    (b'{"state": "ON", "source": {"a": 1, "a": 2}}', "key 'a' is given more than once"),
    (b"[" * 999 + b"]" * 999, "JSON nested more than 8 levels deep"),
    (b'{"state": "ON", "source": ' + b"[" * 999 + b"]" * 999 + b"}", "nested more than"),
    ("o\ufb00".encode(), "unknown command 'oﬀ'"),  # a ligature: upper() makes it OFF
    ("bl\u0131nk".encode(), "ASCII words"),  # a dotless i: upper() makes it BLINK
    ("\u212aON".encode(), "ASCII words"),
    ('{"effect": "\u212a"}'.encode(), "effect: '\u212a' is not an ASCII word"),
    ('{"state": "o\ufb00"}'.encode(), "not an ASCII word"),
    (b'{"state": "ON", "id": "a\\u0000b"}', "id: has control characters"),
])
def test_bad_payloads_get_a_clear_error(payload, error):
    with pytest.raises(CommandError, match=error.replace("(", r"\(")):
        commands.parse(payload, DEFAULT)


def test_error_keeps_the_commands_id_for_the_result():
    with pytest.raises(CommandError) as info:
        commands.parse(b'{"id": "abc", "state": "MAYBE"}', DEFAULT)
    assert info.value.command_id == "abc"


def test_json_strings_do_not_count_towards_nesting():
    deep_text = json.dumps({"state": "ON", "id": "[{" * 60})
    assert commands.parse(deep_text.encode(), DEFAULT).id == "[{" * 60


# -- topics.yaml ---------------------------------------------------------------

def test_shipped_topics_yaml_describes_the_reference_device():
    cfg = config.load(ROOT / "topics.yaml")
    led = cfg.device("edison-1").outputs["led"]
    assert (led.pin, led.active_low, led.safe_state) == (20, False, "OFF")
    assert led.blink == BlinkPattern(count=10, on_time=0.3, off_time=0.3)


def test_yaml_1_1_booleans_stay_words():
    cfg = config.parse("devices:\n  d:\n    outputs:\n      led: {pin: 1, safe_state: ON}\n")
    assert cfg.devices["d"].outputs["led"].safe_state == "ON"


@pytest.mark.parametrize("text, message", [
    ("devices:\n  d:\n    outputs:\n      led: {pin: 1, colour: red}\n", "devices.d.outputs.led.colour: unknown key"),
    ("devices:\n  d:\n    outputs:\n      led: {pin: -1}\n",
     "devices.d.outputs.led.pin: expected a pin number (0 or more) or a line name (got -1)"),
    ("devices:\n  d:\n    outputs:\n      led: {pin: 1, blink: {count: 0}}\n", "devices.d.outputs.led.blink.count"),
    ("devices:\n  d:\n    outputs:\n      led: {pin: 1, safe_state: DIM}\n", "devices.d.outputs.led.safe_state"),
    ("devices:\n  d:\n    outputs:\n      a: {pin: 1}\n      b: {pin: 1}\n", "both use pin 1"),
    ("devices:\n  d/x:\n    outputs:\n      a: {pin: 1}\n", "devices.d/x"),
    ("devices: {}\n", "devices"),
    ("prefix: a/#\ndevices:\n  d:\n    outputs:\n      a: {pin: 1}\n", "prefix"),
    ("devices:\n  d:\n    outputs: {a: {pin: 1}}\naccess: {d: controller}\n", "is a device id"),
    ("devices: [\n", "not valid YAML"),
    ("- a\n", "expected a mapping"),
])
def test_bad_config_names_file_key_path_and_expectation(text, message):
    with pytest.raises(ConfigError) as info:
        config.parse(text, "site.yaml")
    assert str(info.value).startswith("site.yaml: ")
    assert message in str(info.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.yaml")


def test_topics_of_a_device():
    t = DeviceTopics("edison", "edison-1")
    assert t.set("led") == "edison/edison-1/led/set"
    assert t.output_of_set("edison/edison-1/led/set") == "led"
    for other in ("edison/edison-1/led/state", "edison/edison-2/led/set", "x/edison/edison-1/led/set",
                  "edison/edison-1//set", "edison/edison-1/led/set/x"):
        assert t.output_of_set(other) is None


def test_every_topic_the_device_uses_falls_under_its_own_rules():
    """The node's subscriptions and publishes, and the broker's rules for it, come from the same layout."""
    layout = Layout("site/a", "ha")
    t = layout.device("d1")
    assert t.subscriptions == ("site/a/d1/+/set", "ha/status")
    published = [t.status, t.result, t.state("led"), t.discovery("light", "led"), t.discovery("button", "led_blink")]
    assert all(topic_matches(t.everything, p) or topic_matches(t.discovery_filter, p) for p in published)
    assert topic_matches(layout.every_set, t.set("led")) and topic_matches(layout.every_result, t.result)
    assert not topic_matches(t.everything, layout.device("d2").status)


# -- outputs on simulated pins ---------------------------------------------------

def _output(factory: SimFactory, **cfg) -> tuple[Output, list]:
    levels: list[bool] = []
    out = Output("led", factory.pin(20), OutputConfig(pin=20, **cfg),
                 on_change=lambda o, changes: levels.extend([changes["state"] == "ON"] if "state" in changes else []))
    return out, levels


def test_toggle_and_set_drive_the_pin():
    factory = SimFactory()
    out, levels = _output(factory)
    assert out.set("TOGGLE") == "ON"
    assert out.set("ON") == "ON"
    assert out.set("TOGGLE") == "OFF"
    assert [c.value for c in factory.history] == [1, 0]
    assert levels == [True, False]


def test_active_low_inverts_levels_and_starts_in_safe_state():
    factory = SimFactory()
    out, _ = _output(factory, active_low=True)
    assert [c.value for c in factory.history] == [1]  # OFF on an active-low pin is high
    out.set("ON")
    assert factory.pin(20).value == 0


def _wait_blink_end(factory: SimFactory, changes: int) -> None:
    done = threading.Event()

    def count(change: Change) -> None:
        if len(factory.history) >= changes:
            done.set()

    factory._listeners.append(count)
    if len(factory.history) >= changes:
        done.set()
    assert done.wait(10), factory.history


def test_blink_pattern_then_restores_prior_state():
    factory = SimFactory()
    out, _ = _output(factory)
    out.set("ON")
    out.blink(BlinkPattern(count=2, on_time=0.05, off_time=0.05))
    _wait_blink_end(factory, 5)  # ON, (on) off on off, restore on
    assert [c.value for c in factory.history] == [1, 0, 1, 0, 1]
    assert out.state == "ON"


def test_a_failed_write_leaves_state_level_and_listener_untouched():
    factory = SimFactory()
    out, levels = _output(factory)
    factory.pin(20).fault = PinError("gone")
    with pytest.raises(PinError, match="gone"):
        out.set("ON")
    assert (out.state, out.level, levels) == ("OFF", "OFF", [])
    factory.pin(20).fault = None
    assert out.set("TOGGLE") == "ON"  # toggles from the state the pin really has


def test_each_change_records_the_command_that_caused_it(tmp_path):
    trace = tmp_path / "trace.jsonl"
    with open(trace, "a", encoding="utf-8") as f:
        factory = SimFactory(trace=f)
        out, _ = _output(factory, active_low=True)  # the safe state at start: no command
        out.set("ON", cause="c1")
        out.safe()
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [(c["value"], c.get("id")) for c in lines] == [(1, None), (0, "c1"), (1, None)]
    assert set(lines[1]) == {"t", "pin", "value", "id"}


def test_the_listener_is_called_without_the_lock_and_ends_on_the_newest_level():
    factory = SimFactory()
    reported: list[bool] = []

    def listener(output: Output, changes: dict[str, str]) -> None:
        assert output._lock.acquire(blocking=False), "listener called with the output's lock held"
        output._lock.release()
        if not reported:
            output.set("OFF")  # a change while the first report is under way: reported after it, in order
        reported.append(changes["state"] == "ON")

    out = Output("led", factory.pin(20), OutputConfig(pin=20), on_change=listener)
    out.set("ON")
    assert reported == [True, False] and out.level == "OFF"


def test_newer_command_cancels_blink_at_once():
    factory = SimFactory()
    out, _ = _output(factory)
    out.blink(BlinkPattern(count=100, on_time=30, off_time=30))
    _wait_blink_end(factory, 1)
    assert out.set("TOGGLE") == "ON"  # toggles the state (OFF), not the blink's level
    assert not out.blinking
    assert [c.value for c in factory.history] == [1]  # stayed high: no glitch, no later writes


# -- the mraa backend, against a stand-in with mraa's API -------------------------

@pytest.fixture
def standin_mraa(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "standins"))
    sys.modules.pop("mraa", None)
    mraa = importlib.import_module("mraa")
    mraa.writes.clear()
    yield mraa
    sys.modules.pop("mraa", None)


def test_mraa_backend_drives_gpio(standin_mraa):
    factory = make_factory("mraa")
    pin = factory.pin(20)
    pin.write(1)
    pin.write(0)
    assert standin_mraa.writes == [(20, 1), (20, 0)]


def test_mraa_refusing_a_pin_is_a_clear_start_error(standin_mraa):
    with pytest.raises(PinError, match="mraa refused GPIO pin 99: Invalid GPIO pin specified"):
        make_factory("mraa").pin(99)


def test_mraa_write_error_is_raised(standin_mraa, monkeypatch):
    pin = make_factory("mraa").pin(20)
    monkeypatch.setattr(standin_mraa.Gpio, "write", lambda self, v: standin_mraa.ERROR_INVALID_HANDLE)
    with pytest.raises(PinError, match="mraa result 5"):
        pin.write(1)


def test_importing_node_needs_neither_mraa_nor_amqtt():
    import subprocess
    code = ("import sys; sys.modules['mraa'] = None; sys.modules['gpiod'] = None; sys.modules['amqtt'] = None\n"
            "import node, node.__main__, node.service, node.pins.backends, node.config, node.mqtt")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
