"""MQTT 3.1.1 and 5 packets on the wire: strict decoding of what clients send, encoding of what the broker
sends, and the mirror for a light client (the fleet benchmark's simulated devices).

The broker reads every packet whole (its size known from the fixed header
before a byte of the body is read) and decodes it here, refusing what
MQTT calls malformed: ill-formed UTF-8 or U+0000 in a string [MQTT-1.5.3],
non-zero reserved flags, QoS 3, a body longer or shorter than its fields, a
property the packet may not carry. The connection is then closed (on MQTT 5
after a DISCONNECT with the reason code `Malformed.code`), as the standard
prescribes; nothing here raises anything but `Malformed` for bad input. The
version is the CONNECT's protocol level, and every packet after it is read
and written in that version.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from broker import properties as P

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

PROTOCOL_LEVEL, MQTT5 = 4, 5  # MQTT 3.1.1, MQTT 5.0
# Reason codes (MQTT 5.0, 2.4); a 3.1.1 CONNACK carries the return code `V3_CONNACK` maps them to.
ACCEPTED = SUCCESS = 0
NO_MATCHING_SUBSCRIBERS, NO_SUBSCRIPTION_EXISTED, DISCONNECT_WITH_WILL = 0x10, 0x11, 0x04
UNSPECIFIED, MALFORMED, PROTOCOL_ERROR, IMPLEMENTATION_SPECIFIC = 0x80, 0x81, 0x82, 0x83
UNSUPPORTED_VERSION, CLIENT_ID_NOT_VALID, BAD_LOGIN, NOT_AUTHORIZED = 0x84, 0x85, 0x86, 0x87
SERVER_UNAVAILABLE, SERVER_BUSY, SHUTTING_DOWN, BAD_AUTH_METHOD = 0x88, 0x89, 0x8B, 0x8C
KEEP_ALIVE_TIMEOUT, SESSION_TAKEN_OVER, TOPIC_FILTER_INVALID, TOPIC_NAME_INVALID = 0x8D, 0x8E, 0x8F, 0x90
PACKET_ID_IN_USE, PACKET_ID_NOT_FOUND, RECEIVE_MAXIMUM_EXCEEDED, TOPIC_ALIAS_INVALID = 0x91, 0x92, 0x93, 0x94
PACKET_TOO_LARGE, QUOTA_EXCEEDED, PAYLOAD_FORMAT_INVALID = 0x95, 0x97, 0x99
SHARED_NOT_SUPPORTED, SUBSCRIPTION_IDS_NOT_SUPPORTED = 0x9E, 0xA1
SUBSCRIBE_FAILURE = UNSPECIFIED
V3_CONNACK = {UNSUPPORTED_VERSION: 1, CLIENT_ID_NOT_VALID: 2, SERVER_UNAVAILABLE: 3, SERVER_BUSY: 3,
              QUOTA_EXCEEDED: 3, BAD_LOGIN: 4,
              NOT_AUTHORIZED: 5, BAD_AUTH_METHOD: 5}
# 3.1.1 names of the CONNACK return codes
UNACCEPTABLE_PROTOCOL, IDENTIFIER_REJECTED = UNSUPPORTED_VERSION, CLIENT_ID_NOT_VALID

# The fixed-header flags each client packet must carry [MQTT-2.2.2-1]; PUBLISH carries its own.
_FLAGS = {CONNECT: 0, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBSCRIBE: 2, UNSUBSCRIBE: 2, PINGREQ: 0,
          DISCONNECT: 0, AUTH: 0}


class Malformed(Exception):
    """The bytes are not a valid MQTT packet from a client; the message says why, `code` is the MQTT 5 reason."""

    def __init__(self, message: str, code: int = MALFORMED) -> None:
        super().__init__(message)
        self.code = code


class UnsupportedProtocol(Malformed):
    """A well-formed CONNECT of another MQTT version: answered with CONNACK 1 before closing."""

    def __init__(self, level: int) -> None:
        name = {3: "MQTT 3.1"}.get(level, f"protocol level {level}")
        super().__init__(f"{name} is not supported (MQTT 3.1.1 and 5 only)", UNSUPPORTED_VERSION)
        self.level = level


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: bytes = b""  # its own properties (MQTT 5), forwarded as they came
    expiry: int | None = None  # message expiry interval, seconds
    delay: int = 0  # will delay interval, seconds


@dataclass(frozen=True)
class Connect:
    client_id: str
    clean_session: bool  # MQTT 5: clean start
    keepalive: int
    will: Will | None
    username: str | None
    password: bytes | None
    version: int = PROTOCOL_LEVEL
    props: P.Props = field(default_factory=P.Props)


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False
    packet_id: int | None = None
    props: bytes = b""  # the message's own properties (MQTT 5), forwarded as they came
    expiry: int | None = None  # message expiry interval, seconds
    alias: int | None = None  # topic alias


@dataclass(frozen=True)
class Subscribe:
    packet_id: int
    requests: tuple[tuple[str, int], ...]  # filter, subscription options (3.1.1: the QoS)
    sub_id: int | None = None


@dataclass(frozen=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]


@dataclass(frozen=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP: a packet type, the id it acknowledges and (MQTT 5) its reason code."""

    kind: int
    packet_id: int
    code: int = SUCCESS


