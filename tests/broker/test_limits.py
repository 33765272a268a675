"""What one stranger, or one user, can make the embedded broker hold, and what the devices keep meanwhile."""

from __future__ import annotations

import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from broker.login import STALLED_AFTER
from testkit.procs import TIMEOUT
from testkit.rawmqtt import Raw, connect, publish, subscribe
from testkit.users import USERS, Secured, edison_broker, login, start_secured_embedded

DEVICE = "edison-t"


def refused_at_once(port: int, source: str) -> bool:
    """Whether a new connection from `source` is closed without a CONNECT being asked of it."""
    r = Raw(port, source=source, timeout=1.0)
    try:
        return r.read() is None
    except TimeoutError:
        return False
    finally:
        r.close()


def hold_places(port: int, sources: list[str]) -> list[Raw]:
    """One idle connection from each source, each let in (the broker waits for its CONNECT)."""
    held = [Raw(port, source=source) for source in sources]
    for r in held:
        r.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            r.read()
    return held


@contextmanager
def sixteen_login_places(tmp_path, user_files) -> Iterator[tuple[Secured, list[Raw]]]:
    """A broker with 16 login places, 2 per address; the connections a test puts in the list are closed after."""
    s = start_secured_embedded(tmp_path, user_files, "--max-pending", "16", "--connect-timeout", "5")
    held: list[Raw] = []
    try:
        yield s, held
    finally:
        for r in held:
            r.close()
        s.broker.proc.stop()


def test_a_guess_in_parallel_with_a_failed_one_is_refused_unchecked_until_the_delay_is_over(tmp_path, user_files):
    """A guesser on parallel connections gains nothing: while a failed login's delay runs, the next login as that
    user from that address is refused without a check, even with the right password; afterwards it is checked."""
    s = start_secured_embedded(tmp_path, user_files)
    proc, port = s.broker.proc, s.broker.port
    try:
        first = Raw(port, source="127.0.0.9")
        first.send(connect("guess-1", "laptop", "wrong"))  # answered only after its delay
        proc.wait_for_line(r"refused login: user=laptop client=guess-1 .*wrong password")
        right = Raw(port, source="127.0.0.9")
        assert right.login("laptop-2", "laptop", USERS["laptop"]) == 5  # not authorized, and not checked:
        proc.wait_for_line(r"refused login: user=laptop client=laptop-2 from 127\.0\.0\.9:\d+ unchecked")
        elsewhere = Raw(port, source="127.0.0.10")
        assert elsewhere.login("laptop-3", "laptop", USERS["laptop"]) == 0  # that user from elsewhere: checked
        assert first.read() is not None  # the refusal, once its delay is over
        again = Raw(port, source="127.0.0.9")
        assert again.login("laptop-4", "laptop", USERS["laptop"]) == 0
        for r in (first, right, elsewhere, again):
            r.close()
    finally:
        proc.stop()


def test_strangers_filling_the_logins_from_many_addresses_do_not_lock_out_a_known_address(tmp_path, user_files):
    with sixteen_login_places(tmp_path, user_files) as (s, held):
        device = Raw(s.broker.port)  # the device logged in before from 127.0.0.1: a known address
        assert device.login(DEVICE, DEVICE, USERS[DEVICE], clean=False) == 0
        device.close()
        held += hold_places(s.broker.port, [f"127.0.1.{n}" for n in range(16)])  # 16 addresses, every place taken
        assert refused_at_once(s.broker.port, "127.0.2.1"), "a new address must wait for a free place"
        device = Raw(s.broker.port)
        assert device.login(DEVICE, DEVICE, USERS[DEVICE], clean=False) == 0, "the known address is let in"
        device.close()
        s.broker.proc.wait_for_line(r"refused connection from 127\.0\.2\.1:\d+: 16 connections are waiting")


