"""MQTT 5 conformance, per packet and property: each test runs on the embedded broker and on Mosquitto wherever
Mosquitto does the same thing, so a difference shows; what only the embedded broker does is marked so."""

from __future__ import annotations

import queue
import signal
import struct
import subprocess
import threading
import time
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from broker import properties as P
from testkit.brokers import start_embedded
from testkit.mqtt import Broker
from testkit.procs import TIMEOUT
from testkit.rawmqtt import Raw, ack, connect, publish, subscribe
from testkit.users import USERS, start_secured_embedded
from tests.requires import need_cli

embedded_only = pytest.mark.parametrize("broker", ["embedded"], indirect=True)


class Client5:
    """A paho MQTT 5 client that records what the broker answers: CONNACK, SUBACK, PUBACK codes, DISCONNECT."""

    def __init__(self, broker: Broker, client_id: str = "", clean_start: bool = True, session_expiry: int | None = None,
                 user: str | None = None, password: str | None = None, will: tuple | None = None,
                 connect_props: dict | None = None, port: int | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if user:
            self.client.username_pw_set(user, password)
        if will:
            topic, payload, qos, retain, will_props = will
            self.client.will_set(topic, payload, qos, retain, properties=will_props)
        self.connack: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.pubacks: dict[int, object] = {}
        self.acked = threading.Condition()
        self.disconnects: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put((flags.session_present, rc, props))
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subacks.put(codes)
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        props = Properties(PacketTypes.CONNECT)
        if session_expiry is not None:
            props.SessionExpiryInterval = session_expiry
        for name, value in (connect_props or {}).items():
            setattr(props, name, value)
        self.client.connect("127.0.0.1", port or broker.port, keepalive=60, clean_start=clean_start,
                            properties=props)
        self.client.loop_start()
        self.session_present, self.reason, self.props = self.connack.get(timeout=TIMEOUT)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.acked:
            self.pubacks[mid] = reason_code
            self.acked.notify_all()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, **props: object):
        """Publish; the PUBACK's (PUBREC's) reason code for QoS 1 and 2."""
        p = Properties(PacketTypes.PUBLISH)
        for name, value in props.items():
            setattr(p, name, value)
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=p if props else None)
        if not qos:
            return None
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, TIMEOUT), f"no acknowledgement of {topic}"
            return self.pubacks[info.mid]

    def subscribe(self, topic: str, qos: int = 1, sub_id: int | None = None, **options: Any) -> list:
        props = None
        if sub_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        self.client.subscribe(topic, options=SubscribeOptions(qos=qos, **options), properties=props)
        return self.subacks.get(timeout=TIMEOUT)

    def next(self, timeout: float = TIMEOUT) -> Any:
        return self.messages.get(timeout=timeout)

    def nothing_more(self) -> bool:
        """Whether nothing else arrives: a SUBSCRIBE round trip orders everything sent before its SUBACK."""
        self.subscribe("barrier/never-published")
        return self.messages.empty()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Close the socket without DISCONNECT, as a crash would."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


# -- CONNECT / CONNACK -----------------------------------------------------------------


def test_an_empty_client_id_is_assigned_one(broker):
    c = Client5(broker)
    try:
        assert not c.reason.is_failure and c.props.AssignedClientIdentifier
    finally:
        c.close()


def test_session_expiry_zero_ends_the_session_with_the_connection(broker):
    c = Client5(broker, "exp-0", clean_start=False, session_expiry=0)
    c.subscribe("t/0")
    c.close()
    again = Client5(broker, "exp-0", clean_start=False, session_expiry=300)
    again.close()
    assert not again.session_present


def test_a_session_expires_after_its_interval_and_not_before(broker):
    for client_id, expiry in (("exp-short", 1), ("exp-long", 300)):
        c = Client5(broker, client_id, clean_start=False, session_expiry=expiry)
        c.subscribe("t/exp")
        c.close()
    time.sleep(2.5)  # past the one-second expiry: time itself is what is tested
    short = Client5(broker, "exp-short", clean_start=False, session_expiry=300)
    long = Client5(broker, "exp-long", clean_start=False, session_expiry=300)
    assert (short.session_present, long.session_present) == (False, True)
    short.close()
    long.close()


