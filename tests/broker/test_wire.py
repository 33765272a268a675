"""The wire format, both MQTT versions: every field decoded, malformed packets told apart with a reason, any bytes
giving a packet or a clear refusal."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import properties as P
from broker import wire


def connect_body(flags: int = 0x02, client_id: bytes = b"id", rest: bytes = b"") -> bytes:
    return b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id + rest


def test_connect_decodes_every_field():
    rest = b"\x00\x01t\x00\x02wm\x00\x04user\x00\x02pw"
    c = wire.parse_connect(wire.CONNECT, 0, connect_body(0xEC, b"dev", rest))  # user, password, will QoS 1 retained
    assert c == wire.Connect("dev", False, 60, wire.Will("t", b"wm", 1, True), "user", b"pw")


@pytest.mark.parametrize("body,reason", [
    (connect_body(client_id=b"\xff\xfe"), "not UTF-8"),
    (connect_body(client_id=b"a\x00"), r"U\+0000"),
    (connect_body(flags=0x03), "reserved"),
    (connect_body(flags=0x1E, rest=b"\x00\x01t\x00\x01m"), "will QoS 3"),
    (connect_body(flags=0x42, rest=b"\x00\x02pw"), "password without a user name"),
    (connect_body() + b"zz", "unexpected byte"),
    (b"\x00\x04MQTX\x04\x02\x00\x3c\x00\x02id", "not MQTT"),
])
def test_malformed_connects_say_why(body, reason):
    with pytest.raises(wire.Malformed, match=reason):
        wire.parse_connect(wire.CONNECT, 0, body)


def test_other_protocol_versions_are_told_apart_from_garbage():
    with pytest.raises(wire.UnsupportedProtocol, match="protocol level 6"):
        wire.parse_connect(wire.CONNECT, 0, b"\x00\x04MQTT\x06\x02\x00\x3c\x00\x00\x02id")
    with pytest.raises(wire.UnsupportedProtocol, match="MQTT 3.1"):
        wire.parse_connect(wire.CONNECT, 0, b"\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02id")


def split(packet: bytes) -> tuple[int, int, bytes]:
    """(type, flags, body) of one encoded packet with a one-byte remaining length."""
    assert packet[1] == len(packet) - 2
    return packet[0] >> 4, packet[0] & 0x0F, packet[2:]


def test_the_client_side_reads_back_what_each_side_writes():
    """The fleet benchmark's devices write packets the broker's strict decoder takes, and read the broker's."""
    assert wire.parse_connect(*split(wire.connect("dev-1", False, 600))) == wire.Connect(
        "dev-1", False, 600, None, None, None)
    assert wire.parse_connect(*split(wire.connect("d", True, 0, "user", b"pw"))) == wire.Connect(
        "d", True, 0, None, "user", b"pw")
    assert wire.parse(*split(wire.subscribe(9, [("a/+/set", 1), ("b", 0)]))) == wire.Subscribe(
        9, (("a/+/set", 1), ("b", 0)))
    assert wire.parse_from_broker(*split(wire.connack(True, wire.ACCEPTED))) == wire.Connack(True, 0)
    assert wire.parse_from_broker(*split(wire.suback(9, [1, 0x80]))) == wire.Suback(9, (1, 0x80))
    assert wire.parse_from_broker(*split(wire.ack(wire.PUBACK, 3))) == wire.Ack(wire.PUBACK, 3)
    assert wire.parse_from_broker(*split(wire.PINGRESP_PACKET)) == wire.Control(wire.PINGRESP)
    with pytest.raises(wire.Malformed, match="not one this client reads"):
        wire.parse_from_broker(*split(wire.PINGREQ_PACKET))


def test_subscribe_refuses_qos_3_and_reserved_bits():
    assert wire.parse(wire.SUBSCRIBE, 2, b"\x00\x07\x00\x01a\x01") == wire.Subscribe(7, (("a", 1),))
    for options in (3, 4, 0x81):
        with pytest.raises(wire.Malformed):
            wire.parse(wire.SUBSCRIBE, 2, b"\x00\x07\x00\x01a" + bytes([options]))


def test_publish_round_trip():
    data = wire.publish("a/b", b"payload", 1, True, 42, dup=True)
    kind, flags = data[0] >> 4, data[0] & 0x0F
    assert wire.parse(kind, flags, data[2:]) == wire.Publish("a/b", b"payload", 1, True, True, 42)


def test_packet_size_is_refused_before_the_body_is_read():
    async def read_size_only():
        data = iter([b"\x30", b"\xff", b"\xff", b"\x7f"])

        async def read(n: int) -> bytes:
            return next(data)  # a body read would raise StopIteration

        return await wire.read_packet(read, 1000)

    with pytest.raises(wire.TooLarge):
        asyncio.run(read_size_only())


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 15), st.integers(0, 15), st.binary(max_size=80))
def test_decoding_any_bytes_gives_a_packet_or_malformed(kind, flags, body):
    for decode in (wire.parse_connect, wire.parse):
        try:
            decode(kind, flags, body)
        except wire.Malformed:
            pass


def test_subscribe_with_packet_id_0_is_malformed():
    with pytest.raises(wire.Malformed, match="packet id 0"):
        wire.parse(wire.SUBSCRIBE, 2, b"\x00\x00\x00\x01a\x01")


@settings(max_examples=500, deadline=None)
@given(st.integers(1, 15), st.integers(0, 15), st.binary(max_size=60), st.booleans())
def test_any_bytes_after_connect_decode_or_raise_malformed_with_a_reason_code(kind, flags, body, v5):
    """Whatever a client sends, the codec answers a packet or Malformed carrying the reason code to send back."""
    try:
        wire.parse(kind, flags, body, v5)
    except wire.Malformed as exc:
        assert str(exc) and 0x80 <= exc.code <= 0xA2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_in_an_mqtt5_connect_decode_or_raise_malformed(rest):
    try:
        wire.parse_connect(wire.CONNECT, 0, b"\x00\x04MQTT\x05\x02\x00\x3c" + rest)
    except wire.Malformed as exc:
        assert str(exc)


def test_mqtt5_publish_properties_are_forwarded_as_they_came_and_the_rest_read():
    own = P.encode([(P.USER_PROPERTY, ("k", "v")), (P.CORRELATION_DATA, b"\x00c"), (P.USER_PROPERTY, ("k", "w"))])
    block = P.encode([(P.MESSAGE_EXPIRY, 30), (P.TOPIC_ALIAS, 2)], own[1:])  # own[0] is its length
    p = wire.parse(wire.PUBLISH, 0x02, b"\x00\x01t\x00\x07" + block + b"payload", v5=True)
    assert p == wire.Publish("t", b"payload", 1, False, False, 7, own[1:], 30, 2)
    with pytest.raises(wire.Malformed, match="may not carry") as refused:
        wire.parse(wire.PUBLISH, 0x02, b"\x00\x01t\x00\x07" + P.encode([(P.SUBSCRIPTION_ID, 3)]), v5=True)
    assert refused.value.code == wire.PROTOCOL_ERROR  # [MQTT-3.3.4-6]
    with pytest.raises(wire.Malformed, match="twice"):
        wire.parse(wire.PUBLISH, 0x02, b"\x00\x01t\x00\x07" + P.encode([(P.CONTENT_TYPE, "a"), (P.CONTENT_TYPE, "b")]),
                   v5=True)