@dataclass(frozen=True)
class Control:
    """PINGREQ, DISCONNECT or AUTH, with the reason code and session expiry a DISCONNECT may carry."""

    kind: int
    code: int = SUCCESS
    session_expiry: int | None = None


Packet = Connect | Publish | Subscribe | Unsubscribe | Ack | Control


# -- reading ----------------------------------------------------------------------

Read = Callable[[int], Awaitable[bytes]]


class TooLarge(Malformed):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"packet of {size} bytes is over the limit of {limit}", PACKET_TOO_LARGE)
        self.size = size


async def read_packet(read_exactly: Read, max_size: int) -> tuple[int, int, bytes]:
    """(type, flags, body) of the next packet; TooLarge before reading a body over `max_size` bytes."""
    first = (await read_exactly(1))[0]
    length = await read_exactly(1)
    while length[-1] & 0x80 and len(length) < 4:
        length += await read_exactly(1)
    try:
        size, _ = P.read_varint(length, 0, "remaining length")
    except P.PropertyError as exc:
        raise Malformed(str(exc)) from None
    if size > max_size:
        raise TooLarge(size, max_size)
    body = await read_exactly(size) if size else b""
    return first >> 4, first & 0x0F, body


class _Body:
    """A cursor over a packet body that refuses to read past its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise Malformed(f"{what} runs past the end of the packet")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int(struct.unpack("!H", self.take(2, what))[0])

    def binary(self, what: str) -> bytes:
        return self.take(self.u16(what), what)

    def text(self, what: str) -> str:
        try:
            return P.utf8(self.binary(what))
        except ValueError as exc:
            raise Malformed(f"{what} {exc}") from None

    def props(self, allowed: frozenset[int], what: str) -> P.Props:
        try:
            props, self.pos = P.decode(self.data, self.pos, allowed, what)
        except P.PropertyError as exc:
            raise Malformed(str(exc), PROTOCOL_ERROR if "may not carry" in str(exc) or "twice" in str(exc)
                            else MALFORMED) from None
        return props

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def end(self, what: str) -> None:
        if self.left:
            raise Malformed(f"{self.left} unexpected byte(s) after the {what}")


def parse_connect(kind: int, flags: int, body: bytes) -> Connect:
    """The first packet of a connection: a CONNECT, or UnsupportedProtocol/Malformed."""
    if kind != CONNECT:
        raise Malformed(f"first packet is of type {kind}, not CONNECT")
    if flags != _FLAGS[CONNECT]:
        raise Malformed("CONNECT with non-zero fixed-header flags")
    b = _Body(body)
    name = b.binary("protocol name")
    level = b.byte("protocol level")
    if (name, level) == (b"MQIsdp", 3) or (name == b"MQTT" and level not in (PROTOCOL_LEVEL, MQTT5)):
        raise UnsupportedProtocol(level)
    if name != b"MQTT":
        raise Malformed(f"protocol name {name[:20]!r} is not MQTT")
    cflags = b.byte("connect flags")
    keepalive = b.u16("keep-alive")
    if cflags & 0x01:
        raise Malformed("reserved connect flag set [MQTT-3.1.2-3]")
    will_flag, will_qos, will_retain = bool(cflags & 0x04), (cflags >> 3) & 0x03, bool(cflags & 0x20)
    has_user, has_password = bool(cflags & 0x80), bool(cflags & 0x40)
    if will_qos == 3:
        raise Malformed("will QoS 3 [MQTT-3.1.2-14]")
    if not will_flag and (will_qos or will_retain):
        raise Malformed("will QoS or retain set without a will [MQTT-3.1.2-13]")
    if has_password and not has_user and level == PROTOCOL_LEVEL:
        raise Malformed("password without a user name [MQTT-3.1.2-22]")
    v5 = level == MQTT5
    props = b.props(P.CONNECT_PROPS, "CONNECT") if v5 else P.Props()
    client_id = b.text("client id")
    will = None
    if will_flag:
        wp = b.props(P.WILL_PROPS, "will") if v5 else P.Props()
        topic = b.text("will topic")
        will = Will(topic, b.binary("will message"), will_qos, will_retain, wp.forwarded,
                    wp.get(P.MESSAGE_EXPIRY), wp.get(P.WILL_DELAY, 0) or 0)
    username = b.text("user name") if has_user else None
    password = b.binary("password") if has_password else None
    b.end("CONNECT payload")
    return Connect(client_id, bool(cflags & 0x02), keepalive, will, username, password, level, props)


def parse(kind: int, flags: int, body: bytes, v5: bool = False) -> Packet:
    """A packet after CONNECT, or Malformed (a second CONNECT and server-only packets included)."""
    if kind == PUBLISH:
        return _publish(flags, body, v5)
    if kind not in _FLAGS or kind == CONNECT or (kind == AUTH and not v5):
        raise Malformed("a second CONNECT [MQTT-3.1.0-2]" if kind == CONNECT
                        else f"packet type {kind} is not one a client may send", PROTOCOL_ERROR)
    if flags != _FLAGS[kind]:
        raise Malformed(f"packet type {kind} with fixed-header flags {flags:#x}")
    b = _Body(body)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        packet_id = b.u16("packet id")
        code = SUCCESS
        if v5 and b.left:
            code = b.byte("reason code")
            if b.left:
                b.props(P.ACK_PROPS, "acknowledgement")
        b.end("packet id")
        return Ack(kind, packet_id, code)
    if kind in (PINGREQ, DISCONNECT, AUTH):
        code, expiry = SUCCESS, None
        if v5 and kind != PINGREQ and b.left:
            code = b.byte("reason code")
            if b.left:
                expiry = b.props(P.AUTH_PROPS if kind == AUTH else P.DISCONNECT_PROPS, "DISCONNECT").get(
                    P.SESSION_EXPIRY)
        b.end("packet")
        return Control(kind, code, expiry)
    packet_id = b.u16("packet id")
    if packet_id == 0:
        raise Malformed("packet id 0 [MQTT-2.3.1-1]")
    if kind == SUBSCRIBE:
        sub_id = b.props(P.SUBSCRIBE_PROPS, "SUBSCRIBE").get(P.SUBSCRIPTION_ID) if v5 else None
        requests = []
        while b.left:
            topic_filter = b.text("topic filter")
            options = b.byte("subscription options")
            if options & (0xC0 if v5 else 0xFC) or options & 0x03 == 3 or options & 0x30 == 0x30:
                raise Malformed(f"SUBSCRIBE with options {options:#04x} [MQTT-3.8.3-4]")
            requests.append((topic_filter, options))
        if not requests:
            raise Malformed("SUBSCRIBE without a topic filter [MQTT-3.8.3-3]", PROTOCOL_ERROR)
        return Subscribe(packet_id, tuple(requests), sub_id)
    if v5:
        b.props(P.UNSUBSCRIBE_PROPS, "UNSUBSCRIBE")
    filters = []
    while b.left:
        filters.append(b.text("topic filter"))
    if not filters:
        raise Malformed("UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]", PROTOCOL_ERROR)
    return Unsubscribe(packet_id, tuple(filters))


def _publish(flags: int, body: bytes, v5: bool = False) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise Malformed("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise Malformed("PUBLISH with DUP set at QoS 0 [MQTT-3.3.1-2]")
    b = _Body(body)
    topic = b.text("topic name")
    packet_id = b.u16("packet id") if qos else None
    if packet_id == 0:
        raise Malformed("packet id 0 [MQTT-2.3.1-1]")
    if not v5:
        return Publish(topic, b.take(b.left, "payload"), qos, bool(flags & 0x01), dup, packet_id)
    props = b.props(P.PUBLISH_PROPS, "PUBLISH")
    return Publish(topic, b.take(b.left, "payload"), qos, bool(flags & 0x01), dup, packet_id, props.forwarded,
                   props.get(P.MESSAGE_EXPIRY), props.get(P.TOPIC_ALIAS))


# -- writing ----------------------------------------------------------------------

def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + P.varint(len(body)) + body


def _string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def connack(session_present: bool, code: int, v5: bool = False, props: bytes = b"\x00") -> bytes:
    """CONNACK with a reason code; a 3.1.1 client gets the return code it maps to, an MQTT 5 one `props`."""
    flags = 1 if session_present and code == ACCEPTED else 0
    if not v5:
        return _packet(CONNACK << 4, bytes([flags, V3_CONNACK.get(code, code)]))
    return _packet(CONNACK << 4, bytes([flags, code]) + props)


def publish(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int | None = None,
            dup: bool = False, props: bytes | None = None) -> bytes:
    """PUBLISH; `props` is an MQTT 5 property block (None for 3.1.1)."""
    first = PUBLISH << 4 | (0x08 if dup else 0) | qos << 1 | (0x01 if retain else 0)
    body = _string(topic) + (struct.pack("!H", packet_id) if qos and packet_id is not None else b"")
    return _packet(first, body + (props or b"") + payload)


def ack(kind: int, packet_id: int, code: int = SUCCESS, v5: bool = False, reason: str | None = None) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP for `packet_id`; on MQTT 5 with its reason code (and reason string)."""
    body = struct.pack("!H", packet_id)
    if v5 and (code or reason):
        body += bytes([code]) + (P.encode([(P.REASON_STRING, reason)]) if reason else b"")
    return _packet(kind << 4 | (2 if kind == PUBREL else 0), body)


