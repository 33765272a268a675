"""What a device gets after being offline, and what survives a restart of the embedded broker (--data)."""

from __future__ import annotations

import signal

import pytest

from tests.broker_setup import USERS, login, start_secured_amqtt
from tests.conftest import NodeRunner
from tests.helpers import TIMEOUT, Probe, read_trace

SET = "edison/edison-t/led/set"


def device(s, **kwargs):
    """The device's own persistent session (client id = user name = device id), MQTT 3.1.1 on both brokers."""
    return login(s, "edison-t", client_id="edison-t", mqtt5=False, clean_session=False, **kwargs)


def test_command_queued_while_offline_arrives_without_retain(secured):
    d = device(secured)
    d.subscribe("edison/edison-t/+/set")
    d.close()
    laptop = login(secured, "laptop")
    laptop.publish(SET, "ON")
    d = device(secured)
    try:
        msg = d.wait_for(SET, "ON")
        assert not msg.retain, "a queued command must not carry RETAIN (the node ignores retained /set)"
    finally:
        d.close()
        laptop.close()


def test_restart_with_data_keeps_retained_state_and_queued_command(tmp_path, user_files):
    data = tmp_path / "data"
    s = start_secured_amqtt(tmp_path, user_files, "--data", str(data))
    port = s.broker.port
    nodes = NodeRunner(s.broker, tmp_path, s.topics)
    node_env = {"MQTT_PASSWORD": USERS["edison-t"]}
    watcher = login(s, "watcher")
    watcher.subscribe("edison/#")
    try:
        nodes.start(env=node_env, wait_online=watcher, device="edison-t")
        laptop = login(s, "laptop")
        laptop.publish(SET, '{"state": "OFF", "id": "first"}')  # answered: the node's subscription is in place
        assert watcher.result("edison-t", "first")["ok"] is True
        nodes.stop_all()
        watcher.wait_for("edison/edison-t/status", "offline")
        laptop.publish(SET, '{"state": "ON", "id": "while-away"}')
        laptop.close()
        watcher.close()

        s.broker.proc.signal(signal.SIGTERM)
        assert s.broker.proc.wait(TIMEOUT) == 0
        s = start_secured_amqtt(tmp_path, user_files, "--data", str(data), port=port)
        s.broker.proc.wait_for_line(r"state restored .*1 session\(s\), 1 queued message")

        watcher = login(s, "watcher")
        watcher.subscribe("edison/#")
        retained = {(m.topic, m.text) for m in watcher.barrier() if m.retain}
        assert {("edison/edison-t/status", "offline"), ("edison/edison-t/led/state", "OFF")} <= retained
        nodes = NodeRunner(s.broker, tmp_path, s.topics)
        nodes.start(env=node_env, device="edison-t")
        assert watcher.result("edison-t", "while-away")["ok"] is True
        assert [c["value"] for c in read_trace(nodes.trace) if c["pin"] == 20][-1] == 1
        nodes.stop_all()
        watcher.close()

        # delivered means forgotten: a second restart does not deliver the command again
        s.broker.proc.signal(signal.SIGTERM)
        assert s.broker.proc.wait(TIMEOUT) == 0
        s = start_secured_amqtt(tmp_path, user_files, "--data", str(data), port=port)
        s.broker.proc.wait_for_line(r"state restored .*1 session\(s\), 0 queued message")
    finally:
        nodes.stop_all()
        s.broker.proc.signal(signal.SIGTERM)
        try:
            s.broker.proc.wait(TIMEOUT)
        finally:
            s.broker.proc.stop()


def test_without_data_the_log_says_state_is_in_memory(tmp_path, user_files):
    s = start_secured_amqtt(tmp_path, user_files)
    try:
        s.broker.proc.wait_for_line(r"listening on .*state is in memory")
        s.broker.proc.signal(signal.SIGINT)
        assert s.broker.proc.wait(TIMEOUT) == 0
    finally:
        s.broker.proc.stop()


def test_wrong_password_leaves_the_device_session_alone(secured):
    d = device(secured)
    d.subscribe("edison/edison-t/+/set")
    d.close()
    laptop = login(secured, "laptop")
    laptop.publish(SET, "OFF")
    for clean in (True, False):  # amqtt would drop (clean) or take over the session before checking the password
        with pytest.raises(ConnectionRefusedError):
            Probe(secured.broker, client_id="edison-t", username="edison-t", password="wrong", mqtt5=False,
                  clean_session=clean)
    d = device(secured)
    try:
        assert d.wait_for(SET, "OFF")
    finally:
        d.close()
        laptop.close()


def test_another_user_cannot_take_a_persistent_session(tmp_path, user_files):
    s = start_secured_amqtt(tmp_path, user_files)
    try:
        login(s, "laptop", client_id="shared-1", mqtt5=False, clean_session=False).close()
        for clean in (False, True):
            with pytest.raises(ConnectionRefusedError):
                login(s, "watcher", client_id="shared-1", mqtt5=False, clean_session=clean)
        s.broker.proc.wait_for_line(r"refused login: user=watcher client=shared-1: client id in use by user laptop")
    finally:
        s.broker.proc.stop()


def test_an_offline_queue_stops_at_its_limit(tmp_path, user_files):
    s = start_secured_amqtt(tmp_path, user_files, "--max-queued", "2")
    try:
        d = device(s)
        d.subscribe("edison/edison-t/+/set")
        d.close()
        laptop = login(s, "laptop")
        for n in range(3):
            laptop.publish(SET, f"c{n}")
        s.broker.proc.wait_for_line(r"dropped message on edison/edison-t/led/set for user=edison-t "
                                    r"client=edison-t: already 2 queued")
        d = device(s)
        d.wait_for(SET, "c1")
        assert [m.text for m in d.barrier()] == ["c0", "c1"]
        d.close()
        laptop.close()
    finally:
        s.broker.proc.stop()
