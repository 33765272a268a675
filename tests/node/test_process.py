"""The node as a user meets it: a real node process, real brokers (amqtt and mosquitto), real clients.

These check the contract between processes: topics, retained state, the Last
Will, sessions that survive restarts, MQTT 5 request/response, signals, and
the faults that make a broker deliver a command again. What the node decides
for each message is tested in memory (test_decisions.py, test_commands_fuzz.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from testkit.mqtt import Broker, Probe
from testkit.node import DEVICE, NodeRunner
from testkit.procs import TIMEOUT, Proc, free_port, python_cmd, read_trace
from testkit.standins import PINLIBS
from testkit.tcpproxy import TcpProxy
from testkit.users import USERS, Secured, login
from tests.requires import need_cli

SET = f"edison/{DEVICE}/led/set"
STATE = f"edison/{DEVICE}/led/state"
STATUS = f"edison/{DEVICE}/status"
RESULT = f"edison/{DEVICE}/result"
REPLY = f"edison/{DEVICE}/reply/laptop"  # a response topic the device may publish to under access rules


def led_levels(nodes: NodeRunner) -> list[int]:
    return [c["value"] for c in read_trace(nodes.trace) if c["pin"] == 20]


def effects(nodes: NodeRunner, command_id: str) -> int:
    """Level changes the command caused: each change in the trace names its command."""
    return len([c for c in read_trace(nodes.trace) if c.get("id") == command_id])


@pytest.fixture
def node(probe, nodes):
    return nodes.start(wait_online=probe)


@pytest.mark.parametrize("version", ["5", "311"])
def test_mosquitto_pub_blinks_the_led_over_the_negotiated_protocol(probe, node, nodes, broker, version):
    """The node speaks MQTT 5 to both brokers (--protocol auto asks first); the laptop may speak either."""
    subprocess.run([need_cli("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(broker.port), "-V", version, "-q", "1",
                    "-t", SET, "-m", "BLINK"], check=True, timeout=TIMEOUT)
    for state in ["ON", "OFF"] * 3:
        probe.wait_for(STATE, state)
    assert led_levels(nodes) == [1, 0] * 3
    result = probe.wait_for(RESULT).json()
    assert result["ok"] is True and result["effect"] == "blink"
    assert node.wait_for_line(r"connected to .*\(MQTT ").split("(")[1].startswith("MQTT 5")


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


def test_a_restarted_node_answers_a_repeated_id_without_acting_again(probe, nodes):
    """What a broker failover or a client's resend looks like to a node that has restarted meanwhile."""
    first = nodes.start(wait_online=probe)
    probe.publish(SET, '{"state": "TOGGLE", "id": "r1"}')
    answer = probe.result(DEVICE, "r1")
    first.signal(signal.SIGKILL)
    first.wait()
    second = nodes.start(wait_online=probe)
    probe.publish(SET, '{"state": "TOGGLE", "id": "r1"}')
    assert probe.result(DEVICE, "r1") == {**answer, "repeat": True}
    assert effects(nodes, "r1") == 1 and led_levels(nodes) == [1]
    second.wait_for_line(r"command r1 is a repeat")


