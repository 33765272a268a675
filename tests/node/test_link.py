"""The paho link's own behaviour, without a broker: settings, log lines, message conversion, a closed port."""

from __future__ import annotations

import socket

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from node.link import Incoming, Message, Session
from node.mqtt import BrokerAddress, Credentials, LinkError, LinkSettings, MqttLink, _incoming
from testkit.procs import free_port


def closed_port_link(**credentials: str) -> MqttLink:
    settings = LinkSettings(BrokerAddress.parse(f"mqtt://127.0.0.1:{free_port()}"), Credentials(**credentials),
                            protocol="3.1.1")
    return MqttLink(settings, "t")


@pytest.mark.parametrize("url, error", [
    ("http://host", "expected mqtt://"),
    ("mqtt://user:pw@host", "MQTT_USERNAME"),
    ("mqtt://", "no host"),
    ("mqtt://host:99999", "invalid port"),
    ("mqtt://host:1883/edison", "MQTT has no paths"),
    ("mqtts://host/?x=1", "MQTT has no paths"),
])
def test_bad_broker_urls(url, error):
    with pytest.raises(LinkError, match=error):
        BrokerAddress.parse(url)


def test_credentials_from_environment(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    creds = Credentials.from_env({"MQTT_USERNAME": "edison-1", "MQTT_PASSWORD_FILE": str(secret)})
    assert (creds.username, creds.password) == ("edison-1", "s3cret")
    assert "s3cret" not in repr(creds)
    with pytest.raises(LinkError, match="not both"):
        Credentials.from_env({"MQTT_USERNAME": "u", "MQTT_PASSWORD": "p", "MQTT_PASSWORD_FILE": str(secret)})
    with pytest.raises(LinkError, match="MQTT_USERNAME is not"):
        Credentials.from_env({"MQTT_PASSWORD": "p"})


def test_an_exception_in_a_callback_is_logged_and_does_not_escape(caplog):
    def explode(message: Incoming) -> None:
        raise RuntimeError("boom")

    link = closed_port_link()
    link._session = Session(on_message=explode)
    link._on_message(link._client, None, paho.MQTTMessage(topic=b"t"))  # what paho's network thread calls
    assert "error in MQTT callback _on_message" in caplog.text and "boom" in caplog.text


def test_an_unreachable_broker_is_one_line_per_attempt_and_stopping_does_not_warn(logs):
    link = closed_port_link()
    link.start(Session())
    line = logs.wait_for(r"cannot reach mqtt://127\.0\.0\.1:\d+: .*Connection refused.* \(retrying in 1\.\d s\)")
    assert link.stop(timeout=1.0) is True  # nothing was ever sent, so nothing is unacknowledged
    assert logs.lines.count(line) >= 1 and "disconnected" not in logs.text


def test_messages_cross_the_link_in_the_projects_own_type():
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "edison/d/reply/x"
    props.CorrelationData = b"\x01c"
    props.MessageExpiryInterval = 30
    props.UserProperty = [("k", "v")]
    raw = paho.MQTTMessage(topic=b"edison/d/led/set")
    raw.payload, raw.qos, raw.retain, raw.dup, raw.properties = b"ON", 1, False, True, props
    assert _incoming(raw) == Incoming("edison/d/led/set", b"ON", 1, False, "edison/d/reply/x", b"\x01c", 30,
                                      (("k", "v"),), dup=True)
    plain = paho.MQTTMessage(topic=b"t")  # MQTT 3.1.1: no properties at all
    assert _incoming(plain) == Incoming("t", b"", 0)


def test_a_publish_paho_refuses_is_logged_not_raised(caplog):
    link = closed_port_link()
    assert link.publish(Message("edison/+/reply", b"x")) is None
    assert "publish to 'edison/+/reply' not queued" in caplog.text


def test_tcp_nodelay_is_set_on_the_socket():
    link = closed_port_link()
    with socket.socket() as sock:
        link._on_socket_open(link._client, None, sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
