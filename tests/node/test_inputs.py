"""Inputs and PWM below the node: the press decisions on a given clock, the watcher on simulated pins and on mraa's
documented API (interrupts, and polling where a platform has none), simulated-input lines, topics.yaml rules."""

from __future__ import annotations

import logging
import os
import queue
import threading

import pytest

from node import config
from node.config import ConfigError, InputConfig
from node.inputs import Input, InputWatcher, Press
from node.pins import PinError
from node.pins.backends import make_factory
from node.pins.sim import SimFactory, follow, open_inputs

BUTTON = InputConfig(pin=36, component="event", debounce=0.05, double_press=0.4, long_press=1.0)
UP, DOWN = 1, 0  # a button to ground with pull up: pressed reads low


def run(press: Press, edges: list[tuple[float, int]], until: float) -> list[tuple[float, str]]:
    """Feed `(time, level)` edges and advance the clock to each edge and deadline up to `until`: what happened when."""
    happened: list[tuple[float, str]] = []
    pending = sorted(edges)
    now = 0.0
    while True:
        deadline = press.deadline()
        upcoming = [t for t in ([pending[0][0]] if pending else []) + ([deadline] if deadline is not None else [])]
        if not upcoming or min(upcoming) > until:
            return happened
        now = max(now, min(upcoming))
        happened += [(round(now, 3), what) for what in press.advance(now)]
        while pending and pending[0][0] <= now:
            press.edge(pending.pop(0)[1], now)


def events(happened: list[tuple[float, str]]) -> list[str]:
    return [what for _, what in happened if what != "state"]


def test_a_bouncing_press_is_one_change_and_one_press():
    bounce_down = [(1.000, DOWN), (1.002, UP), (1.004, DOWN), (1.007, UP), (1.009, DOWN)]
    bounce_up = [(1.200, UP), (1.203, DOWN), (1.205, UP)]
    happened = run(Press(BUTTON, UP, 0.0), bounce_down + bounce_up, until=5)
    assert happened == [(1.059, "state"), (1.255, "state"), (1.655, "press")]


def test_a_blip_shorter_than_the_debounce_is_no_change():
    assert run(Press(BUTTON, UP, 0.0), [(1.0, DOWN), (1.03, UP)], until=5) == []


def test_double_press_long_press_and_their_mixtures():
    double = [(1.0, DOWN), (1.1, UP), (1.3, DOWN), (1.4, UP)]
    assert events(run(Press(BUTTON, UP, 0.0), double, until=5)) == ["double_press"]
    too_slow = [(1.0, DOWN), (1.1, UP), (1.6, DOWN), (1.7, UP)]
    assert events(run(Press(BUTTON, UP, 0.0), too_slow, until=5)) == ["press", "press"]
    held = run(Press(BUTTON, UP, 0.0), [(1.0, DOWN), (3.0, UP)], until=5)
    assert events(held) == ["long_press"] and (2.05, "long_press") in held  # at the moment, not on release
    press_then_hold = [(1.0, DOWN), (1.1, UP), (1.3, DOWN), (3.0, UP)]
    assert events(run(Press(BUTTON, UP, 0.0), press_then_hold, until=5)) == ["press", "long_press"]


def test_without_a_double_press_window_a_press_is_reported_on_release():
    cfg = InputConfig(pin=36, component="event", double_press=0)
    assert run(Press(cfg, UP, 0.0), [(1.0, DOWN), (1.1, UP)], until=5)[-1] == (1.15, "press")


def test_a_binary_sensor_has_states_only_and_active_high_when_asked():
    door = InputConfig(pin=36, active_low=False, pull="down")
    press = Press(door, 0, 0.0)
    assert run(press, [(1.0, 1), (9.0, 0)], until=20) == [(1.05, "state"), (9.05, "state")]
    assert not press.active


# -- the watcher, on simulated pins and on mraa ---------------------------------------

class Heard:
    """What a watcher told its listeners, waited for as it arrives."""

    def __init__(self) -> None:
        self.got: queue.Queue[tuple[str, str]] = queue.Queue()

    def state(self, item: Input) -> None:
        self.got.put((item.name, item.state))

    def event(self, item: Input, event_type: str) -> None:
        self.got.put((item.name, event_type))

    def next(self) -> tuple[str, str]:
        return self.got.get(timeout=10)


@pytest.fixture
def heard() -> Heard:
    return Heard()


def watch(heard: Heard, pin, cfg: InputConfig = BUTTON, poll: float = 0.05) -> InputWatcher:
    watcher = InputWatcher({"button": (cfg, pin)}, heard.state, heard.event, poll_interval=poll)
    watcher.start()
    return watcher


def test_the_watcher_reports_a_simulated_press(heard):
    pins = SimFactory()
    watcher = watch(heard, pins.input(36, "up"), InputConfig(pin=36, component="event", double_press=0))
    try:
        assert watcher.inputs["button"].state == "OFF"  # idle high with pull up, active low
        for level in (0, 1, 0):  # bounce
            pins.feed(f'{{"pin": 36, "value": {level}}}')
        assert heard.next() == ("button", "ON")
        pins.feed('{"pin": 36, "value": 1, "id": "try-1"}')
        assert [heard.next(), heard.next()] == [("button", "OFF"), ("button", "press")]
        assert [(c.pin, c.value, c.id) for c in pins.history][-1] == (36, 1, "try-1")  # traced like outputs
        assert heard.got.empty()
    finally:
        watcher.stop()


