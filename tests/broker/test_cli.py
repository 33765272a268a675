"""edison-broker's commands: users, refusals at start, limits, signals."""

from __future__ import annotations

import os
import re
import signal
import stat
import tempfile
from pathlib import Path

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from testkit.brokers import export_for
from testkit.mqtt import Broker
from testkit.procs import TIMEOUT, Proc, free_port
from testkit.users import (
    USERS,
    Secured,
    copy_users,
    edison_broker,
    login,
    start_exported_mosquitto,
    start_secured_embedded,
)
from tests.requires import need_mosquitto


def test_passwd_round_trip(tmp_path):
    pw = tmp_path / "passwd"
    for name, secret in (("edison-1", "s3cret one"), ("laptop", "other")):
        done = edison_broker("passwd", "--passwd", str(pw), "add", name, "--stdin", stdin=secret + "\n")
        assert done.returncode == 0, done.stderr
        assert secret not in done.stdout + done.stderr
    assert edison_broker("passwd", "--passwd", str(pw), "list").stdout.split() == ["edison-1", "laptop"]
    for f in (pw, tmp_path / "passwd.mosquitto"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert "s3cret" not in f.read_text()
    users = dict(line.split(":", 1) for line in pw.read_text().splitlines())
    assert PasswordHash((Argon2Hasher(),)).verify("s3cret one", users["edison-1"])
    assert (tmp_path / "passwd.mosquitto").read_text().startswith("edison-1:$7$101$")
    assert not (tmp_path / "passwd.nats").exists()  # the NATS cluster's callout reads the argon2 file itself

    assert edison_broker("passwd", "--passwd", str(pw), "delete", "edison-1").returncode == 0
    assert edison_broker("passwd", "--passwd", str(pw), "list").stdout.split() == ["laptop"]
    assert "edison-1" not in (tmp_path / "passwd.mosquitto").read_text()
    missing = edison_broker("passwd", "--passwd", str(pw), "delete", "edison-1")
    assert missing.returncode == 2 and "no user 'edison-1'" in missing.stderr
    bad = edison_broker("passwd", "--passwd", str(pw), "add", "a:b", "--stdin", stdin="x\n")
    assert bad.returncode == 2 and "user name" in bad.stderr
    empty = edison_broker("passwd", "--passwd", str(pw), "add", "someone", "--stdin", stdin="\n")
    assert empty.returncode == 2 and "empty" in empty.stderr


@pytest.mark.parametrize("args,message", [
    (["--allow-anonymous", "--bind", "0.0.0.0:1883"], "refusing to listen on 0.0.0.0:1883"),
    (["--allow-anonymous", "--ws-bind", "192.0.2.1:9001"], "refusing to listen on 192.0.2.1:9001"),
    ([], "give --passwd FILE"),
])
def test_unsafe_start_is_refused(args, message):
    done = edison_broker(*args)
    assert done.returncode == 2 and message in done.stderr


def test_sigterm_and_sigint_exit_cleanly(tmp_path, user_files):
    for signum in (signal.SIGTERM, signal.SIGINT):
        s = start_secured_embedded(tmp_path, user_files)
        client = login(s, "laptop")  # a connected client does not hold the shutdown up
        s.broker.proc.signal(signum)
        assert s.broker.proc.wait(TIMEOUT) == 0
        s.broker.proc.wait_for_line("stopped")
        client.close()


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_big_publish_is_dropped(kind, tmp_path, user_files):
    extra = ("--max-message-size", "100")
    s = (start_secured_embedded(tmp_path, user_files, *extra) if kind == "embedded"
         else start_exported_mosquitto(tmp_path, user_files, need_mosquitto(), *extra))
    try:
        # MQTT 3.1.1 on both (Mosquitto disconnects an MQTT 5 client that sends too much)
        watcher, laptop = login(s, "watcher", mqtt5=False), login(s, "laptop", client_id="laptop-1", mqtt5=False)
        watcher.subscribe("edison/#")
        laptop.publish("edison/edison-t/led/set", "x" * 101)
        laptop.publish("edison/edison-t/led/set", "y" * 100)
        watcher.wait_for("edison/edison-t/led/set", "y" * 100)
        assert ("edison/edison-t/led/set", "x" * 101) not in [(m.topic, m.text) for m in watcher.seen]
        if kind == "embedded":
            s.broker.proc.wait_for_line(r"refused publish: user=laptop client=laptop-1 topic=edison/edison-t/led/set: "
                                        r"101 bytes")
        watcher.close()
        laptop.close()
    finally:
        s.broker.proc.stop()


def test_connections_beyond_the_limit_are_refused(tmp_path, user_files):
    s = start_secured_embedded(tmp_path, user_files, "--max-connections", "1")
    try:
        first = login(s, "laptop")
        with pytest.raises(ConnectionRefusedError):  # CONNACK 3, server unavailable
            login(s, "watcher")
        s.broker.proc.wait_for_line(r"refused connection from .*already 1 connections")
        first.close()
    finally:
        s.broker.proc.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="checks what happens when Mosquitto is started by root")