def suback(packet_id: int, codes: list[int], v5: bool = False) -> bytes:
    return _packet(SUBACK << 4, struct.pack("!H", packet_id) + (b"\x00" if v5 else b"") + bytes(codes))


def unsuback(packet_id: int, codes: list[int] | None = None) -> bytes:
    """UNSUBACK; MQTT 5 gives a reason code per filter (`codes`), 3.1.1 none."""
    body = struct.pack("!H", packet_id)
    return _packet(UNSUBACK << 4, body + (b"\x00" + bytes(codes) if codes is not None else b""))


def disconnect(code: int, reason: str | None = None) -> bytes:
    """An MQTT 5 server's DISCONNECT: why the connection ends."""
    return _packet(DISCONNECT << 4, bytes([code]) + P.encode([(P.REASON_STRING, reason)] if reason else []))


PINGRESP_PACKET = bytes([PINGRESP << 4, 0])


# -- the client's side: what bench/fleet.py's simulated devices send and read -----------------

@dataclass(frozen=True)
class Connack:
    session_present: bool
    code: int


@dataclass(frozen=True)
class Suback:
    packet_id: int
    codes: tuple[int, ...]


def connect(client_id: str, clean_session: bool, keepalive: int, username: str | None = None,
            password: bytes | None = None) -> bytes:
    """A CONNECT without a will; parse_connect reads it back."""
    flags = (0x02 if clean_session else 0) | (0x80 if username is not None else 0) | (
        0x40 if password is not None else 0)
    body = _string("MQTT") + bytes([PROTOCOL_LEVEL, flags]) + struct.pack("!H", keepalive) + _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += struct.pack("!H", len(password)) + password
    return _packet(CONNECT << 4, body)