def test_the_brokers_session_expiry_is_the_ceiling_and_the_client_is_told(tmp_path):
    b = start_embedded(tmp_path, "--allow-anonymous", "--session-expiry", "60")
    try:
        c = Client5(b, "ceiling", clean_start=False, session_expiry=0xFFFFFFFF)
        assert c.props.SessionExpiryInterval == 60
        c.close()
        modest = Client5(b, "modest", clean_start=False, session_expiry=30)
        assert not hasattr(modest.props, "SessionExpiryInterval")  # granted as asked: nothing to say
        modest.close()
    finally:
        b.proc.stop()


@embedded_only
def test_connack_states_the_brokers_limits(broker):
    c = Client5(broker)
    try:
        assert c.props.ReceiveMaximum > 0 and c.props.TopicAliasMaximum > 0 and c.props.MaximumPacketSize > 0
    finally:
        c.close()


def test_server_keep_alive_replaces_a_longer_or_missing_one_and_is_enforced(tmp_path):
    b = start_embedded(tmp_path, "--allow-anonymous", "--max-keepalive", "1")
    try:
        r = Raw(b.port)
        r.send(connect("sleepy", keepalive=0, props=b"\x00"))
        answer = r.read()
        assert answer and answer[0] == 0x20 and answer[1][:2] == b"\x00\x00"
        props, _ = P.decode(answer[1], 2, frozenset(P.TYPES), "CONNACK")
        assert props.values[P.SERVER_KEEP_ALIVE] == 1
        assert r.read() == (0xE0, bytes([0x8D, 0]))  # held to it: Keep alive timeout after 1.5 s of silence
    finally:
        b.proc.stop()


# -- PUBLISH properties -----------------------------------------------------------------


def test_message_properties_pass_through_untouched(broker):
    sub, pub = Client5(broker), Client5(broker)
    try:
        sub.subscribe("props/t", qos=2)
        users = [("k", "v1"), ("k", "v2"), ("ü", "∞")]  # repeated keys, in order [MQTT-3.3.2-17]
        pub.publish("props/t", b"\x00\xffbinary", qos=1, PayloadFormatIndicator=0, ContentType="application/x",
                    ResponseTopic="reply/here", CorrelationData=b"\x00\x01corr", UserProperty=users)
        m = sub.next()
        assert (m.payload, m.properties.ContentType, m.properties.ResponseTopic, m.properties.CorrelationData,
                m.properties.UserProperty, m.properties.PayloadFormatIndicator) == (
            b"\x00\xffbinary", "application/x", "reply/here", b"\x00\x01corr", users, 0)
        pub.publish("props/t", "text", qos=1, PayloadFormatIndicator=1)
        assert sub.next().properties.PayloadFormatIndicator == 1
    finally:
        sub.close()
        pub.close()


def test_a_queued_message_past_its_expiry_is_not_delivered_and_the_rest_carry_what_is_left(broker):
    sub = Client5(broker, "expiry-sub", clean_start=True, session_expiry=300)
    sub.subscribe("expiry/t")
    sub.close()
    pub = Client5(broker)
    pub.publish("expiry/t", "stale", MessageExpiryInterval=1)
    pub.publish("expiry/t", "fresh", MessageExpiryInterval=60)
    pub.publish("expiry/t", "forever")
    pub.close()
    time.sleep(2.5)  # past the first one's expiry
    sub = Client5(broker, "expiry-sub", clean_start=False, session_expiry=300)
    try:
        fresh, forever = sub.next(), sub.next()
        assert (fresh.payload, forever.payload) == (b"fresh", b"forever")
        assert 50 <= fresh.properties.MessageExpiryInterval <= 58  # 60 less the time it waited
        assert not hasattr(forever.properties, "MessageExpiryInterval")
        assert sub.nothing_more()
    finally:
        sub.close()


def test_a_retained_message_past_its_expiry_is_not_sent(broker):
    pub = Client5(broker)
    pub.publish("expiry/retained", "short", retain=True, MessageExpiryInterval=1)
    pub.publish("expiry/kept", "long", retain=True, MessageExpiryInterval=600)
    pub.close()
    time.sleep(2.5)
    sub = Client5(broker)
    try:
        sub.subscribe("expiry/#")
        assert sub.next().payload == b"long" and sub.nothing_more()
    finally:
        sub.close()