@pytest.mark.parametrize("line, error", [
    ("{", "not JSON"),
    ('{"pin": 36}', 'expected {"pin"'),
    ('{"pin": 36, "value": 2}', "value must be 0 or 1"),
    ('{"pin": 36, "value": true}', "value must be 0 or 1"),
    ('{"pin": 20, "value": 1}', "pin 20 is not a configured input (inputs: [36])"),
    ('{"pin": 36, "value": 1, "colour": "red"}', 'expected {"pin"'),
])
def test_bad_simulated_input_lines_are_refused_clearly(line, error):
    pins = SimFactory()
    pins.input(36, "up")
    with pytest.raises(PinError, match=error.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace("{", r"\{")):
        pins.feed(line)


@pytest.mark.parametrize("kind", ["fifo", "file"])
def test_simulated_inputs_are_read_from_a_fifo_or_a_growing_file(tmp_path, heard, caplog, kind):
    path = tmp_path / "inputs"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text('{"pin": 36, "value": 0}\n')  # there before the node: not replayed
    pins = SimFactory()
    watcher = watch(heard, pins.input(36, "up"), InputConfig(pin=36))
    fd = open_inputs(path)
    try:
        follow(fd, pins, str(path))
        with open(path, "a") as writer:
            writer.write("not json\n")
            writer.write('{"pin": 36, "value": 0}\n')
            writer.flush()
            assert heard.next() == ("button", "ON")
        assert "simulated input 'not json' ignored: not JSON" in caplog.text
    finally:
        watcher.stop()


@pytest.mark.parametrize("interrupts", [True, False], ids=["isr", "polled"])
def test_mraa_inputs_use_interrupts_or_polling(standin_mraa, heard, caplog, interrupts):
    caplog.set_level(logging.INFO, logger="node.inputs")
    standin_mraa.INTERRUPTS = interrupts
    pin = make_factory("mraa").input(36, "up")
    assert standin_mraa._inputs[36]._mode == standin_mraa.MODE_PULLUP and pin.read() == 1
    watcher = watch(heard, pin, InputConfig(pin=36, debounce=0.01), poll=0.01)
    try:
        assert ("has no interrupts: read every 0.01 s" in caplog.text) != interrupts
        assert watcher.inputs["button"].polled != interrupts
        standin_mraa.drive(36, 0)
        assert heard.next() == ("button", "ON")
        standin_mraa.drive(36, 1)
        assert heard.next() == ("button", "OFF")
    finally:
        watcher.stop()
    assert standin_mraa._inputs[36]._isr is None  # isrExit at stop


def test_mraa_input_pull_modes_and_refusals(standin_mraa, monkeypatch):
    factory = make_factory("mraa")
    assert factory.input(37, "down").read() == 0 and standin_mraa._inputs[37]._mode == standin_mraa.MODE_PULLDOWN
    factory.input(38, "none")
    assert standin_mraa._inputs[38]._mode == standin_mraa.MODE_HIZ
    with pytest.raises(PinError, match="mraa refused GPIO pin 99"):
        factory.input(99, "up")
    monkeypatch.setattr(standin_mraa.Gpio, "mode", lambda self, m: standin_mraa.ERROR_FEATURE_NOT_SUPPORTED)
    with pytest.raises(PinError, match="cannot set pull up on pin 45 .* set pull: none"):
        factory.input(45, "up")
    factory.input(46, "none")  # nothing to switch off where there are no pull resistors


def test_mraa_pwm_sets_the_period_enables_and_writes_the_duty(standin_mraa):
    factory = make_factory("mraa")
    pin = factory.pwm(20, 0.001)
    pin.write(0.5)
    assert standin_mraa.duties == [(20, 0.0), (20, 0.5)]
    with pytest.raises(PinError, match="mraa refused PWM on pin 36: Error initialising PWM on pin"):
        factory.pwm(36, 0.001)
    with pytest.raises(PinError, match=r"could not set the PWM period to 0.5 s on pin 14 \(mraa result 4\)"):
        factory.pwm(14, 0.5)


# -- topics.yaml ---------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("outputs: {led: {pin: 20}}\n    inputs: {button: {pin: 20}}", "output 'led' and input 'button' both use pin 20"),
    ("outputs: {led: {pin: 20}}\n    inputs: {led: {pin: 36}}", "output and input 'led' would share the topic"),
    ("outputs: {led: {pin: 20, pwm_period: 0.01}}", "led.pwm_period: applies only with pwm: true"),
    ("inputs: {door: {pin: 36, long_press: 2}}", "door.long_press: applies only with component: event"),
    ("inputs: {b: {pin: 36, pull: sideways}}", "b.pull: expected one of up, down, none (got 'sideways')"),
    ("inputs: {b: {pin: 36, debounce: 2}}", "b.debounce: expected from 0 to 1 (got 2)"),
    ("inputs: {b: {pin: true}}", "b.pin: expected a pin number (0 or more) or a line name (got True)"),
    ("{}", "devices.d: a device needs at least one output or input"),
])
def test_bad_inputs_and_pwm_in_topics_yaml_are_refused_with_the_key_path(text, message):
    with pytest.raises(ConfigError) as info:
        config.parse(f"devices:\n  d:\n    {text}\n", "site.yaml")
    assert message in str(info.value)


def test_a_device_with_inputs_only_is_valid():
    device = config.parse("devices:\n  d:\n    inputs: {door: {pin: 36, device_class: door}}\n").device("d")
    assert device.inputs["door"] == InputConfig(pin=36, device_class="door") and not device.outputs


def test_the_watcher_never_runs_a_thread_for_a_device_without_inputs():
    watcher = InputWatcher({}, lambda item: None, lambda item, what: None)
    before = threading.active_count()
    watcher.start()
    assert threading.active_count() == before
    watcher.stop()