def subscribe(packet_id: int, requests: list[tuple[str, int]]) -> bytes:
    return _packet(SUBSCRIBE << 4 | 2, struct.pack("!H", packet_id) + b"".join(
        _string(topic_filter) + bytes([qos]) for topic_filter, qos in requests))


PINGREQ_PACKET = bytes([PINGREQ << 4, 0])


def parse_from_broker(kind: int, flags: int, body: bytes) -> Connack | Suback | Publish | Ack | Control:
    """A packet a broker sends to a client, checked as strictly as the other direction."""
    if kind == PUBLISH:
        return _publish(flags, body)
    b = _Body(body)
    if kind == CONNACK and flags == 0:
        session_present, code = b.byte("acknowledge flags"), b.byte("return code")
        b.end("CONNACK")
        return Connack(bool(session_present & 0x01), code)
    if kind == SUBACK and flags == 0:
        packet_id = b.u16("packet id")
        codes = tuple(b.take(b.left, "return codes"))
        if not codes:
            raise Malformed("SUBACK without a return code")
        return Suback(packet_id, codes)
    if kind in (PUBACK, UNSUBACK) and flags == 0:
        packet_id = b.u16("packet id")
        b.end("packet id")
        return Ack(kind, packet_id)
    if kind == PINGRESP and flags == 0:
        b.end("PINGRESP")
        return Control(kind)
    raise Malformed(f"packet type {kind} with flags {flags:#x} is not one this client reads")