def test_topic_alias_from_the_client(broker):
    sub, pub = Client5(broker), Client5(broker)
    try:
        sub.subscribe("alias/t")
        pub.publish("alias/t", "first", TopicAlias=1)  # sets alias 1
        pub.publish("", "second", TopicAlias=1)  # uses it
        assert [sub.next().payload, sub.next().payload] == [b"first", b"second"]
        assert [sub.messages.empty()] == [True]
    finally:
        sub.close()
        pub.close()


def _v5_login(port: int, client_id: str, props: list | None = None, **kwargs) -> tuple[Raw, bytes]:
    r = Raw(port)
    r.send(connect(client_id, props=P.encode(props or []), **kwargs))
    answer = r.read()
    assert answer and answer[0] == 0x20 and answer[1][1] == 0, answer
    return r, answer[1]


def _publish_of(packet: tuple[int, bytes] | None) -> tuple[str, int, bytes, dict]:
    """topic, packet id (0 at QoS 0), payload and properties of an MQTT 5 PUBLISH read raw."""
    assert packet is not None
    first, body = packet
    assert first >> 4 == 3, packet
    n = struct.unpack("!H", body[:2])[0]
    topic, pos = body[2:2 + n].decode(), 2 + n
    packet_id = 0
    if first & 0x06:
        packet_id, pos = struct.unpack("!H", body[pos:pos + 2])[0], pos + 2
    props, end = P.decode(body, pos, frozenset(P.TYPES), "PUBLISH")
    return topic, packet_id, body[end:], props.values


@embedded_only
def test_topic_alias_to_a_client_that_takes_them(broker):
    """The first message on a topic names it with an alias, the next ones carry the alias alone."""
    r, _ = _v5_login(broker.port, "alias-in", [(P.TOPIC_ALIAS_MAXIMUM, 2)])
    r.send(subscribe(1, [("aliased/#", 0)], props=b"\x00"))
    assert (r.read() or (0,))[0] == 0x90
    pub = Client5(broker)
    for topic in ("aliased/a", "aliased/a", "aliased/b", "aliased/c", "aliased/c"):
        pub.publish(topic, topic, qos=0)
    seen = []
    for _ in range(5):
        topic, _, payload, props = _publish_of(r.read())
        seen.append((topic, props.get(P.TOPIC_ALIAS), payload.decode()))
    pub.close()
    r.close()
    assert seen == [("aliased/a", 1, "aliased/a"), ("", 1, "aliased/a"), ("aliased/b", 2, "aliased/b"),
                    ("aliased/c", None, "aliased/c"), ("aliased/c", None, "aliased/c")]  # only 2 aliases allowed


def test_a_message_larger_than_the_clients_maximum_packet_size_is_not_sent_to_it(broker):
    sub = Client5(broker, connect_props={"MaximumPacketSize": 200})
    pub = Client5(broker)
    try:
        sub.subscribe("size/t")
        pub.publish("size/t", "x" * 500)
        pub.publish("size/t", "small")
        assert sub.next().payload == b"small" and sub.nothing_more()
    finally:
        sub.close()
        pub.close()


def test_the_clients_receive_maximum_holds_back_what_it_has_not_acknowledged(broker):
    r, _ = _v5_login(broker.port, "recv-max", [(P.RECEIVE_MAXIMUM, 1)])
    r.send(subscribe(1, [("flow/t", 1)], props=b"\x00"))
    assert (r.read() or (0,))[0] == 0x90
    pub = Client5(broker)
    for n in range(3):
        pub.publish("flow/t", f"{n}")
    got = []
    for _ in range(3):
        topic, packet_id, payload, _ = _publish_of(r.read())
        got.append(payload)
        r.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # the next one waits for this PUBACK
            r.read()
        r.sock.settimeout(TIMEOUT)
        r.send(ack(4, packet_id))
    pub.close()
    r.close()
    assert got == [b"0", b"1", b"2"]


@embedded_only
def test_a_client_that_exceeds_the_brokers_receive_maximum_is_disconnected_with_0x93(broker):
    r, connack = _v5_login(broker.port, "flood")
    props, _ = P.decode(connack, 2, frozenset(P.TYPES), "CONNACK")
    maximum = props.get(P.RECEIVE_MAXIMUM) or 0
    r.send(b"".join(publish(f"flood/{n}", b"x", qos=2, packet_id=n + 1, props=b"\x00") for n in range(maximum + 1)))
    answers = []
    while (packet := r.read()) is not None:  # answering each PUBREC, as a client does: the broker must read on
        answers.append(packet)                # after its DISCONNECT, or the client meets a reset, not the reason
        if packet[0] == 0x50:
            r.send(ack(6, struct.unpack("!H", packet[1][:2])[0]))
    assert answers[-1] == (0xE0, bytes([0x93, 0])), answers[-3:]  # DISCONNECT: receive maximum exceeded
    assert sum(1 for first, _ in answers if first == 0x50) == maximum  # a PUBREC for each it was allowed


