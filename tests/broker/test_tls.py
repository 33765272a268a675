"""TLS and WebSocket listeners share users and rules; a client that does not trust the CA cannot connect."""

from __future__ import annotations

import re
import signal
import ssl

import pytest
import trustme

from node.link import Session
from node.mqtt import LinkSettings, MqttLink, parse_brokers
from testkit.brokers import start_embedded
from testkit.mqtt import Probe
from testkit.procs import TIMEOUT, free_port
from testkit.users import edison_broker, login, start_exported_mosquitto, start_secured_embedded
from tests.requires import need_mosquitto


@pytest.fixture(params=["embedded", "mosquitto"])
def tls_broker(request, tmp_path, user_files):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    tls_port, ws_port = free_port(), free_port()
    extra = ("--tls-bind", f"127.0.0.1:{tls_port}", "--tls-cert", str(paths["cert"]), "--tls-key", str(paths["key"]),
             "--ws-bind", f"127.0.0.1:{ws_port}")
    if request.param == "embedded":
        s = start_secured_embedded(tmp_path, user_files, *extra)
    else:
        s = start_exported_mosquitto(tmp_path, user_files, need_mosquitto(), *extra)
    yield s, paths["ca"], tls_port, ws_port
    s.broker.proc.signal(signal.SIGTERM)
    try:
        assert s.broker.proc.wait(TIMEOUT) == 0
    finally:
        s.broker.proc.stop()


def test_tls_client_trusting_the_ca_connects_and_others_fail(tls_broker, tmp_path):
    s, ca, tls_port, _ = tls_broker
    watcher = login(s, "watcher", port=tls_port, tls_ca=ca)
    watcher.subscribe("edison/#")
    laptop = login(s, "laptop", port=tls_port, tls_ca=ca)
    laptop.publish("edison/edison-t/led/set", "ON")
    assert watcher.wait_for("edison/edison-t/led/set", "ON")
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        login(s, "laptop", port=tls_port, tls_ca=other_ca)
    for c in (watcher, laptop):
        c.close()


def test_websocket_listener_has_the_same_users(tls_broker):
    s, _, _, ws_port = tls_broker
    with pytest.raises(ConnectionRefusedError):
        Probe(s.broker, username="laptop", password="wrong", port=ws_port, transport="websockets")
    ws = login(s, "laptop", port=ws_port, transport="websockets")
    ws.close()


def test_plain_mqtt_or_silence_on_the_websocket_port_is_closed_and_logged_in_one_line(tmp_path, user_files):
    from testkit.rawmqtt import Raw, connect

    ws_port = free_port()
    s = start_secured_embedded(tmp_path, user_files, "--ws-bind", f"127.0.0.1:{ws_port}", "--connect-timeout", "1")
    try:
        mqtt = Raw(ws_port)
        mqtt.send(connect("laptop-1", "laptop", "x"))  # MQTT where an HTTP upgrade belongs: never a whole line
        garbage = Raw(ws_port)
        garbage.send(b"\x10 garbage\r\n\r\n")
        silent = Raw(ws_port)  # says nothing at all
        for r in (garbage, mqtt, silent):  # all closed, the last two by --connect-timeout
            try:
                while r.sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            r.close()
        s.broker.proc.wait_for_line(r"WARNING edison-broker: a WebSocket opening handshake failed: ")
        s.broker.proc.signal(signal.SIGTERM)
        assert s.broker.proc.wait(TIMEOUT) == 0
        assert "Traceback" not in s.broker.proc.output, "a failed handshake is one line, not a traceback"
    finally:
        s.broker.proc.stop()


@pytest.mark.parametrize("cert, key, problem", [
    ("key", "cert", r"--tls-cert \S+key\.pem: no PEM certificate in it \(it holds a private key: are --tls-cert and "
                    r"--tls-key swapped\?\)"),
    ("cert", "other-key", r"--tls-key \S+other-key\.pem is not the private key of the certificate in --tls-cert "
                          r"\S+cert\.pem"),
])
def test_a_wrong_certificate_or_key_is_named_at_start(tmp_path, cert, key, problem):
    ca = trustme.CA()
    issued, other = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    done = edison_broker("--allow-anonymous", "--bind", f"127.0.0.1:{free_port()}",
                         "--tls-bind", f"127.0.0.1:{free_port()}", "--tls-cert", str(tmp_path / f"{cert}.pem"),
                         "--tls-key", str(tmp_path / f"{key}.pem"))
    assert done.returncode == 2 and re.search(problem, done.stderr), done.stderr


def test_mqtt_url_aimed_at_the_tls_port_says_to_use_mqtts(tmp_path, logs):
    """The TLS listener closes a plain CONNECT unanswered: the node's line says the port speaks TLS."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    tls_port = free_port()
    broker = start_embedded(tmp_path, "--allow-anonymous", "--tls-bind", f"127.0.0.1:{tls_port}",
                         "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"))
    link = MqttLink(LinkSettings(parse_brokers(f"mqtt://127.0.0.1:{tls_port}")), "edison-t")
    try:
        link.start(Session())
        logs.wait_for(rf"closed the connection before its CONNACK .*: it speaks TLS, so give it as "
                      rf"mqtts://127\.0\.0\.1:{tls_port} ")
    finally:
        link.stop(timeout=0)
        broker.proc.stop()
