"""MQTT 3.1.1 and 5 as raw bytes, for tests that send what no well-behaved client library would, or read what a
library hides (topic aliases, reason codes)."""

from __future__ import annotations

import socket
import struct

from broker.properties import varint
from testkit.procs import TIMEOUT


def string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect(client_id: str, user: str | None = None, password: str | None = None, clean: bool = True,
            keepalive: int = 60, will: tuple[str, bytes, int, bool] | None = None, props: bytes | None = None,
            will_props: bytes = b"\x00") -> bytes:
    """A CONNECT; with `props` (an encoded property block) an MQTT 5 one."""
    v5 = props is not None
    flags = (0x02 if clean else 0) | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    payload = string(client_id)
    if will:
        topic, message, qos, retain = will
        flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += (will_props if v5 else b"") + string(topic) + string(message)
    payload += (string(user) if user is not None else b"") + (string(password) if password is not None else b"")
    return packet(0x10, string("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack("!H", keepalive)
                  + (props or b"") + payload)


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 1, retain: bool = False,
            props: bytes | None = None) -> bytes:
    """A PUBLISH; with `props` an MQTT 5 one."""
    first = 0x30 | qos << 1 | (1 if retain else 0)
    return packet(first, string(topic) + (struct.pack("!H", packet_id) if qos else b"") + (props or b"") + payload)


def subscribe(packet_id: int, filters: list[tuple[str, int]], props: bytes | None = None) -> bytes:
    """A SUBSCRIBE (the int is the QoS, or on MQTT 5 the subscription options); with `props` an MQTT 5 one."""
    return packet(0x82, struct.pack("!H", packet_id) + (props or b"") + b"".join(
        string(f) + bytes([q]) for f, q in filters))


def ack(kind: int, packet_id: int) -> bytes:
    """PUBACK (4), PUBREC (5), PUBREL (6) or PUBCOMP (7)."""
    return packet(kind << 4 | (2 if kind == 6 else 0), struct.pack("!H", packet_id))


class Raw:
    """One connection, from `source` (any 127.x.y.z on Linux) when given, reading whole packets."""

    def __init__(self, port: int, source: str | None = None, timeout: float = TIMEOUT) -> None:
        self.sock = socket.socket()
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self._buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> tuple[int, bytes] | None:
        """(first byte, body) of the next packet, or None once the broker closed the connection."""
        while True:
            if len(self._buf) >= 2:
                size, shift, i = 0, 0, 1
                while i < len(self._buf):
                    byte = self._buf[i]
                    size |= (byte & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not byte & 0x80:
                        if len(self._buf) >= i + size:
                            first, body = self._buf[0], self._buf[i:i + size]
                            self._buf = self._buf[i + size:]
                            return first, body
                        break
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self._buf += chunk

    def login(self, client_id: str, user: str | None, password: str | None, **kwargs: object) -> int:
        """CONNECT; the CONNACK's return code (-1 when the connection was closed instead)."""
        self.send(connect(client_id, user, password, **kwargs))  # type: ignore[arg-type]
        answer = self.read()
        return answer[1][1] if answer and answer[0] == 0x20 else -1

    def close(self) -> None:
        self.sock.close()
