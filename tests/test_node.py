"""The node as a user meets it: a real node process, a real broker (amqtt and mosquitto), real clients."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import DEVICE, IN_CI, start_amqtt, start_mosquitto
from tests.helpers import TIMEOUT, Probe, python_cmd, read_trace

SET = f"edison/{DEVICE}/led/set"
STATE = f"edison/{DEVICE}/led/state"
STATUS = f"edison/{DEVICE}/status"
RESULT = f"edison/{DEVICE}/result"


def led_levels(nodes) -> list[int]:
    return [c["value"] for c in read_trace(nodes.trace) if c["pin"] == 20]


def led_changes(nodes) -> list[dict]:
    return [c for c in read_trace(nodes.trace) if c["pin"] == 20]


def wait_states(probe: Probe, *states: str) -> None:
    for state in states:
        probe.wait_for(STATE, state)


def command(probe: Probe, payload: str, command_id: str, topic: str = SET) -> dict:
    probe.publish(topic, payload)
    return probe.result(DEVICE, command_id)


@pytest.fixture
def node(probe, nodes):
    return nodes.start(wait_online=probe)


@pytest.mark.parametrize("payload, levels, state", [
    ("ON", [1], "ON"),
    ("  toggle ", [1], "ON"),
    ('{"state": "ON"}', [1], "ON"),
    ('{"state": "TOGGLE"}', [1], "ON"),
])
def test_state_commands_move_the_pin(probe, node, nodes, payload, levels, state):
    probe.publish(SET, payload)
    wait_states(probe, "ON")
    result = probe.wait_for(RESULT).json()
    assert result["ok"] and result["state"] == state and result["output"] == "led"
    assert led_levels(nodes) == levels


def test_off_after_on(probe, node, nodes):
    probe.publish(SET, "ON")
    probe.publish(SET, "OFF")
    wait_states(probe, "ON", "OFF")
    assert led_levels(nodes) == [1, 0]


def test_plain_blink_uses_default_pattern_and_restores_state(probe, node, nodes):
    result = command(probe, '{"effect": "blink", "id": "b1"}', "b1")
    assert result == {"id": "b1", "output": "led", "ok": True, "state": "OFF", "effect": "blink"}
    wait_states(probe, *["ON", "OFF"] * 3)  # topics.yaml of the tests: count 3, 0.1 s on, 0.1 s off
    changes = led_changes(nodes)
    assert [c["value"] for c in changes] == [1, 0] * 3
    gaps = [b["t"] - a["t"] for a, b in zip(changes, changes[1:])]
    assert all(0.08 <= g <= 0.5 for g in gaps), gaps  # pattern spacing, with room for a busy machine


def test_json_blink_parameters(probe, node, nodes):
    probe.publish(SET, '{"effect": "blink", "count": 2, "on_time": 0.2, "off_time": 0.05}')
    wait_states(probe, "ON", "OFF", "ON", "OFF")
    changes = led_changes(nodes)
    assert [c["value"] for c in changes] == [1, 0, 1, 0]
    on_gap, off_gap = changes[1]["t"] - changes[0]["t"], changes[2]["t"] - changes[1]["t"]
    assert on_gap >= 0.18 and off_gap >= 0.04 and on_gap > off_gap


def test_blink_cancelled_by_off(probe, node, nodes):
    probe.publish(SET, "ON")
    wait_states(probe, "ON")
    probe.publish(SET, '{"effect": "blink", "count": 1000, "on_time": 0.05, "off_time": 0.05}')
    wait_states(probe, "OFF", "ON")
    command(probe, '{"state": "OFF", "id": "stop"}', "stop")
    probe.wait_for(STATE, "OFF")
    levels_after_off = len(led_levels(nodes))
    # A short pattern on the other output marks time: once it has finished, a
    # still-running blink would have changed the LED several times.
    command(probe, '{"effect": "blink", "count": 3, "on_time": 0.05, "off_time": 0.05, "id": "m"}', "m",
            topic=f"edison/{DEVICE}/relay/set")
    for _ in range(6):
        probe.wait_for(f"edison/{DEVICE}/relay/state")
    assert led_levels(nodes)[-1] == 0 and len(led_levels(nodes)) == levels_after_off


def test_every_command_gets_one_result_with_its_id(probe, node):
    for i, payload in enumerate(["ON", "OFF", "TOGGLE"]):
        probe.publish(SET, payload)
    results = [probe.wait_for(RESULT).json() for _ in range(3)]
    assert [r["state"] for r in results] == ["ON", "OFF", "ON"]
    assert len({r["id"] for r in results}) == 3  # generated ids, all different


@pytest.mark.parametrize("payload, error", [
    (b"", "empty payload"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
    (b"\xc3\x28", "not UTF-8"),
    (b"ON" * 3000, "over the 4096-byte limit"),
    (b'{"state": "ON"', "malformed JSON"),
    (b"DANCE", "unknown command"),
    (b'{"effect": "blink", "count": 5000}', "count"),
    (b'{"effect": "blink", "on_time": 0.001}', "on_time"),
    (b'{"state": "ON", "colour": "red"}', "unknown key"),
])
def test_bad_input_gets_an_error_result_and_no_pin_change(probe, node, nodes, payload, error):
    probe.publish(SET, payload)
    result = probe.wait_for(RESULT).json()
    assert result["ok"] is False and error in result["error"]
    assert "state" not in result
    assert node.wait_for_line(r"refused")
    # still alive and serving
    assert command(probe, '{"state": "ON", "id": "after"}', "after")["ok"]
    assert led_levels(nodes) == [1]


def test_unknown_output_is_refused(probe, node, nodes):
    result = command(probe, '{"state": "ON", "id": "u"}', "u", topic=f"edison/{DEVICE}/lamp/set")
    assert result["ok"] is False and "unknown output 'lamp'" in result["error"]
    assert led_levels(nodes) == []


def test_expired_command_is_refused(probe, node, nodes):
    result = command(probe, json.dumps({"state": "ON", "id": "old", "expires": time.time() - 5}), "old")
    assert result["ok"] is False and "expired" in result["error"]
    assert command(probe, json.dumps({"state": "ON", "id": "new", "expires": time.time() + 60}), "new")["ok"]
    assert led_levels(nodes) == [1]


def test_retained_set_is_never_acted_on(probe, nodes):
    """A retained command would be replayed at every reconnect ("ghost switching")."""
    probe.publish(SET, "ON", retain=True)
    node = nodes.start(wait_online=probe)
    result = probe.wait_for(RESULT).json()
    assert result["ok"] is False and "retained" in result["error"]
    assert node.wait_for_line(r"retained /set")
    assert led_levels(nodes) == []


def test_availability_and_last_will(probe, nodes):
    proc = nodes.start(wait_online=probe)
    proc.signal(signal.SIGKILL)
    proc.wait()
    probe.wait_for(STATUS, "offline")  # the broker's Last Will, retained
    late = Probe(nodes.broker)  # a client arriving later sees it retained
    try:
        late.subscribe(STATUS)
        assert late.wait_for(STATUS).text == "offline"
    finally:
        late.close()


def test_sigterm_goes_to_safe_state_publishes_offline_and_exits_0(probe, node, nodes):
    probe.publish(SET, '{"effect": "blink", "count": 1000, "on_time": 0.05, "off_time": 0.05}')
    wait_states(probe, "ON")
    node.signal(signal.SIGTERM)
    assert node.wait(TIMEOUT) == 0
    probe.wait_for(STATUS, "offline")
    assert led_levels(nodes)[-1] == 0
    assert "did not acknowledge" not in node.output


def test_state_is_retained_and_correct_after_broker_restart(probe_factory, nodes, broker, tmp_path):
    probe = probe_factory()
    probe.subscribe("edison/#")
    node = nodes.start(wait_online=probe)
    command(probe, '{"state": "ON", "id": "1"}', "1")
    probe.close()
    mark = node.line_count()
    broker.proc.signal(signal.SIGINT if broker.kind == "amqtt" else signal.SIGTERM)
    broker.proc.wait()
    node.wait_for_line(r"disconnected|lost|reconnecting", start=mark)
    if broker.kind == "amqtt":
        restarted = start_amqtt(tmp_path, port=broker.port)
    else:
        restarted = start_mosquitto(tmp_path, shutil.which("mosquitto") or "/usr/sbin/mosquitto", port=broker.port)
    try:
        node.wait_for_line(r"connected to ", start=mark)
        late = Probe(restarted)
        late.subscribe(f"edison/{DEVICE}/#")
        assert late.wait_for(STATE).text == "ON"
        assert late.wait_for(STATUS).text == "online"
        late.close()
    finally:
        restarted.proc.signal(signal.SIGINT)
        restarted.proc.wait(TIMEOUT)


def test_command_sent_while_offline_arrives_after_reconnect(probe, nodes, broker):
    """On amqtt this needs the embedded broker's fix: amqtt 0.12.1 delivers queued messages with RETAIN=1."""
    proc = nodes.start(wait_online=probe)
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    probe.wait_for(STATUS, "offline")
    probe.publish(SET, '{"state": "ON", "id": "queued"}')
    nodes.start()
    result = probe.result(DEVICE, "queued")
    assert result["ok"] is True, result
    assert led_levels(nodes)[-1] == 1


