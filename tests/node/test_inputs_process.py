"""Inputs and brightness as a user meets them: the real node process with simulated pins fed through a FIFO, real
brokers (amqtt and mosquitto), a real client. Timings of presses are decided in test_inputs.py; here each step
waits for what the node publishes."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.brokers import start_embedded, start_mosquitto
from testkit.mqtt import Probe
from testkit.node import DEVICE, NodeRunner
from testkit.procs import TIMEOUT, Proc, python_cmd, read_trace
from tests.node.hass import retained_configs

TOPICS_YAML = """\
prefix: edison
devices:
  edison-t:
    outputs:
      led: {name: LED, pin: 20, pwm: true}
    inputs:
      button: {name: Button, pin: 36, component: event, double_press: 0.8, long_press: 0.6}
      door: {name: Door, pin: 37, pull: down, active_low: false, device_class: door}
"""
BASE = f"edison/{DEVICE}"
SET, RESULT = f"{BASE}/led/set", f"{BASE}/result"
BUTTON, BUTTON_EVENT, DOOR = f"{BASE}/button/state", f"{BASE}/button/event", f"{BASE}/door/state"


@dataclass
class Board:
    nodes: NodeRunner
    node: Proc
    wire: int  # the FIFO's write end: what the buttons and sensors say

    def set(self, pin: int, *levels: int) -> None:
        """Levels written at once: several make a burst of edges, as a bouncing contact does."""
        os.write(self.wire, b"".join(b'{"pin": %d, "value": %d}\n' % (pin, level) for level in levels))

    def duties(self, command_id: str) -> list[float]:
        return [c["duty"] for c in read_trace(self.nodes.trace) if c.get("id") == command_id]


@pytest.fixture
def board(broker, probe, tmp_path) -> Iterator[Board]:
    config = tmp_path / "topics.yaml"
    config.write_text(TOPICS_YAML)
    fifo = tmp_path / "inputs"
    os.mkfifo(fifo)
    nodes = NodeRunner(broker, tmp_path, config)
    node = nodes.start("--sim-inputs", str(fifo), wait_online=probe)
    probe.wait_for(DOOR, "OFF")  # the connect's states are out: the node is listening
    wire = os.open(fifo, os.O_WRONLY)
    try:
        yield Board(nodes, node, wire)
    finally:
        os.close(wire)
        nodes.stop_all()


def test_presses_of_a_bouncing_button_give_one_state_change_and_one_event_each(board, probe):
    board.set(36, 0, 1, 0, 1, 0)  # pressed, bouncing
    probe.wait_for(BUTTON, "ON")
    board.set(36, 1, 0, 1)  # released, bouncing
    probe.wait_for(BUTTON, "OFF")
    assert probe.wait_for(BUTTON_EVENT).json()["event_type"] == "press"
    for level in (0, 1, 0, 1):  # twice, within double_press
        board.set(36, level)
        probe.wait_for(BUTTON, "ON" if level == 0 else "OFF")
    assert probe.wait_for(BUTTON_EVENT).json()["event_type"] == "double_press"
    board.set(36, 0)
    assert probe.wait_for(BUTTON_EVENT).json()["event_type"] == "long_press"  # while held
    board.set(36, 1)
    probe.wait_for(BUTTON, "OFF")
    probe.barrier()
    states = [m.text for m in probe.seen if m.topic == BUTTON]
    events = [m.json()["event_type"] for m in probe.seen if m.topic == BUTTON_EVENT]
    assert states == ["OFF"] + ["ON", "OFF"] * 4 and events == ["press", "double_press", "long_press"]
    assert not any(m.retain for m in probe.seen if m.topic == BUTTON_EVENT)
    traced = [c["value"] for c in read_trace(board.nodes.trace) if c["pin"] == 36]
    assert traced[:8] == [0, 1, 0, 1, 0, 1, 0, 1]  # every edge, traced like the outputs


def test_brightness_transitions_and_their_cancelling(board, probe):
    probe.publish(SET, '{"brightness": 128, "id": "d1"}')
    assert probe.result(DEVICE, "d1") == {"id": "d1", "output": "led", "ok": True, "state": "ON", "brightness": 128}
    probe.wait_for(f"{BASE}/led/brightness", "128")
    assert board.duties("d1") == [0.502]
    probe.publish(SET, '{"brightness": 255, "transition": 0.2, "id": "d2"}')
    board.node.wait_for_line(r"led: transition of command d2 ended")
    assert board.duties("d2")[-1] == 1.0 and board.duties("d2") == sorted(board.duties("d2"))
    probe.publish(SET, '{"state": "OFF", "transition": 30, "id": "d3"}')  # a step every 0.12 s
    probe.publish(SET, '{"state": "OFF", "id": "d4"}')
    assert probe.result(DEVICE, "d4")["state"] == "OFF"
    probe.publish(SET, '{"brightness": 10, "id": "d5"}')
    probe.result(DEVICE, "d5")
    ids = [c.get("id") for c in read_trace(board.nodes.trace) if c["pin"] == 20]
    assert ids[-2:] == ["d4", "d5"] and "d3" not in ids[ids.index("d4"):]  # the fade stopped at OFF
    probe.publish(SET, "OFF")
    probe.publish(SET, '{"state": "ON", "id": "d6"}')
    assert probe.result(DEVICE, "d6")["brightness"] == 10 and board.duties("d6") == [0.0392]  # ON restores it
    for payload, error in (('{"brightness": 300, "id": "x1"}', "brightness: expected from 0 to 255 (got 300)"),
                           ('{"state": "ON", "transition": -1, "id": "x2"}',
                            "transition: expected from 0 to 3600 (got -1)")):
        probe.publish(SET, payload)
        command_id = payload.split('"id": "')[1][:2]
        assert probe.result(DEVICE, command_id) == {"id": command_id, "output": "led", "ok": False, "error": error}
        assert board.duties(command_id) == []


def test_input_state_is_retained_announced_back_after_a_broker_restart_and_forgotten(board, broker, probe,
                                                                                      probe_factory, tmp_path):
    board.set(37, 1)  # the door opens
    probe.wait_for(DOOR, "ON")
    late = probe_factory()
    late.subscribe(DOOR)
    assert late.wait_for(DOOR).text == "ON"  # retained
    configs = retained_configs(probe_factory)
    event = configs[f"homeassistant/event/{DEVICE}/button/config"]
    assert event["state_topic"] == BUTTON_EVENT and event["event_types"] == ["press", "double_press", "long_press"]
    door = configs[f"homeassistant/binary_sensor/{DEVICE}/door/config"]
    assert (door["state_topic"], door["device_class"], door["payload_on"]) == (DOOR, "door", "ON")
    light = configs[f"homeassistant/light/{DEVICE}/led/config"]
    assert light["brightness_state_topic"] == f"{BASE}/led/brightness" and light["on_command_type"] == "brightness"
    assert light["effect_state_topic"] == f"{BASE}/led/effect"

    for client in (probe, late):
        client.close()
    broker.proc.stop()  # killed, and back without any retained message
    again = start_embedded(tmp_path, port=broker.port) if broker.kind == "embedded" else \
        start_mosquitto(tmp_path, broker.proc.argv[0], port=broker.port)
    try:
        ha = Probe(again)
        ha.subscribe(f"{BASE}/#")
        assert ha.wait_for(DOOR).text == "ON"  # the node's reconnect puts it back
        ha.close()
        forget = Proc(python_cmd("node", "--config", str(board.nodes.config), "--broker", again.url, "--forget"),
                      tmp_path / "forget.log", env={"MQTT_USERNAME": DEVICE})
        assert forget.wait() == 0, forget.output
        remaining = retained_configs(lambda: Probe(again))
        assert not [t for t in remaining if "/button/" in t or "/door/" in t], remaining
    finally:
        board.nodes.stop_all()
        again.proc.signal(signal.SIGINT)
        again.proc.wait()
        again.proc.stop()


def test_an_input_on_an_output_pin_stops_the_node_at_start(tmp_path):
    bad = tmp_path / "topics.yaml"
    bad.write_text("devices:\n  d:\n    outputs: {led: {pin: 20}}\n    inputs: {button: {pin: 20}}\n")
    run = subprocess.run(python_cmd("node", "--config", str(bad), "--pins", "sim"), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert run.returncode == 2
    assert f"{bad}: 1 problem(s):\n  devices.d.inputs.button.pin: output 'led' and input 'button' both use pin 20" \
        in run.stderr


def test_sim_inputs_need_simulated_pins(tmp_path, topics_file):
    run = subprocess.run(python_cmd("node", "--config", str(topics_file), "--pins", "mraa", "--sim-inputs",
                                    str(tmp_path / "in")), capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 2 and "use them with --pins sim" in run.stderr


def test_a_missing_sim_inputs_file_is_created(tmp_path, topics_file):
    path: Path = tmp_path / "presses.jsonl"
    proc = Proc(python_cmd("node", "--config", str(topics_file), "--broker", "mqtt://127.0.0.1:9", "--pins", "sim",
                           "--sim-inputs", str(path), "--state", str(tmp_path / "s")), tmp_path / "node.log")
    try:
        proc.wait_for_line(r"simulated inputs: reading JSON lines from")
        assert path.exists()
        proc.signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.stop()
