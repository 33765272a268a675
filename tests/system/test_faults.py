"""The embedded broker under faults (and the exported Mosquitto where it once lost commands): nothing acknowledged is
lost or doubled, and nobody can stall it.

Each test drives the real node through the real broker (bench/faults.py runs
the same faults on Mosquitto too, and prints the whole table).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from testkit import faults
from testkit.mqtt import Probe
from testkit.procs import TIMEOUT
from testkit.users import USERS, login, start_secured_embedded


@pytest.fixture
def embedded(tmp_path, user_files) -> Iterator[faults.BrokerUnderTest]:
    b = faults.BrokerUnderTest("embedded", tmp_path, user_files, extra=("--connect-timeout", "2"))
    yield b
    b.close()


@pytest.fixture
def device(embedded, tmp_path, user_files) -> Iterator[faults.Device]:
    d = faults.Device(embedded, tmp_path, user_files[0])
    d.start()
    yield d
    d.stop()


def no_loss(tally: faults.Tally) -> None:
    assert tally.acked == set(tally.sent), f"not every command was acknowledged: {tally}"
    assert (tally.lost, tally.doubled) == (0, 0), str(tally)


# The same faults with a 3.1.1 publisher at QoS 1 (the exchange ends with PUBACK) and an MQTT 5 one at QoS 2
# (it ends with PUBCOMP, and the broker keeps the exchange's state in between).
PUBLISHERS = [pytest.param({}, id="qos1"), pytest.param({"mqtt5": True, "qos": 2}, id="mqtt5-qos2")]


@pytest.mark.parametrize("publisher", PUBLISHERS)
def test_publisher_leaving_right_after_its_acknowledgements_loses_nothing(embedded, device, publisher):
    no_loss(faults.publisher_leaves(embedded, device, 100 if not publisher else 50, **publisher))


@pytest.mark.parametrize("publisher", PUBLISHERS)
def test_broker_sigkill_right_after_the_acknowledgements_loses_nothing(embedded, device, publisher):
    no_loss(faults.broker_killed_after_pubacks(embedded, device, 20, **publisher))


@pytest.mark.parametrize("publisher", PUBLISHERS)
def test_broker_restarts_under_a_running_node(embedded, device, publisher):
    tally = faults.broker_restarts(embedded, device, 30, restarts=3, **publisher)
    no_loss(tally)
    assert tally.broker_exit.startswith("0 "), tally.broker_exit


@pytest.mark.parametrize("mqtt5", [False, True], ids=["3.1.1", "5"])
def test_the_exported_mosquitto_carries_out_a_burst_of_qos2_commands_in_full(tmp_path, user_files, mosquitto_bin,
                                                                             mqtt5):
    """100 QoS 2 exchanges in flight from one paho publisher: Mosquitto's default window of 20 refused the rest
    (PUBREC 0x97, which paho ignores) or dropped them while answering as if accepted (3.1.1): 40 to 80 of 100.
    The export opens the embedded broker's window of 256."""
    b = faults.BrokerUnderTest("mosquitto", tmp_path, user_files, mosquitto_bin)
    d = faults.Device(b, tmp_path, user_files[0])
    try:
        d.start()
        no_loss(faults.publisher_leaves(b, d, 100, mqtt5=mqtt5, qos=2))
    finally:
        d.stop()
        b.close()


def test_node_killed_with_commands_queued(embedded, device):
    no_loss(faults.node_killed(embedded, device, 20))


def test_churn_races_nothing_and_sigterm_exits_within_5_s(embedded, device):
    tally = faults.churn(embedded, device, 100)
    no_loss(tally)
    code, took = tally.broker_exit.split(" in ")
    assert code == "0" and float(took.removesuffix(" s")) <= 5.0, tally.broker_exit
    log = embedded.log()
    assert "dictionary changed size" not in log and "Traceback" not in log, log[-3000:]


def test_login_flood_is_slowed_and_commands_go_through(embedded, device):
    no_loss(faults.login_flood(embedded, device, 50))
    embedded.broker.proc.wait_for_line(r"failed logins from 127\.0\.0\.1: next answer in [0-9.]+ s")
    embedded.broker.proc.wait_for_line(r"failed logins from .*, as edison-t: [0-9.]+ s")


def test_idle_sockets_beyond_the_limit_do_not_lock_users_out(embedded, device):
    tally = faults.idle_sockets(embedded, device, 20, sockets=120)
    no_loss(tally)
    assert tally.note == "120 of 120 idle sockets closed by the broker", tally.note
    embedded.broker.proc.wait_for_line(r"closed connection from 127\.0\.0\.1:\d+: no CONNECT within 2 s")


def test_malformed_packets_get_the_answer_mqtt_prescribes(embedded):
    assert len(faults.MALFORMED) >= 30
    wrong = faults.misanswered(embedded.port)
    assert not wrong, f"answered against MQTT (expected close, or CONNACK with a code): {wrong}"
    laptop = faults.Client(embedded, "laptop")  # still serving
    laptop.close()
    log = embedded.log()
    assert "Traceback" not in log, log[-3000:]


