"""MQTT 5 properties: which packet may carry which, their types, and how they are read and written.

A message's own properties (payload format, content type, response topic,
correlation data, user properties) are kept as the bytes the publisher sent
and forwarded as they are; the broker reads and writes only the ones it acts
on (expiry, topic alias, subscription identifiers, the session's and the
connection's limits).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA = 0x01, 0x02, 0x03, 0x08, 0x09
SUBSCRIPTION_ID, SESSION_EXPIRY, ASSIGNED_CLIENT_ID, SERVER_KEEP_ALIVE = 0x0B, 0x11, 0x12, 0x13
AUTH_METHOD, AUTH_DATA, REQUEST_PROBLEM_INFO, WILL_DELAY, REQUEST_RESPONSE_INFO = 0x15, 0x16, 0x17, 0x18, 0x19
RESPONSE_INFO, SERVER_REFERENCE, REASON_STRING, RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM = 0x1A, 0x1C, 0x1F, 0x21, 0x22
TOPIC_ALIAS, MAXIMUM_QOS, RETAIN_AVAILABLE, USER_PROPERTY, MAXIMUM_PACKET_SIZE = 0x23, 0x24, 0x25, 0x26, 0x27
WILDCARD_AVAILABLE, SUBSCRIPTION_ID_AVAILABLE, SHARED_AVAILABLE = 0x28, 0x29, 0x2A

BYTE, U16, U32, VARINT, TEXT, BINARY, PAIR = range(7)
TYPES = {PAYLOAD_FORMAT: BYTE, MESSAGE_EXPIRY: U32, CONTENT_TYPE: TEXT, RESPONSE_TOPIC: TEXT,
         CORRELATION_DATA: BINARY, SUBSCRIPTION_ID: VARINT, SESSION_EXPIRY: U32, ASSIGNED_CLIENT_ID: TEXT,
         SERVER_KEEP_ALIVE: U16, AUTH_METHOD: TEXT, AUTH_DATA: BINARY, REQUEST_PROBLEM_INFO: BYTE, WILL_DELAY: U32,
         REQUEST_RESPONSE_INFO: BYTE, RESPONSE_INFO: TEXT, SERVER_REFERENCE: TEXT, REASON_STRING: TEXT,
         RECEIVE_MAXIMUM: U16, TOPIC_ALIAS_MAXIMUM: U16, TOPIC_ALIAS: U16, MAXIMUM_QOS: BYTE, RETAIN_AVAILABLE: BYTE,
         USER_PROPERTY: PAIR, MAXIMUM_PACKET_SIZE: U32, WILDCARD_AVAILABLE: BYTE, SUBSCRIPTION_ID_AVAILABLE: BYTE,
         SHARED_AVAILABLE: BYTE}
# What a client may send where (MQTT 5.0, table 2-4); the broker checks it.
MESSAGE = frozenset({PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA, USER_PROPERTY})
FORWARDED = MESSAGE - {MESSAGE_EXPIRY}  # passed on untouched; the expiry is counted down
CONNECT_PROPS = frozenset({SESSION_EXPIRY, AUTH_METHOD, AUTH_DATA, REQUEST_PROBLEM_INFO, REQUEST_RESPONSE_INFO,
                           RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, USER_PROPERTY, MAXIMUM_PACKET_SIZE})
WILL_PROPS = MESSAGE | {WILL_DELAY}
PUBLISH_PROPS = MESSAGE | {TOPIC_ALIAS}  # a client never sends a subscription identifier [MQTT-3.3.4-6]
ACK_PROPS = frozenset({REASON_STRING, USER_PROPERTY})
SUBSCRIBE_PROPS = frozenset({SUBSCRIPTION_ID, USER_PROPERTY})
UNSUBSCRIBE_PROPS = frozenset({USER_PROPERTY})
DISCONNECT_PROPS = frozenset({SESSION_EXPIRY, REASON_STRING, USER_PROPERTY, SERVER_REFERENCE})
AUTH_PROPS = frozenset({AUTH_METHOD, AUTH_DATA, REASON_STRING, USER_PROPERTY})
REPEATABLE = frozenset({USER_PROPERTY})


class PropertyError(ValueError):
    """Properties a packet must not carry, or cannot be read; the message says which."""


@dataclass
class Props:
    """The properties of one packet: single values by id, user properties in order, and the forwarded bytes."""

    values: dict[int, int | str | bytes] = field(default_factory=dict)
    user: list[tuple[str, str]] = field(default_factory=list)
    forwarded: bytes = b""  # the FORWARDED properties, as the sender encoded them

    def get(self, pid: int, default: int | None = None) -> int | None:
        value = self.values.get(pid, default)
        assert value is None or isinstance(value, int)
        return value

    def text(self, pid: int) -> str | None:
        value = self.values.get(pid)
        assert value is None or isinstance(value, str)
        return value


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def encode(pairs: list[tuple[int, int | str | bytes | tuple[str, str]]], raw: bytes = b"") -> bytes:
    """A property block (its length first) of `pairs` and of already encoded properties `raw`."""
    out = bytearray(raw)
    for pid, value in pairs:
        kind = TYPES[pid]
        out += varint(pid)
        if kind == BYTE:
            out.append(int(value))  # type: ignore[arg-type]
        elif kind == U16:
            out += struct.pack("!H", value)
        elif kind == U32:
            out += struct.pack("!I", value)
        elif kind == VARINT:
            out += varint(int(value))  # type: ignore[arg-type]
        elif kind == TEXT:
            out += _text(str(value))
        elif kind == BINARY:
            assert isinstance(value, bytes)
            out += struct.pack("!H", len(value)) + value
        else:
            assert isinstance(value, tuple)
            out += _text(value[0]) + _text(value[1])
    return varint(len(out)) + bytes(out)


def decode(data: bytes, pos: int, allowed: frozenset[int], what: str) -> tuple[Props, int]:
    """The property block at `pos` of `data` and the position after it; PropertyError for what is not allowed."""
    length, pos = read_varint(data, pos, f"{what} properties")
    end = pos + length
    if end > len(data):
        raise PropertyError(f"{what} properties run past the end of the packet")
    props = Props()
    forwarded = bytearray()
    while pos < end:
        start = pos
        pid, pos = read_varint(data, pos, f"{what} properties")
        if pid not in allowed:
            raise PropertyError(f"{what} may not carry property {pid:#04x} [MQTT-2.2.2-2]")
        if pid in props.values and pid not in REPEATABLE:
            raise PropertyError(f"{what} carries property {pid:#04x} twice")
        value, pos = _value(data, pos, end, TYPES[pid], what)
        if pid == USER_PROPERTY:
            assert isinstance(value, tuple)
            props.user.append(value)
        else:
            props.values[pid] = value  # type: ignore[assignment]
        if pid in FORWARDED:
            forwarded += data[start:pos]
    props.forwarded = bytes(forwarded)
    _check(props, what)
    return props, end


def _check(props: Props, what: str) -> None:
    """The values MQTT 5 rules out, whatever the packet."""
    v = props.values
    if v.get(PAYLOAD_FORMAT, 0) not in (0, 1):
        raise PropertyError(f"{what}: payload format indicator {v[PAYLOAD_FORMAT]!r}")
    for pid in (REQUEST_PROBLEM_INFO, REQUEST_RESPONSE_INFO):
        if v.get(pid, 0) not in (0, 1):
            raise PropertyError(f"{what}: property {pid:#04x} is {v[pid]!r}, not 0 or 1")
    for pid in (RECEIVE_MAXIMUM, MAXIMUM_PACKET_SIZE, TOPIC_ALIAS, SUBSCRIPTION_ID):
        if v.get(pid) == 0:
            raise PropertyError(f"{what}: property {pid:#04x} is 0")
    topic = v.get(RESPONSE_TOPIC)
    if isinstance(topic, str) and (not topic or "+" in topic or "#" in topic):
        raise PropertyError(f"{what}: response topic {topic[:80]!r} is not a topic name [MQTT-3.3.2-14]")


def utf8(raw: bytes) -> str:
    """An MQTT string [MQTT-1.5.4]: UTF-8 without U+0000; ValueError saying what it is not."""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8") from None
    if "\x00" in value:
        raise ValueError("contains U+0000")
    return value


def read_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """The variable byte integer at `pos` and the position after it (a packet's remaining length, a property's
    length or identifier)."""
    value, shift = 0, 0
    for _ in range(4):
        if pos >= len(data):
            raise PropertyError(f"{what}: cut short by the end of the packet")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
    raise PropertyError(f"{what}: variable byte integer longer than 4 bytes")


def _value(data: bytes, pos: int, end: int, kind: int, what: str) -> tuple[int | str | bytes | tuple[str, str], int]:
    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > end:
            raise PropertyError(f"{what} properties run past their length")
        chunk = data[pos:pos + n]
        pos += n
        return chunk

    def text() -> str:
        raw = take(struct.unpack("!H", take(2))[0])  # a PropertyError of its own when cut short
        try:
            return utf8(raw)
        except ValueError as exc:
            raise PropertyError(f"{what}: a property string {exc}") from None

    if kind == BYTE:
        return take(1)[0], pos
    if kind == U16:
        return struct.unpack("!H", take(2))[0], pos
    if kind == U32:
        return struct.unpack("!I", take(4))[0], pos
    if kind == VARINT:
        value, pos = read_varint(data[:end], pos, f"{what} properties")
        return value, pos
    if kind == TEXT:
        return text(), pos
    if kind == BINARY:
        return take(struct.unpack("!H", take(2))[0]), pos
    return (text(), text()), pos