def test_exported_mosquitto_started_by_root_runs_as_written(tmp_path, user_files, mosquitto_bin):
    # outside pytest's private tmp folder: Mosquitto's own user must be able to reach the files
    with tempfile.TemporaryDirectory(prefix="edison-export-", dir="/tmp") as where:
        base = Path(where)
        base.chmod(0o755)
        topics, passwd = copy_users(user_files, base)
        port = free_port()
        done = edison_broker("mosquitto-config", "--config", str(topics), "--passwd", str(passwd),
                             "--bind", f"127.0.0.1:{port}", "--data", str(base / "data"), "--out", str(base / "out"),
                             *export_for(mosquitto_bin))
        assert done.returncode == 0 and "to user mosquitto" in done.stderr, done.stderr
        conf = (base / "out" / "mosquitto.conf").read_text()
        assert "set_tcp_nodelay true" in conf and "autosave_on_changes true" in conf
        proc = Proc([mosquitto_bin, "-c", str(base / "out" / "mosquitto.conf")], tmp_path / "mosquitto.log")
        try:
            proc.wait_for_line(r"mosquitto version \S+ running")
            # only the listener asked for: a listener option before it would have opened 1883 on every interface
            assert re.findall(r"listen socket on port (\d+)", proc.output) == [str(port)], proc.output
            laptop = login(Secured(Broker("mosquitto", port, proc), topics, passwd), "laptop")
            laptop.publish("edison/edison-t/led/set", "kept", retain=True)
            laptop.close()
            proc.signal(signal.SIGTERM)
            assert proc.wait(TIMEOUT) == 0
            assert (base / "data" / "mosquitto.db").stat().st_size > 0, "the mosquitto user could not save"
        finally:
            proc.stop()


def test_mosquitto_config_needs_the_mosquitto_hashes(tmp_path, user_files):
    topics, passwd = user_files
    (tmp_path / "passwd").write_text(passwd.read_text())  # amqtt hashes only
    done = edison_broker("mosquitto-config", "--config", str(topics), "--passwd", str(tmp_path / "passwd"),
                         "--bind", f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "no Mosquitto hash" in done.stderr
    assert all(u in done.stderr for u in USERS)


@pytest.mark.parametrize("version,forced", [("2.0.11", False), ("2.0.12", False), ("2.0.13", True), ("2.1.0", True)])
def test_mosquitto_client_ids_are_forced_to_user_names_only_where_mosquitto_does_it_safely(tmp_path, user_files,
                                                                                         version, forced):
    """Before 2.0.13 a refused CONNECT without a user name removes the session it named when client ids are forced:
    anyone could silence a device. The export then leaves them free, and says what that allows."""
    topics, passwd = copy_users(user_files, tmp_path)
    done = edison_broker("mosquitto-config", "--config", str(topics), "--passwd", str(passwd), "--bind",
                         "127.0.0.1:1883", "--tls-bind", "127.0.0.1:8883", "--tls-cert", "c.pem", "--tls-key", "k.pem",
                         "--out", str(tmp_path / "out"), "--mosquitto-version", version)
    assert done.returncode == 0, done.stderr
    conf = (tmp_path / "out" / "mosquitto.conf").read_text()
    settings = re.findall(r"^use_username_as_clientid (\w+)$", conf, re.MULTILINE)
    assert settings == ["true" if forced else "false"] * 2  # on every listener
    assert (f"Mosquitto {version} removes the session a refused CONNECT named" in done.stderr) is not forced
    assert f"certfile {Path.cwd() / 'c.pem'}" in conf  # absolute: Mosquitto may start from anywhere
    assert "\nmax_inflight_messages 256\n" in conf  # the embedded broker's window (test_faults.py: why)
    shared = edison_broker("mosquitto-config", "--config", str(topics), "--passwd", str(passwd), "--bind",
                           "127.0.0.1:1883", "--out", str(tmp_path / "shared"), "--mosquitto-version", version,
                           "--several-connections-per-user")
    assert "\nuse_username_as_clientid false\n" in (tmp_path / "shared" / "mosquitto.conf").read_text()
    assert "removes the session" not in shared.stderr