# -- QoS 2 --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [paho.MQTTv311, paho.MQTTv5])
def test_qos2_is_granted_and_delivered_as_qos2_once(broker, version):
    got: queue.Queue = queue.Queue()
    granted: queue.Queue = queue.Queue()
    sub = paho.Client(CallbackAPIVersion.VERSION2, protocol=version)
    sub.on_message = lambda c, u, m: got.put(m)
    sub.on_subscribe = lambda c, u, mid, codes, props: granted.put(codes)
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    pub = Client5(broker)
    try:
        sub.subscribe("qos2/t", qos=2)
        assert [c.value for c in granted.get(timeout=TIMEOUT)] == [2]
        assert not pub.publish("qos2/t", "exactly once", qos=2).is_failure
        m = got.get(timeout=TIMEOUT)
        assert (m.payload, m.qos) == (b"exactly once", 2)
        pub.publish("qos2/t", "at most once", qos=0)
        assert got.get(timeout=TIMEOUT).qos == 0  # the lower of the two QoS
    finally:
        sub.disconnect()
        sub.loop_stop()
        pub.close()


def test_overlapping_subscriptions_deliver_the_qos2_copy(broker):
    sub, pub = Client5(broker), Client5(broker)
    try:
        sub.subscribe("over/#", qos=0)
        sub.subscribe("over/+", qos=2)
        pub.publish("over/x", "x", qos=2)
        assert max(m.qos for m in [sub.next()] + ([sub.next(0.5)] if broker.kind == "mosquitto" else [])) == 2
    finally:
        sub.close()
        pub.close()


# -- SUBSCRIBE options and identifiers ----------------------------------------------------


def test_no_local_keeps_a_clients_own_messages_from_it(broker):
    c = Client5(broker)
    other = Client5(broker)
    try:
        c.subscribe("nolocal/t", noLocal=True)
        c.publish("nolocal/t", "mine")
        other.publish("nolocal/t", "theirs")
        assert c.next().payload == b"theirs" and c.nothing_more()
    finally:
        c.close()
        other.close()


def test_retain_as_published_and_retain_handling(broker):
    pub = Client5(broker)
    pub.publish("rh/t", "kept", retain=True)
    c = Client5(broker, "rh", clean_start=True, session_expiry=60)
    try:
        c.subscribe("rh/t", retainHandling=2)  # never: no retained message
        assert c.nothing_more()
        c.subscribe("rh/t", retainHandling=1)  # only for a new subscription: this one exists
        assert c.nothing_more()
        c.client.unsubscribe("rh/t")
        c.subscribe("rh/t", retainHandling=1, retainAsPublished=True)  # new again: sent
        first = c.next()
        assert (first.payload, first.retain) == (b"kept", True)
        pub.publish("rh/t", "live", retain=True)
        assert c.next().retain  # retain as published: the live message keeps its flag
        plain = Client5(broker)
        plain.subscribe("rh/t")
        assert plain.next().retain  # retained on subscribing (handling 0)
        pub.publish("rh/t", "live again", retain=True)
        assert not plain.next().retain  # without retain as published, a live message has it cleared
        plain.close()
    finally:
        c.close()
        pub.close()


@embedded_only
def test_subscription_identifiers_come_with_the_messages_they_matched(broker):
    c, pub = Client5(broker), Client5(broker)
    try:
        c.subscribe("ids/+", sub_id=7)
        c.subscribe("ids/#", sub_id=9)
        pub.publish("ids/a", "x")
        assert sorted(c.next().properties.SubscriptionIdentifier) == [7, 9]
        assert c.nothing_more()
    finally:
        c.close()
        pub.close()