def test_subscribe_asking_qos_3_closes_the_connection(embedded):
    with socket.create_connection(("127.0.0.1", embedded.port), timeout=TIMEOUT) as s:
        user, pw = b"laptop", USERS["laptop"].encode()
        body = (b"\x00\x04MQTT\x04\xc2\x00\x3c\x00\x02id" + len(user).to_bytes(2, "big") + user
                + len(pw).to_bytes(2, "big") + pw)
        s.sendall(bytes([0x10, len(body)]) + body)
        assert s.recv(4) == b"\x20\x02\x00\x00"
        s.sendall(b"\x82\x0c\x00\x01\x00\x07edison/\x03")
        assert s.recv(16) == b"", "a SUBSCRIBE asking QoS 3 is malformed: the connection must be closed"


def test_mqtt5_enhanced_authentication_is_refused_with_its_reason_code(embedded):
    """AUTH is not supported: a CONNECT naming an authentication method gets 0x8C, a login without one is served."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    codes: list = []
    for method in ("SCRAM-SHA-1", None):
        codes.clear()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="v5", protocol=paho.MQTTv5)
        c.username_pw_set("laptop", USERS["laptop"])
        c.on_connect = lambda client, u, f, rc, p: codes.append(rc)
        props = Properties(PacketTypes.CONNECT)
        if method:
            props.AuthenticationMethod = method
        c.connect("127.0.0.1", embedded.port, properties=props)
        deadline = time.monotonic() + TIMEOUT
        while not codes and time.monotonic() < deadline:
            c.loop(0.2)
        faults.close_socket(c)
        assert codes and codes[0].value == (0x8C if method else 0), codes  # Bad authentication method
    embedded.broker.proc.wait_for_line(r"refused client .*: enhanced authentication \(SCRAM-SHA-1\) is not supported")
    assert "Traceback" not in embedded.log()


def test_squatting_the_device_client_id_is_refused_while_commands_flow(embedded, device):
    tally = faults.squatting(embedded, device, 30)
    no_loss(tally)
    assert tally.note.startswith("squatter admitted 0 time(s)"), tally.note


def test_another_user_cannot_squat_the_device_client_id(tmp_path, user_files):
    s = start_secured_embedded(tmp_path, user_files)
    try:
        with pytest.raises(ConnectionRefusedError):  # before the device ever connected
            login(s, "laptop", client_id="edison-t", mqtt5=False, clean_session=False)
        with pytest.raises(ConnectionRefusedError):
            login(s, "stranger", client_id="edison-t-probe", mqtt5=False)
        s.broker.proc.wait_for_line(r"refused login: user=laptop client=edison-t: client id belongs to user edison-t")
        login(s, "edison-t", client_id="edison-t", mqtt5=False, clean_session=False).close()
        login(s, "laptop", client_id="laptop-phone", mqtt5=False).close()
    finally:
        s.broker.proc.stop()


def test_device_that_died_with_the_broker_reads_offline_after_restart(embedded, device):
    watcher = login_to(embedded, "watcher")
    watcher.subscribe("edison/edison-t/status")
    watcher.wait_for("edison/edison-t/status", "online")
    watcher.close()
    embedded.kill()
    device.kill()  # dies while the broker is down: nobody saw its connection drop
    embedded.start()
    watcher = login_to(embedded, "watcher")
    watcher.subscribe("edison/edison-t/status")
    # the node's keep-alive is 5 s: its Last Will is due 7.5 s after the broker is back
    watcher.wait_for("edison/edison-t/status", "offline", timeout=TIMEOUT)
    embedded.broker.proc.wait_for_line(r"client=edison-t did not come back within 7\.5 s: published its Last Will")
    watcher.close()


def test_connection_that_stops_talking_is_closed_and_its_will_sent(embedded):
    watcher = login_to(embedded, "watcher")
    watcher.subscribe("edison/edison-u/status")
    with socket.create_connection(("127.0.0.1", embedded.port), timeout=TIMEOUT) as s:
        user, pw, will, msg = b"edison-u", USERS["edison-u"].encode(), b"edison/edison-u/status", b"offline"
        body = (b"\x00\x04MQTT\x04\xee\x00\x01\x00\x08edison-u" + len(will).to_bytes(2, "big") + will
                + len(msg).to_bytes(2, "big") + msg + len(user).to_bytes(2, "big") + user
                + len(pw).to_bytes(2, "big") + pw)  # keep-alive 1 s, will QoS 1 retained
        s.sendall(bytes([0x10, len(body)]) + body)
        assert s.recv(4) == b"\x20\x02\x00\x00"
        watcher.wait_for("edison/edison-u/status", "offline", timeout=TIMEOUT)  # then silence: half-open
        assert s.recv(16) == b""
    watcher.close()


def login_to(b: faults.BrokerUnderTest, user: str) -> Probe:
    return Probe(b.broker, username=user, password=USERS[user], mqtt5=False)