def test_mosquitto_pub_from_the_real_cli(probe, node, nodes, broker):
    pub = shutil.which("mosquitto_pub")
    if pub is None:
        if IN_CI:
            pytest.fail("mosquitto_pub missing (Debian: mosquitto-clients)")
        pytest.skip("mosquitto_pub missing (Debian: mosquitto-clients)")
    version = ["-V", "311"] if broker.kind == "amqtt" else []
    subprocess.run([pub, "-h", "127.0.0.1", "-p", str(broker.port), *version, "-q", "1",
                    "-t", SET, "-m", "BLINK"], check=True, timeout=TIMEOUT)
    wait_states(probe, *["ON", "OFF"] * 3)
    assert led_levels(nodes) == [1, 0] * 3


def test_protocol_auto_falls_back_to_3_1_1_on_amqtt_and_uses_5_on_mosquitto(probe, node, broker):
    expected = "MQTT 3.1.1" if broker.kind == "amqtt" else "MQTT 5"
    assert node.wait_for_line(r"connected to .*\(MQTT ").split("(")[1].startswith(expected)


def test_bad_config_is_refused_at_start(tmp_path):
    bad = tmp_path / "topics.yaml"
    bad.write_text("devices:\n  d:\n    outputs:\n      led: {pin: twenty}\n")
    run = subprocess.run(python_cmd("node", "--config", str(bad), "--pins", "sim"),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 2
    assert f"{bad}: 1 problem(s)" in run.stderr and "devices.d.outputs.led.pin" in run.stderr


def test_mraa_refusing_the_pin_stops_the_node_at_start(tmp_path):
    cfg = tmp_path / "topics.yaml"
    cfg.write_text("devices:\n  d:\n    outputs:\n      led: {pin: 99}\n")
    standins = str(__import__("pathlib").Path(__file__).parent / "standins")
    run = subprocess.run(python_cmd("node", "--config", str(cfg), "--pins", "mraa"), capture_output=True,
                         text=True, timeout=TIMEOUT, env={**__import__("os").environ, "PYTHONPATH": standins})
    assert run.returncode == 2 and "mraa refused GPIO pin 99" in run.stderr


class TestMqtt5:
    """Request/response as MQTT 5 defines it (mosquitto: amqtt 0.12 speaks 3.1.1 only)."""

    @pytest.fixture(autouse=True)
    def _mosquitto_only(self, broker):
        if broker.kind != "mosquitto":
            pytest.skip("MQTT 5 request/response needs an MQTT 5 broker")

    def test_response_topic_and_correlation_data(self, probe, node):
        probe.subscribe("reply/me")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "reply/me"
        props.CorrelationData = b"corr-42"
        probe.publish(SET, "ON", properties=props)
        reply = probe.wait_for("reply/me")
        assert reply.json() == {"id": "corr-42", "output": "led", "ok": True, "state": "ON"}
        assert reply.properties.CorrelationData == b"corr-42"

    def test_mosquitto_rr_prints_the_result(self, node, broker):
        rr = shutil.which("mosquitto_rr")
        if rr is None:
            pytest.skip("mosquitto_rr missing (Debian: mosquitto-clients)")
        run = subprocess.run([rr, "-h", "127.0.0.1", "-p", str(broker.port), "-t", SET, "-e", "some/reply",
                              "-m", "ON", "-W", "10"], capture_output=True, text=True, timeout=TIMEOUT)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        assert result["ok"] is True and result["state"] == "ON"


def test_sigterm_while_the_broker_is_unreachable_still_exits_0(tmp_path, topics_file):
    from tests.helpers import Proc, free_port
    proc = Proc(python_cmd("node", "--config", str(topics_file), "--broker", f"mqtt://127.0.0.1:{free_port()}",
                           "--pins", "sim", "--trace", str(tmp_path / "t.jsonl")), tmp_path / "node.log")
    try:
        proc.wait_for_line(r"cannot reach")
        proc.signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.stop()