def test_strangers_holding_the_logins_from_a_few_addresses_cannot_keep_a_new_device_out(tmp_path, user_files):
    with sixteen_login_places(tmp_path, user_files) as (s, held):
        held += hold_places(s.broker.port, [f"127.0.1.{n % 8}" for n in range(16)])  # 8 addresses, 2 each: all taken
        device = Raw(s.broker.port, source="127.0.2.1")  # never logged in before
        assert device.login(DEVICE, DEVICE, USERS[DEVICE], clean=False) == 0, "the newcomer takes a place"
        device.close()
        held[0].sock.settimeout(TIMEOUT)
        assert held[0].read() is None, "the oldest connection of the busiest address gave its place away"
        s.broker.proc.wait_for_line(r"closed a connection from 127\.0\.1\.0 that was not logged in yet: its place "
                                    r"was given to 127\.0\.2\.1: all 16 places are taken")


def test_a_stranger_behind_the_devices_own_address_cannot_keep_it_out_with_idle_connections(tmp_path, user_files):
    with sixteen_login_places(tmp_path, user_files) as (s, held):
        held += hold_places(s.broker.port, ["127.0.0.5", "127.0.0.5"])  # all the places of one address (16 / 8)
        assert refused_at_once(s.broker.port, "127.0.0.5"), "both were let in just now: they may yet send CONNECT"
        time.sleep(STALLED_AFTER)  # from now on they count as stalled: no CONNECT for that long
        device = Raw(s.broker.port, source="127.0.0.5")
        assert device.login(DEVICE, DEVICE, USERS[DEVICE], clean=False) == 0
        device.close()
        held[0].sock.settimeout(TIMEOUT)
        assert held[0].read() is None, "the oldest idle connection of that address gave its place away"
        s.broker.proc.wait_for_line(r"closed a connection from 127\.0\.0\.5 that was not logged in yet: it sent no "
                                    r"CONNECT for 1 s, and a newer connection from 127\.0\.0\.5 wanted its place")


def test_idle_connections_to_the_tls_port_count_like_any_other(tmp_path, user_files):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    tls_port = socket.socket()
    tls_port.bind(("127.0.0.1", 0))
    port = tls_port.getsockname()[1]
    tls_port.close()
    s = start_secured_embedded(tmp_path, user_files, "--max-pending", "16", "--connect-timeout", "2",
                            "--tls-bind", f"127.0.0.1:{port}", "--tls-cert", str(tmp_path / "cert.pem"),
                            "--tls-key", str(tmp_path / "key.pem"))
    try:
        held = [Raw(port) for _ in range(2)]  # no TLS ClientHello: asyncio would keep 256 KiB for each, for 60 s
        assert refused_at_once(port, "127.0.0.1"), "the third half-open TLS connection from one address"
        for r in held:  # and the two are closed by the CONNECT timeout, not after asyncio's 60 s
            r.sock.settimeout(TIMEOUT)
            assert r.read() is None
            r.close()
        s.broker.proc.wait_for_line(r"closed connection from 127\.0\.0\.1:\d+: TLS handshake")
    finally:
        s.broker.proc.stop()


def test_one_user_cannot_fill_the_broker_and_a_device_gets_in(tmp_path, user_files):
    s = start_secured_embedded(tmp_path, user_files, "--max-connections-per-user", "3")
    held = []
    try:
        for n in range(3):
            held.append(Raw(s.broker.port))
            assert held[-1].login(f"stranger-{n}", "stranger", USERS["stranger"], keepalive=0) == 0
        fourth = Raw(s.broker.port)
        assert fourth.login("stranger-4", "stranger", USERS["stranger"]) == 3  # server unavailable
        device = Raw(s.broker.port)
        assert device.login(DEVICE, DEVICE, USERS[DEVICE]) == 0
        s.broker.proc.wait_for_line(r"user stranger already has 3 connections \(--max-connections-per-user\)")
    finally:
        for r in held:
            r.close()
        s.broker.proc.stop()


def test_persistent_sessions_per_user_are_capped(tmp_path, user_files):
    s = start_secured_embedded(tmp_path, user_files, "--max-sessions-per-user", "2")
    try:
        for n in range(2):
            login(s, "laptop", client_id=f"laptop-{n}", mqtt5=False, clean_session=False).close()
        with pytest.raises(ConnectionRefusedError):
            login(s, "laptop", client_id="laptop-9", mqtt5=False, clean_session=False)
        login(s, "laptop", client_id="laptop-1", mqtt5=False, clean_session=False).close()  # its own: fine
        login(s, "laptop", client_id="laptop-9", mqtt5=False, clean_session=True).close()  # a clean one: fine
        s.broker.proc.wait_for_line(r"user laptop already has 2 persistent sessions")
    finally:
        s.broker.proc.stop()