def test_a_shared_subscription_delivers_each_message_once_per_group(broker):
    a, b, plain, pub = Client5(broker), Client5(broker), Client5(broker), Client5(broker)
    try:
        a.subscribe("$share/g/shared/t")
        b.subscribe("$share/g/shared/t")
        plain.subscribe("shared/t")
        for n in range(10):
            pub.publish("shared/t", f"{n}")
        assert sorted(int(plain.next().payload) for _ in range(10)) == list(range(10))
        a.nothing_more()
        b.nothing_more()
        got = [int(m.payload) for q in (a.messages, b.messages) for m in list(q.queue)]
        assert sorted(got) == list(range(10)), got
    finally:
        for c in (a, b, plain, pub):
            c.close()


# -- Will ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [paho.MQTTv311, paho.MQTTv5])
def test_a_takeover_publishes_the_old_connections_will(broker, version):
    """[MQTT-3.1.2-8]: the old connection did not DISCONNECT, so its will goes out."""
    watcher = Client5(broker)
    watcher.subscribe("will/takeover")
    old = paho.Client(CallbackAPIVersion.VERSION2, client_id="taken", protocol=version)
    old.will_set("will/takeover", "old is gone", qos=1)
    dropped: queue.Queue = queue.Queue()
    old.on_disconnect = lambda c, u, flags, rc, props: dropped.put(rc)
    old.reconnect_delay_set(60, 60)
    old.connect("127.0.0.1", broker.port)
    old.loop_start()
    try:
        assert watcher.nothing_more()
        new = Client5(broker, "taken")
        assert watcher.next().payload == b"old is gone"
        reason = dropped.get(timeout=TIMEOUT)
        if version == paho.MQTTv5 and broker.kind == "embedded":  # Mosquitto 2.0.11 closes without a DISCONNECT
            assert reason.value == 0x8E  # Session taken over
        new.close()
    finally:
        old.loop_stop()
        watcher.close()


@embedded_only
def test_the_will_waits_its_delay_and_is_not_sent_if_the_client_returns(broker):
    watcher = Client5(broker)
    watcher.subscribe("will/delay")
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = 2
    for client_id in ("back", "gone"):
        c = Client5(broker, client_id, clean_start=True, session_expiry=60,
                    will=("will/delay", f"{client_id} left", 1, False, props))
        c.drop()
    started = time.monotonic()  # a moment after both left
    Client5(broker, "back", clean_start=False, session_expiry=60).close()
    assert watcher.next().payload == b"gone left" and time.monotonic() - started > 1.0  # not before its 2 s
    assert watcher.nothing_more()
    watcher.close()


