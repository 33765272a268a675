"""What a device gets after being offline, and what survives a restart of the embedded broker (--data)."""

from __future__ import annotations

import signal

import pytest

from broker import properties as P
from testkit.mqtt import Probe
from testkit.node import NodeRunner
from testkit.procs import TIMEOUT, read_trace
from testkit.rawmqtt import Raw, ack, connect, publish, subscribe
from testkit.users import USERS, login, start_secured_embedded

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
    s = start_secured_embedded(tmp_path, user_files, "--data", str(data))
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
        s = start_secured_embedded(tmp_path, user_files, "--data", str(data), port=port)
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
        s = start_secured_embedded(tmp_path, user_files, "--data", str(data), port=port)
        s.broker.proc.wait_for_line(r"state restored .*1 session\(s\), 0 queued message")
    finally:
        nodes.stop_all()
        s.broker.proc.signal(signal.SIGTERM)
        try:
            s.broker.proc.wait(TIMEOUT)
        finally:
            s.broker.proc.stop()


def test_without_data_the_log_says_state_is_in_memory(tmp_path, user_files):
    s = start_secured_embedded(tmp_path, user_files)
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
    s = start_secured_embedded(tmp_path, user_files)
    try:
        login(s, "laptop", client_id="shared-1", mqtt5=False, clean_session=False).close()
        for clean in (False, True):
            with pytest.raises(ConnectionRefusedError):
                login(s, "watcher", client_id="shared-1", mqtt5=False, clean_session=clean)
        s.broker.proc.wait_for_line(r"refused login: user=watcher client=shared-1: client id in use by user laptop")
    finally:
        s.broker.proc.stop()


def test_an_offline_queue_stops_at_its_limit(tmp_path, user_files):
    s = start_secured_embedded(tmp_path, user_files, "--max-queued", "2")
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


@pytest.mark.parametrize("version", [4, 5])
def test_a_qos2_exchange_survives_a_sigkill_at_each_step_neither_lost_nor_doubled(tmp_path, user_files, version):
    """The device's QoS 2 session and the laptop's QoS 2 publish, with the broker killed after each step: after the
    restart each side resumes where it stood (same packet ids), and the command reaches the device once."""
    data = tmp_path / "data"
    props = b"\x00" if version == 5 else None
    connect_props = P.encode([(P.SESSION_EXPIRY, 3600)]) if version == 5 else None

    def restart(s):
        s.broker.proc.signal(signal.SIGKILL)
        s.broker.proc.wait(TIMEOUT)
        return start_secured_embedded(tmp_path, user_files, "--data", str(data), port=s.broker.port)

    def device_login(s) -> Raw:
        r = Raw(s.broker.port)
        r.send(connect("edison-t", "edison-t", USERS["edison-t"], clean=False, props=connect_props))
        answer = r.read()
        assert answer and answer[0] == 0x20 and answer[1][1] == 0, answer
        return r

    def laptop_login(s) -> Raw:
        r = Raw(s.broker.port)
        r.send(connect("laptop-q2", "laptop", USERS["laptop"], clean=False, props=connect_props))
        answer = r.read()
        assert answer and answer[0] == 0x20 and answer[1][1] == 0, answer
        return r

    s = start_secured_embedded(tmp_path, user_files, "--data", str(data))
    try:
        d = device_login(s)
        d.send(subscribe(1, [(SET, 2)], props=props))
        assert d.read() == (0x90, b"\x00\x01" + (b"\x00" if version == 5 else b"") + b"\x02")
        laptop = laptop_login(s)
        laptop.send(publish(SET, b"ON", qos=2, packet_id=9, props=props))
        assert laptop.read() == (0x50, b"\x00\x09")  # PUBREC: routed and on disk
        first = d.read()
        assert first and first[0] & 0xF6 == 0x34  # QoS 2 PUBLISH
        packet_id = first[1][len(SET) + 2:len(SET) + 4]

        s = restart(s)  # 1: the laptop has its PUBREC, the device its PUBLISH, nobody answered yet
        laptop, d = laptop_login(s), device_login(s)
        laptop.send(publish(SET, b"ON", qos=2, packet_id=9, props=props))  # sent again, DUP or not: not routed again
        assert laptop.read() == (0x50, b"\x00\x09")
        again = d.read()
        assert again and again[0] & 0xF6 == 0x34 and again[1][len(SET) + 2:len(SET) + 4] == packet_id  # same id
        d.send(ack(5, int.from_bytes(packet_id, "big")))  # PUBREC
        assert d.read() == (0x62, packet_id)  # PUBREL

        s = restart(s)  # 2: the device sent PUBREC and got PUBREL; the laptop still owes its PUBREL
        laptop, d = laptop_login(s), device_login(s)
        assert d.read() == (0x62, packet_id)  # only the PUBREL again: the message is not sent a second time
        d.send(ack(7, int.from_bytes(packet_id, "big")))  # PUBCOMP
        laptop.send(ack(6, 9))  # PUBREL
        assert laptop.read() == (0x70, b"\x00\x09")  # PUBCOMP

        s = restart(s)  # 3: everything is done with: nothing is sent again
        laptop, d = laptop_login(s), device_login(s)
        d.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            d.read()
        s.broker.proc.wait_for_line(r"state restored .* 0 queued message")
    finally:
        s.broker.proc.stop()