def test_subscriptions_are_capped_and_a_filter_repeated_is_handled_as_one_subscribe_after_another(tmp_path,
                                                                                                  user_files):
    """[MQTT-3.8.4-3]: a SUBSCRIBE naming one filter several times replaces the subscription each time and sends its
    retained messages each time, as that many SUBSCRIBEs in turn would (Mosquitto does the same)."""
    s = start_secured_embedded(tmp_path, user_files, "--max-subscriptions", "3")
    try:
        device = login(s, DEVICE, client_id=DEVICE, mqtt5=False)
        device.publish("edison/edison-t/led/state", "ON", retain=True)
        r = Raw(s.broker.port)
        assert r.login("laptop-raw", "laptop", USERS["laptop"]) == 0
        r.send(subscribe(1, [("edison/#", 1)] * 3 + [("edison/a", 0), ("edison/b", 0), ("edison/c", 0)]))
        first, body = r.read() or (0, b"")
        assert first == 0x90 and list(body[2:]) == [1] * 3 + [0, 0, 0x80]
        for _ in range(3):
            retained = r.read()
            assert retained and retained[0] & 0xF0 == 0x30 and b"edison/edison-t/led/state" in retained[1]
        r.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):  # three times, once for each
            r.read()
        s.broker.proc.wait_for_line(r"already 3 subscriptions \(--max-subscriptions\)")
        device.close()
    finally:
        s.broker.proc.stop()


def test_deep_topics_are_refused_and_a_deep_retained_message_breaks_no_subscriber(tmp_path, user_files):
    s = start_secured_embedded(tmp_path, user_files)
    try:
        deep = "edison/edison-t/" + "/".join(["x"] * 100)
        r = Raw(s.broker.port)
        assert r.login(DEVICE, DEVICE, USERS[DEVICE]) == 0
        r.send(publish(deep, b"deep", qos=1, retain=True))
        assert r.read() is None, "a topic deeper than 64 levels closes the connection"
        device = login(s, DEVICE, client_id=DEVICE, mqtt5=False)
        device.publish("edison/edison-t/" + "/".join(["y"] * 60), "60 levels", retain=True)
        watcher = login(s, "watcher")
        watcher.subscribe("edison/#")
        assert watcher.wait_for("edison/edison-t/" + "/".join(["y"] * 60)).text == "60 levels"
        assert watcher.subscribe("edison/" + "/".join(["+"] * 70), check=False)[0].is_failure
        s.broker.proc.wait_for_line(r"topic deeper than 64 levels")
        assert "Traceback" not in s.broker.proc.output
        device.close()
        watcher.close()
    finally:
        s.broker.proc.stop()


def test_retained_messages_are_capped_in_bytes(tmp_path, user_files):
    s = start_secured_embedded(tmp_path, user_files, "--max-retained-bytes", "3000")
    try:
        laptop = login(s, "laptop")
        for n in range(5):  # each costs 1,000 bytes: its 15-byte topic and 985 bytes of payload
            laptop.publish(f"edison/x{n}/y/set", "z" * 985, retain=True)
        laptop.publish("edison/x0/y/set", "", retain=True)  # forgotten: room for one more
        laptop.publish(f"edison/{'t' * 1500}/y/set", "z", retain=True)  # a long topic costs what it holds
        watcher = login(s, "watcher")
        watcher.subscribe("edison/#")
        assert sorted(m.topic for m in watcher.barrier() if m.retain) == ["edison/x1/y/set", "edison/x2/y/set"]
        s.broker.proc.wait_for_line(r"not retained: edison/x3/y/set \(1000 bytes with its topic\)")
        laptop.close()
        watcher.close()
    finally:
        s.broker.proc.stop()


def test_log_lines_cannot_be_forged_by_a_client_id(tmp_path, user_files):
    s = start_secured_embedded(tmp_path, user_files)
    try:
        r = Raw(s.broker.port)
        assert r.login("x\n2026-01-01 00:00:00,000 WARNING edison-broker: refused login: user=admin", "nobody",
                       "wrong") == 5
        line = s.broker.proc.wait_for_line(r"refused login: user=nobody client=x\\n2026")
        assert "user=admin" in line, "the forged text stays on the refusal's own line"
    finally:
        s.broker.proc.stop()


