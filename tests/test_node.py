"""The node as a user meets it: a real node process, real brokers (amqtt and mosquitto), real clients.

These check the contract between processes: topics, retained state, the Last
Will, sessions that survive restarts, MQTT 5 request/response and signals. What the node decides
for each message is tested in memory (test_node_decisions.py, test_fuzz.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.broker_setup import USERS, login
from tests.conftest import DEVICE, IN_CI, NodeRunner
from tests.helpers import TIMEOUT, Probe, Proc, free_port, python_cmd, read_trace

SET = f"edison/{DEVICE}/led/set"
STATE = f"edison/{DEVICE}/led/state"
STATUS = f"edison/{DEVICE}/status"
RESULT = f"edison/{DEVICE}/result"
REPLY = f"edison/{DEVICE}/reply/laptop"  # a response topic the device may publish to under access rules


def led_levels(nodes: NodeRunner) -> list[int]:
    return [c["value"] for c in read_trace(nodes.trace) if c["pin"] == 20]


def cli(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        reason = f"{name} missing (Debian: mosquitto-clients)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture
def node(probe, nodes):
    return nodes.start(wait_online=probe)


def test_mosquitto_pub_blinks_the_led_over_the_negotiated_protocol(probe, node, nodes, broker):
    version = ["-V", "311"] if broker.kind == "amqtt" else []
    subprocess.run([cli("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(broker.port), *version, "-q", "1",
                    "-t", SET, "-m", "BLINK"], check=True, timeout=TIMEOUT)
    for state in ["ON", "OFF"] * 3:
        probe.wait_for(STATE, state)
    assert led_levels(nodes) == [1, 0] * 3
    result = probe.wait_for(RESULT).json()
    assert result["ok"] is True and result["effect"] == "blink"
    expected = "MQTT 3.1.1" if broker.kind == "amqtt" else "MQTT 5"  # --protocol auto: asks, falls back
    assert node.wait_for_line(r"connected to .*\(MQTT ").split("(")[1].startswith(expected)


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
    probe.wait_for(STATE, "ON")
    node.signal(signal.SIGTERM)
    assert node.wait(TIMEOUT) == 0
    probe.wait_for(STATUS, "offline")
    assert led_levels(nodes)[-1] == 0
    assert "did not acknowledge" not in node.output


def test_command_sent_while_offline_arrives_after_reconnect(probe, nodes):
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
    standins = str(Path(__file__).parent / "standins")
    run = subprocess.run(python_cmd("node", "--config", str(cfg), "--pins", "mraa"),
                         capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "PYTHONPATH": standins})
    assert run.returncode == 2 and "mraa refused GPIO pin 99" in run.stderr


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
def test_mqtt5_response_topic_and_correlation_data(probe, node):
    probe.subscribe(REPLY)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = REPLY
    props.CorrelationData = b"corr-42"
    probe.publish(SET, "ON", properties=props)
    reply = probe.wait_for(REPLY)
    assert reply.json() == {"id": "corr-42", "output": "led", "ok": True, "state": "ON"}
    assert reply.properties.CorrelationData == b"corr-42"


@pytest.mark.parametrize("secured", ["mosquitto"], indirect=True)
def test_mosquitto_rr_under_access_rules_and_a_refused_reply_is_logged(secured, tmp_path):
    """The README's `mosquitto_rr -e edison/<device>/reply/...` works; a reply topic outside the device's is logged."""
    laptop = login(secured, "laptop")
    nodes = NodeRunner(secured.broker, tmp_path, secured.topics)
    try:
        laptop.subscribe(STATUS)
        node = nodes.start(env={"MQTT_PASSWORD": USERS[DEVICE]}, wait_online=laptop)
        rr = subprocess.run([cli("mosquitto_rr"), "-h", "127.0.0.1", "-p", str(secured.broker.port), "-u", "laptop",
                             "-P", USERS["laptop"], "-t", SET, "-e", REPLY, "-m", "ON", "-W", "10"],
                            capture_output=True, text=True, timeout=TIMEOUT)
        assert rr.returncode == 0, rr.stderr
        assert json.loads(rr.stdout)["state"] == "ON"
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "some/reply"
        laptop.publish(SET, "OFF", properties=props)
        node.wait_for_line(r"the broker refused the publish to some/reply: Not authorized")
    finally:
        nodes.stop_all()
        laptop.close()


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
def test_forget_on_mqtt_3_1_1_leaves_no_session_behind(broker, topics_file, tmp_path):
    forget = subprocess.run(python_cmd("node", "--config", str(topics_file), "--broker", broker.url, "--protocol",
                                       "3.1.1", "--forget"), capture_output=True, text=True, timeout=TIMEOUT)
    assert forget.returncode == 0, forget.stderr
    again = Probe(broker, client_id=f"{DEVICE}-forget", mqtt5=False, clean_session=False)
    try:
        assert again.session_present is False
    finally:
        again.close()


def test_sigterm_while_the_broker_is_unreachable_still_exits_0(tmp_path, topics_file):
    proc = Proc(python_cmd("node", "--config", str(topics_file), "--broker", f"mqtt://127.0.0.1:{free_port()}",
                           "--pins", "sim", "--trace", str(tmp_path / "t.jsonl")),
                tmp_path / "node.log")
    try:
        proc.wait_for_line(r"cannot reach")
        proc.signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        assert "did not acknowledge" not in proc.output
    finally:
        proc.stop()
