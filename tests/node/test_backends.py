"""The node's behaviour on every pin backend: sim, mraa (stand-in module) and gpiod (stand-in 2.x bindings and
sysfs PWM tree). The same commands, blinks, fades, presses, safe states and failures, the same outcome."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.boards import Board
from tests.node.rig import DEVICE, TOPICS, Rig

BUTTON, DOOR = 36, 37


def topics_yaml(board: Board) -> str:
    return f"""\
prefix: edison
devices:
  {DEVICE}:
    outputs:
      led: {{pin: 20, blink: {{count: 2, on_time: 0.02, off_time: 0.02}}}}
      relay: {{pin: 21, active_low: true}}
      dimmer: {{pin: 14, pwm: true{board.pwm_keys}}}
    inputs:
      button: {{pin: {BUTTON}, component: event, debounce: 0.01, double_press: 1.0, long_press: 2.0}}
      door: {{pin: {DOOR}, pull: down, active_low: false, debounce: 0.01}}
"""


@pytest.fixture
def rig(board: Board, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "state", topics_yaml=topics_yaml(board), pins=board.factory)
    yield r
    r.close()


def states(rig: Rig, name: str, count: int) -> list[str]:
    return [m.payload.decode() for m in rig.link.wait_for(TOPICS.state(name), count)]


def test_commands_move_the_pin_and_answer(board, rig):
    assert [rig.send(p)["state"] for p in ("ON", "OFF", "TOGGLE", '{"state": "TOGGLE"}')] == ["ON", "OFF", "ON", "OFF"]
    assert board.levels(20) == [1, 0, 1, 0]


def test_active_low_starts_in_its_safe_state_and_returns_to_it_at_stop(board, rig):
    assert board.levels(21) == [1]  # OFF is high from the start, without a glitch low
    rig.send("ON", output="relay")
    rig.send('{"effect": "blink", "count": 1000, "on_time": 0.05, "off_time": 0.05}')
    board.wait(lambda: board.levels(20)[:1] == [1])
    rig.close()
    assert board.levels(21) == [1, 0, 1] and board.levels(20)[-1] == 0


def test_a_blink_runs_its_pattern_and_restores_the_state(board, rig):
    rig.send('{"state": "ON", "effect": "blink", "id": "b"}')
    states(rig, "led", 2)
    rig.link.wait_for(TOPICS.effect("led"), 3)  # off at connect, blink, off again at its end
    assert board.levels(20) == [1, 0, 1, 0, 1]


def test_brightness_and_a_transition_reach_the_pwm_pin(board, rig):
    assert rig.send('{"brightness": 51}', output="dimmer")["brightness"] == 51
    assert board.duties(14) == [0.2]
    rig.send('{"brightness": 255, "transition": 0.1}', output="dimmer")
    board.wait(lambda: board.duties(14)[-1:] == [1.0])
    steps = board.duties(14)
    assert steps == sorted(steps) and len(steps) > 3  # upwards, in steps
    rig.send("OFF", output="dimmer")
    assert board.duties(14)[-1] == 0.0


def test_presses_double_presses_and_long_presses_are_reported(board, rig):
    def press(hold: str | None = None) -> None:
        before = len(rig.link.on(TOPICS.state("button")))
        board.drive(BUTTON, 0)
        if hold:
            rig.link.wait_for(TOPICS.event("button"), len(rig.link.on(TOPICS.event("button"))) + 1)
        states(rig, "button", before + 1)
        board.drive(BUTTON, 1)
        states(rig, "button", before + 2)

    def events(count: int) -> list[str]:
        return [json.loads(m.payload)["event_type"] for m in rig.link.wait_for(TOPICS.event("button"), count)]

    press()
    assert events(1) == ["press"]
    press()
    press()
    assert events(2) == ["press", "double_press"]
    press(hold="long")
    assert events(3) == ["press", "double_press", "long_press"]
    board.drive(DOOR, 1)
    assert states(rig, "door", 2) == ["OFF", "ON"]


def test_a_failing_write_is_an_error_result_and_the_state_stays(board, rig):
    board.fail(20, True)
    result = rig.send('{"state": "ON", "id": "w"}')
    assert result["ok"] is False and "pin 20" in result["error"]
    assert rig.node.outputs["led"].state == "OFF" and board.levels(20) == []
    board.fail(20, False)
    assert rig.send("ON")["state"] == "ON" and board.levels(20) == [1]
