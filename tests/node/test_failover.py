"""Several brokers: the reconnect policy, then the real node moving between real brokers.

The policy is pure and runs on a fake clock. The rest uses real processes: a
port that accepts TCP and never answers, the embedded broker, Mosquitto
(MQTT 5) and the embedded broker (MQTT 3.1.1 only) in one list. The cluster's
failover is in tests/broker/test_nats_cluster.py.
"""

from __future__ import annotations

import json
import re
import signal

import pytest

from node.link import Session
from node.mqtt import BrokerAddress, Credentials, LinkError, LinkSettings, MqttLink, parse_brokers
from node.reconnect import MAX_DELAY, MIN_DELAY, ReconnectPolicy
from testkit.brokers import start_mosquitto, start_stock_amqtt
from testkit.mqtt import Probe
from testkit.node import DEVICE, NodeRunner
from testkit.procs import TIMEOUT
from testkit.tcpproxy import SilentPort
from testkit.users import USERS, start_secured_embedded
from tests.requires import need_mosquitto

STATUS = f"edison/{DEVICE}/status"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def policy(count: int, jitter: float = 1.0) -> tuple[ReconnectPolicy, Clock]:
    clock = Clock()
    return ReconnectPolicy(count, clock=clock, jitter=lambda: jitter), clock


def test_the_first_address_first_then_each_other_at_once_then_back_off():
    p, clock = policy(3)
    assert p.next() == (0, 0.0)
    p.failed(0)
    assert p.next() == (1, 0.0)
    p.failed(1)
    assert p.next() == (2, 0.0)
    p.failed(2)
    assert p.next() == (0, MIN_DELAY)  # every address failed: the earliest is due first, after its back-off
    clock.now += MIN_DELAY
    p.failed(0)
    assert p.next() == (1, 0.0)  # due since a while: no wait


def test_a_lost_connection_goes_to_the_next_address_at_once_and_comes_back_after_a_second():
    p, clock = policy(3)
    p.lost(1)
    assert p.next() == (2, 0.0)
    p.failed(2)
    assert p.next() == (0, 0.0)
    p.failed(0)
    index, wait = p.next()
    assert index == 1 and wait == pytest.approx(MIN_DELAY)


def test_back_off_doubles_per_address_up_to_30_s_and_a_connection_resets_it():
    p, clock = policy(1)
    waits = []
    for _ in range(8):
        p.failed(0)
        waits.append(p.next()[1])
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    p.lost(0)
    assert p.next()[1] == MIN_DELAY


def test_jitter_spreads_each_wait_between_half_and_all_of_it_never_under_a_second():
    low, _ = policy(1, jitter=0.0)
    high, _ = policy(1, jitter=1.0)
    for _ in range(6):
        low.failed(0)
        high.failed(0)
    assert low.next()[1] == MAX_DELAY / 2 and high.next()[1] == MAX_DELAY
    first, _ = policy(1, jitter=0.0)
    first.failed(0)
    assert first.next()[1] == MIN_DELAY


def test_brokers_repeated_or_comma_separated():
    assert parse_brokers(["mqtt://a", "mqtt://b:1884,mqtt://c"]) == (
        BrokerAddress("a", 1883, False), BrokerAddress("b", 1884, False), BrokerAddress("c", 1883, False))
    assert parse_brokers(None) == (BrokerAddress("127.0.0.1", 1883, False),)
    assert parse_brokers("mqtts://a, mqtts://b") == (BrokerAddress("a", 8883, True), BrokerAddress("b", 8883, True))
    with pytest.raises(LinkError, match="given twice"):
        parse_brokers(["mqtt://a", "mqtt://a:1883"])
    with pytest.raises(LinkError, match="no broker"):
        parse_brokers([" , "])
    with pytest.raises(LinkError, match="not both"):
        LinkSettings(parse_brokers("mqtt://a,mqtts://b"))
    with pytest.raises(LinkError, match="above 0"):
        LinkSettings(parse_brokers("mqtt://a"), connect_timeout=0)


@pytest.mark.parametrize("protocol, why", [("3.1.1", "no CONNACK from"), ("auto", "no answer from")])
def test_a_port_that_never_answers_is_left_after_the_connect_timeout(broker, nodes, probe, protocol, why):
    """The node asks the silent port first (the version probe, or its CONNECT), gives up after 1 s, moves on."""
    silent = SilentPort()
    try:
        if protocol == "3.1.1" and broker.mqtt5:
            protocol = "5"
        node = nodes.start("--connect-timeout", "1", "--protocol", protocol, brokers=[silent.url, broker.url],
                           wait_online=probe)
        line = node.wait_for_line(r"WARNING node\.mqtt: ")
        assert f"{why} {silent.url} within 1 s" in line and line.endswith(f"(trying {broker.url} now)"), line
        node.wait_for_line(rf"connected to {broker.url} \(MQTT ")
    finally:
        silent.close()