def test_disconnect_with_will_message_sends_the_will(broker):
    watcher = Client5(broker)
    watcher.subscribe("will/asked")
    c = Client5(broker, will=("will/asked", "asked for", 1, False, None))
    c.client.disconnect(reasoncode=paho.ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
    try:
        assert watcher.next().payload == b"asked for"
    finally:
        c.client.loop_stop()
        watcher.close()


# -- DISCONNECT from the broker ------------------------------------------------------------


def test_the_broker_says_why_it_ends_a_connection(tmp_path):
    b = start_embedded(tmp_path, "--allow-anonymous", "--max-message-size", "100")
    try:
        r, _ = _v5_login(b.port, "too-large")
        r.send(publish("t", b"x" * 70_000, props=b"\x00"))
        assert r.read() == (0xE0, bytes([0x95, 0])) and r.read() is None  # Packet too large
        r, _ = _v5_login(b.port, "idle", keepalive=1)
        assert r.read() == (0xE0, bytes([0x8D, 0])) and r.read() is None  # Keep alive timeout
        r, _ = _v5_login(b.port, "bad-alias")
        r.send(publish("", b"x", props=P.encode([(P.TOPIC_ALIAS, 3)])))
        assert r.read() == (0xE0, bytes([0x82, 0]))  # Protocol error: an alias never set
        r, _ = _v5_login(b.port, "auth")
        r.send(b"\xf0\x00")
        assert r.read() == (0xE0, bytes([0x82, 0]))  # AUTH without an authentication method
        r, _ = _v5_login(b.port, "stays")
        b.proc.signal(signal.SIGTERM)
        assert r.read() == (0xE0, bytes([0x8B, 0])) and r.read() is None  # Server shutting down
        assert b.proc.wait(TIMEOUT) == 0
    finally:
        b.proc.stop()


# -- refusals told -------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [1, 2])
def test_a_refused_publish_and_subscribe_get_0x87_and_the_log_names_the_rule(tmp_path, user_files, qos):
    s = start_secured_embedded(tmp_path, user_files)
    try:
        c = Client5(s.broker, "laptop-1", user="laptop", password=USERS["laptop"])
        # paho 2.2 ignores a PUBREC's reason code and sends PUBREL anyway: it learns of the refusal from the PUBCOMP
        # (0x92, no such exchange), so the PUBREC is read raw below
        assert c.publish("edison/edison-t/led/state", "forged", qos=qos).value == (0x87 if qos == 1 else 0x92)
        if qos == 2:
            r, _ = _v5_login(s.broker.port, "laptop-2", user="laptop", password=USERS["laptop"])
            r.send(publish("edison/edison-t/led/state", b"forged", qos=2, packet_id=5, props=b"\x00"))
            assert r.read() == (0x50, b"\x00\x05\x87")  # PUBREC: not authorized
            r.close()
        assert c.publish("edison/edison-t/led/set", "ON", qos=qos).value in (0, 0x10)  # allowed
        assert [code.value for code in c.subscribe("#")] == [0x87]
        c.close()
        s.broker.proc.wait_for_line(r"refused publish: user=laptop client=laptop-1 topic=edison/edison-t/led/state: "
                                    r"access rule: user laptop may publish only to edison/\+/\+/set")
        s.broker.proc.wait_for_line(r"refused subscribe: user=laptop client=laptop-1 topic=#: access rule: user "
                                    r"laptop may subscribe only to ")
    finally:
        s.broker.proc.stop()


# -- request / response with the command-line tools ---------------------------------------


def test_mosquitto_rr_gets_its_reply_from_a_responder(broker):
    """The README's request/response: mosquitto_rr publishes with a response topic, a responder answers there."""
    rr = need_cli("mosquitto_rr")
    responder = Client5(broker)
    responder.subscribe("rr/request")

    def answer() -> None:
        m = responder.next()
        responder.publish(m.properties.ResponseTopic, b"pong " + m.payload, qos=1,
                          CorrelationData=m.properties.CorrelationData)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        out = subprocess.run([rr, "-V", "5", "-h", "127.0.0.1", "-p", str(broker.port), "-t",
                              "rr/request", "-e", "rr/reply/laptop", "-m", "ping", "-q", "1", "-W", "10",
                              "-D", "publish", "correlation-data", "c-42", "-F", "%p %D"],
                             capture_output=True, text=True, timeout=TIMEOUT)
        assert (out.returncode, out.stdout.strip()) == (0, "pong ping c-42"), out
    finally:
        thread.join(TIMEOUT)
        responder.close()


def test_a_session_expiry_counts_toward_the_persistent_sessions_of_a_user(tmp_path, user_files):
    """On MQTT 5 a session outlives its connection by its expiry, not by clean start: the limit counts those."""
    s = start_secured_embedded(tmp_path, user_files, "--max-sessions-per-user", "1")
    try:
        Client5(s.broker, "laptop-a", user="laptop", password=USERS["laptop"], session_expiry=60).close()
        refused = Client5(s.broker, "laptop-b", user="laptop", password=USERS["laptop"], session_expiry=60)
        refused.client.loop_stop()
        assert refused.reason.value == 0x97  # Quota exceeded
        s.broker.proc.wait_for_line(r"already has 1 persistent sessions \(--max-sessions-per-user\)")
        Client5(s.broker, "laptop-c", user="laptop", password=USERS["laptop"], session_expiry=0).close()
    finally:
        s.broker.proc.stop()


def test_a_devices_client_id_and_the_message_size_limit_hold_on_mqtt5(tmp_path, user_files):
    """What the broker promised on 3.1.1 holds on MQTT 5, now with the reason said."""
    s = start_secured_embedded(tmp_path, user_files, "--max-message-size", "100")
    try:
        squatter = Client5(s.broker, "edison-t", user="laptop", password=USERS["laptop"])
        squatter.client.loop_stop()
        assert squatter.reason.value == 0x87  # the device's client id: not authorized
        s.broker.proc.wait_for_line(r"refused login: user=laptop client=edison-t: client id belongs to user edison-t")
        laptop = Client5(s.broker, "laptop-1", user="laptop", password=USERS["laptop"])
        assert laptop.publish("edison/edison-t/led/set", "x" * 101).value == 0x97  # quota exceeded
        assert not laptop.publish("edison/edison-t/led/set", "ON").is_failure
        laptop.close()
    finally:
        s.broker.proc.stop()