@pytest.mark.parametrize("fate", ["resumes", "is killed"])
def test_commands_in_flight_when_the_connection_drops_take_effect_once(secured: Secured, tmp_path, fate):
    """Commands reach the node's socket, the connection drops before its PUBACKs reach the broker.

    The node is paused while the broker sends the commands, the connection is
    cut, then the node either resumes (it carries them out and its PUBACKs are
    lost) or is killed before reading them and started again. Either way the
    broker delivers them again on the next connection, and each must take
    effect exactly once.
    """
    proxy = TcpProxy(secured.broker.port)
    proxy.up()
    watcher = login(secured, "watcher")
    laptop = login(secured, "laptop")
    nodes = NodeRunner(Broker(secured.broker.kind, proxy.port, secured.broker.proc), tmp_path, secured.topics)
    env = {"MQTT_PASSWORD": USERS[DEVICE]}
    try:
        watcher.subscribe("edison/#")
        node = nodes.start(env=env, wait_online=watcher)
        watcher.wait_for(STATE, "OFF")  # the connect is complete
        node.signal(signal.SIGSTOP)
        mark = proxy.to_client
        sent = [f"t{i}" for i in range(3)]
        for command_id in sent:
            laptop.publish(SET, json.dumps({"state": "TOGGLE", "id": command_id}))  # acknowledged by the broker
        proxy.wait_to_client(mark + sum(len(SET) + len(command_id) + 30 for command_id in sent))
        proxy.down()
        proxy.up()
        if fate == "resumes":
            node.signal(signal.SIGCONT)
        else:
            node.signal(signal.SIGKILL)
            node.wait()
            node = nodes.start(env=env)
        results = {i: [watcher.result(DEVICE, i)] for i in sent}
        for command_id in sent:
            if fate == "resumes":  # carried out before the cut; the broker's second delivery is answered
                results[command_id].append(watcher.result(DEVICE, command_id))
        counts = {"carried out": sum(effects(nodes, i) == 1 for i in sent),
                  "lost": sum(effects(nodes, i) == 0 for i in sent),
                  "doubled": sum(effects(nodes, i) > 1 for i in sent)}
        assert counts == {"carried out": 3, "lost": 0, "doubled": 0}
        assert led_levels(nodes) == [1, 0, 1]
        for answers in results.values():
            assert [a.get("repeat", False) for a in answers] in ([False], [False, True], [True, False]), results
            assert all(a["ok"] for a in answers) and len({a["state"] for a in answers}) == 1
    finally:
        nodes.stop_all()
        proxy.down()
        watcher.close()
        laptop.close()


def test_bad_config_is_refused_at_start(tmp_path):
    bad = tmp_path / "topics.yaml"
    bad.write_text("devices:\n  d:\n    outputs:\n      led: {pin: -20}\n")
    run = subprocess.run(python_cmd("node", "--config", str(bad), "--pins", "sim"),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 2
    assert f"{bad}: 1 problem(s)" in run.stderr and "devices.d.outputs.led.pin" in run.stderr


def test_mraa_refusing_the_pin_stops_the_node_at_start(tmp_path):
    cfg = tmp_path / "topics.yaml"
    cfg.write_text("devices:\n  d:\n    outputs:\n      led: {pin: 99}\n")
    run = subprocess.run(python_cmd("node", "--config", str(cfg), "--pins", "mraa", "--state", str(tmp_path / "s")),
                         capture_output=True, text=True, timeout=TIMEOUT,
                         env={**os.environ, "PYTHONPATH": str(PINLIBS)})
    assert run.returncode == 2 and "mraa refused GPIO pin 99" in run.stderr


def test_a_state_directory_in_use_stops_the_second_node(tmp_path, topics_file):
    """Two nodes on one state directory could each carry a command out once: the second is refused at start."""
    argv = python_cmd("node", "--config", str(topics_file), "--broker", f"mqtt://127.0.0.1:{free_port()}",
                      "--pins", "sim", "--trace", str(tmp_path / "t.jsonl"), "--state", str(tmp_path / "state"))
    first = Proc(argv, tmp_path / "first.log")
    try:
        first.wait_for_line(r"command id\(s\) remembered in")
        second = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        assert second.returncode == 2 and "is in use by another edison-node" in second.stderr
        first.signal(signal.SIGTERM)  # never connected: stops at once and quietly
        assert first.wait(TIMEOUT) == 0
        assert "did not acknowledge" not in first.output
    finally:
        first.stop()


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
    """The README's `mosquitto_rr -e edison/<device>/reply/...` works; a reply topic outside the device's is logged.
    The watcher, not laptop, stands by: on the Mosquitto export a user has one connection at a time."""
    laptop = login(secured, "watcher")
    nodes = NodeRunner(secured.broker, tmp_path, secured.topics)
    try:
        laptop.subscribe(STATUS)
        node = nodes.start(env={"MQTT_PASSWORD": USERS[DEVICE]}, wait_online=laptop)
        rr = subprocess.run([need_cli("mosquitto_rr"), "-h", "127.0.0.1", "-p", str(secured.broker.port),
                             "-u", "laptop", "-P", USERS["laptop"], "-t", SET, "-e", REPLY, "-m", "ON", "-W", "10"],
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
                           "--pins", "sim", "--trace", str(tmp_path / "t.jsonl"), "--state", str(tmp_path / "s")),
                tmp_path / "node.log")
    try:
        proc.wait_for_line(r"cannot reach")
        proc.signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        assert "did not acknowledge" not in proc.output
    finally:
        proc.stop()