def test_the_node_moves_from_an_mqtt_5_broker_to_a_3_1_1_one_and_announces_itself_there(tmp_path, topics_file):
    """Mosquitto first (MQTT 5), amqtt's own broker second (3.1.1 only): the version is learnt per address."""
    mosquitto = start_mosquitto(tmp_path, need_mosquitto())
    embedded = start_stock_amqtt(tmp_path)
    nodes = NodeRunner(mosquitto, tmp_path, topics_file)
    first = Probe(mosquitto)
    second = Probe(embedded)
    try:
        first.subscribe("edison/#")
        node = nodes.start(brokers=[mosquitto.url, embedded.url], wait_online=first)
        node.wait_for_line(rf"connected to {mosquitto.url} \(MQTT 5, new session\)")
        second.subscribe("edison/#", "homeassistant/#")
        mosquitto.proc.signal(signal.SIGKILL)
        mosquitto.proc.wait()
        # A dead broker sends no will: the node's own `online`, state and discovery make the new one right.
        second.wait_for(STATUS, "online")
        second.wait_for(f"edison/{DEVICE}/led/state", "OFF")
        second.wait_for(f"homeassistant/light/{DEVICE}/led/config")
        node.wait_for_line(rf"disconnected from {mosquitto.url}: .* \(trying {embedded.url} now\)")
        node.wait_for_line(rf"broker {embedded.url} does not speak MQTT 5: using MQTT 3\.1\.1")
        node.wait_for_line(rf"connected to {embedded.url} \(MQTT 3\.1\.1, new session\)")
        second.publish(f"edison/{DEVICE}/led/set", json.dumps({"state": "ON", "id": "after-failover"}))
        assert second.result(DEVICE, "after-failover")["ok"] is True
    finally:
        nodes.stop_all()
        for p in (first, second):
            p.close()
        for b in (mosquitto, embedded):
            b.proc.stop()


@pytest.mark.parametrize("credentials, hint", [
    (Credentials(), " (MQTT_USERNAME is not set)"),
    (Credentials("edison-t", "wrong"), " as user 'edison-t'"),
])
def test_a_refused_login_is_one_line_that_says_it_is_the_login(tmp_path, user_files, logs, credentials, hint):
    secured = start_secured_embedded(tmp_path, user_files)
    link = MqttLink(LinkSettings(parse_brokers(secured.broker.url), credentials), DEVICE)
    try:
        link.start(Session())
        logs.wait_for(rf"ERROR broker {secured.broker.url} refused the connection{re.escape(hint)}: Not authorized "
                      r"\(retrying in \d\.\d s\)")
    finally:
        link.stop(timeout=0)
        secured.broker.proc.signal(signal.SIGINT)
        secured.broker.proc.wait(TIMEOUT)
        secured.broker.proc.stop()
    assert USERS[DEVICE] not in logs.text
    assert "Warning" not in secured.broker.proc.output  # no check left half-done (a coroutine never awaited)


def test_two_nodes_with_one_device_id_are_told_they_take_each_others_session(broker, nodes, probe, tmp_path):
    """Neither broker says why it closed the connection: the node tells it from connections that keep ending."""
    first = nodes.start(wait_online=probe)
    nodes.start("--state", str(tmp_path / "second-state"))
    first.wait_for_line(rf"disconnected from {broker.url}: .*another client with client id '{DEVICE}' \(a second "
                        r"node for this device\?\)")


def test_a_wrong_password_is_told_also_when_the_broker_holds_back_its_refusals(tmp_path, user_files, logs):
    """The broker answers each failed login later than the last (0.5 s, 1 s, 2 s, ...): past the connect timeout,
    the node waits for the refusal instead of reporting a network fault."""
    secured = start_secured_embedded(tmp_path, user_files)
    settings = LinkSettings(parse_brokers(secured.broker.url), Credentials("edison-t", "wrong"), connect_timeout=0.3)
    link = MqttLink(settings, DEVICE)
    try:
        link.start(Session())
        logs.wait_for(rf"ERROR broker {secured.broker.url} refused the connection as user 'edison-t': Not authorized",
                      count=2)  # the second refusal came 1 s after its CONNECT: over three times the connect timeout
    finally:
        link.stop(timeout=0)
        secured.broker.proc.stop()
    held = [line for line in logs.lines if "no CONNACK" in line]
    assert all("holding back the refusal of a wrong password" in line for line in held[:1]), held


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_a_node_stopped_while_waiting_for_an_answer_exits_at_once(nodes):
    silent = SilentPort()
    try:
        node = nodes.start("--connect-timeout", "30", brokers=[silent.url])
        node.wait_for_line(r"connecting to ")
        node.signal(signal.SIGTERM)
        assert node.wait(TIMEOUT) == 0
    finally:
        silent.close()


def test_a_refused_subscription_is_a_failed_attempt_not_a_deaf_connection(tmp_path, user_files, logs):
    """Connected but refused its commands' subscription, the link leaves and tries again, backing off."""
    secured = start_secured_embedded(tmp_path, user_files)
    link = MqttLink(LinkSettings(parse_brokers(secured.broker.url), Credentials(DEVICE, USERS[DEVICE])), DEVICE)
    try:
        link.start(Session(subscriptions=("edison/edison-u/+/set",)))  # another device's commands
        logs.wait_for(rf"ERROR broker {secured.broker.url} refused the subscription to edison/edison-u/\+/set "
                      r"\(.*\) \(retrying in 1\.\d s\)")
        logs.wait_for(r"refused the subscription to .* \(retrying in [23]\.\d s\)")  # backed off, not a loop
    finally:
        link.stop(timeout=0)
        secured.broker.proc.stop()