def test_a_will_on_a_wildcard_topic_closes_the_connection(tmp_path, user_files):
    s = start_secured_embedded(tmp_path, user_files)
    try:
        r = Raw(s.broker.port)
        assert r.login(DEVICE, DEVICE, USERS[DEVICE], will=("edison/edison-t/#", b"x", 1, True)) == -1
        s.broker.proc.wait_for_line(r"will topic edison/edison-t/#: wildcard in a topic name")
    finally:
        s.broker.proc.stop()


@pytest.mark.parametrize("damage, message", [
    ("garbage", "cannot use broker.sqlite3: file is not a database"),
    ("newer", "written by a newer release (layout 9"),
    ("a file", "cannot use broker.sqlite3"),
])
def test_an_unusable_data_directory_is_refused_at_start_in_one_line(tmp_path, user_files, damage, message):
    topics, passwd = user_files
    data = tmp_path / "data"
    if damage == "a file":
        data.write_text("not a directory")
    else:
        data.mkdir()
        if damage == "garbage":
            (data / "broker.sqlite3").write_bytes(b"\x00garbage" * 1000)
        else:
            db = sqlite3.connect(data / "broker.sqlite3")
            db.execute("PRAGMA user_version = 9")
            db.close()
    done = edison_broker("--config", str(topics), "--passwd", str(passwd), "--data", str(data))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_stopping_broker_under_a_subscribe_flood_exits_within_5_s(tmp_path, user_files):
    s = start_secured_embedded(tmp_path, user_files)
    try:
        device = login(s, DEVICE, client_id=DEVICE, mqtt5=False)
        for n in range(50):
            device.publish(f"edison/edison-t/out{n}/state", "x" * 1000, retain=True)
        flooders = []
        for n in range(5):  # never acknowledge, never read: each SUBSCRIBE asks for everything again
            r = Raw(s.broker.port)
            assert r.login(f"watcher-{n}", "watcher", USERS["watcher"]) == 0
            for p in range(20):
                r.send(subscribe(p + 1, [("edison/#", 1)] * 100))
            flooders.append(r)
        s.broker.proc.signal(signal.SIGTERM)
        assert s.broker.proc.wait(5.5) == 0
        for r in flooders:
            r.close()
        device.close()
    finally:
        s.broker.proc.stop()


def test_a_user_flooding_packets_without_keepalive_neither_stalls_others_nor_the_stop(tmp_path, user_files):
    """A connection whose buffer never runs dry must still let the others (and SIGTERM) have their turn."""
    import struct
    import threading
    import time

    s = start_secured_embedded(tmp_path, user_files)
    stop = threading.Event()
    flooders: list[Raw] = []
    try:
        device = login(s, DEVICE, client_id=DEVICE, mqtt5=False)
        device.subscribe(f"edison/{DEVICE}/led/set")
        laptop = login(s, "laptop", client_id="laptop-1", mqtt5=False)
        # PUBACKs for ids never used: no rights needed, nothing to answer, 4 bytes each
        chunk = b"".join(b"\x40\x02" + struct.pack("!H", 40000 + i) for i in range(16384))
        for n in range(6):
            r = Raw(s.broker.port)
            assert r.login(f"flood-{n}", "stranger", USERS["stranger"], keepalive=0) == 0
            flooders.append(r)

        def flood(r: Raw) -> None:
            while not stop.is_set():
                try:
                    r.send(chunk)
                except OSError:
                    return
        for r in flooders:
            threading.Thread(target=flood, args=(r,), daemon=True).start()
        slowest = 0.0
        for n in range(10):
            started = time.monotonic()
            laptop.publish(f"edison/{DEVICE}/led/set", f"ON {n}")
            device.wait_for(f"edison/{DEVICE}/led/set", f"ON {n}")
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.0, f"a command took {slowest:.2f} s to pass the broker while strangers flooded it"
        s.broker.proc.signal(signal.SIGTERM)
        assert s.broker.proc.wait(5.5) == 0
        device.close()
        laptop.close()
    finally:
        stop.set()
        for r in flooders:
            r.close()
        s.broker.proc.stop()
