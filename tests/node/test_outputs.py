"""Outputs on simulated pins: levels, active-low, blinks, failed writes, and the command behind each change."""

from __future__ import annotations

import json
import threading

import pytest

from node.config import BlinkPattern, OutputConfig
from node.outputs import Output
from node.pins import PinError
from node.pins.sim import Change, SimFactory


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
