"""The seam between amqtt and the broker's own core. Checked against amqtt 0.12.1 only; the broker refuses others.

amqtt provides the listeners: plain TCP, TLS (with its certificate handling)
and MQTT over WebSocket, started and stopped by its `Broker`. Every accepted
connection is handed to `broker.connection` through the two entry points
amqtt calls, `stream_connected` and `ws_connected`, instead of amqtt's own
session handling, whose faults in 0.12.1 break the broker's promises:
- a QoS 1 publish is acknowledged before it is routed, and what is not yet
  routed when its publisher disconnects is dropped (half of a burst, measured);
- messages to a subscriber are sent as independent tasks, out of order, and
  dropped after 5 s without a PUBACK;
- the broadcast loop and the connect handler iterate dictionaries that other
  clients change meanwhile (`dictionary changed size during iteration`);
- keep-alive is never enforced, a socket that sends nothing holds a slot
  forever, and shutdown waits on clients that do not read;
- its decoder turns ill-formed UTF-8 into text and grants QoS 3.
Nothing else in the broker imports amqtt.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import socket
import ssl
from collections import Counter
from functools import partial
from typing import Any, cast

import websockets
from amqtt.broker import Broker
from amqtt.contexts import ListenerType
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from broker.connection import Closed, Connections
from broker.login import network_of
from broker.logs import Squelch, shown
from broker.models import WEB_LISTENER
from broker.web import OriginGuard, Site

AMQTT_VERSION = "0.12.1"


def amqtt_problem() -> str | None:
    """Why the installed amqtt cannot be used, or None."""
    found = importlib.metadata.version("amqtt")
    if found != AMQTT_VERSION:
        return (f"the broker is built on amqtt {AMQTT_VERSION} (its listeners) and found amqtt {found}: "
                f"pip install 'amqtt=={AMQTT_VERSION}'")
    return None


class StreamTransport:
    """A TCP or TLS connection, with Nagle off: acknowledgements must not wait for the client's delayed ACK.

    With `tls`, the handshake happens in `secure()`, which the connection calls
    once it was let in: a stranger's half-done handshake (asyncio keeps a
    256 KiB buffer for each) counts against the same limits as any login.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 tls: ssl.SSLContext | None = None) -> None:
        self._reader, self._writer, self._tls = reader, writer, tls
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1]))

    async def secure(self, timeout: float | None) -> None:
        if self._tls is not None:
            try:
                # Python 3.11+; on 3.10 the listener does TLS itself (see EdisonBroker._create_server_instance)
                await self._writer.start_tls(self._tls, ssl_handshake_timeout=timeout)  # type: ignore[attr-defined]
            except (ssl.SSLError, ConnectionError, OSError, asyncio.TimeoutError) as exc:
                raise Closed(f"TLS handshake: {exc or type(exc).__name__}") from None

    async def read_exactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            raise Closed from None

    def write(self, data: bytes) -> None:
        if not self._writer.transport.is_closing():
            self._writer.write(data)

    def buffered(self) -> int:
        return self._writer.transport.get_write_buffer_size()

    async def flush(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            raise Closed from None

    def abort(self) -> None:
        self._writer.transport.abort()

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


class WebSocketTransport:
    """MQTT over WebSocket: binary frames carry the byte stream, in pieces of any size."""

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws
        self._inbox = bytearray()
        self._outbox = bytearray()
        peer = ws.remote_address or ("?", 0)
        self.peer = (str(peer[0]), int(peer[1]))

    async def secure(self, timeout: float | None) -> None:
        """TLS, if any, was done by the WebSocket server before the upgrade."""

    async def read_exactly(self, n: int) -> bytes:
        while len(self._inbox) < n:
            try:
                frame = await self._ws.recv()
            except ConnectionClosed:
                raise Closed from None
            self._inbox += frame.encode("utf-8") if isinstance(frame, str) else frame
        data = bytes(self._inbox[:n])
        del self._inbox[:n]
        return data

    def write(self, data: bytes) -> None:
        self._outbox += data

    def buffered(self) -> int:
        return len(self._outbox) + self._ws.transport.get_write_buffer_size()

    async def flush(self) -> None:
        while self._outbox:
            data = bytes(self._outbox)
            self._outbox.clear()
            try:
                await self._ws.send(data)
            except ConnectionClosed:
                raise Closed from None

    def abort(self) -> None:
        self._ws.transport.abort()

    async def close(self) -> None:
        await self.flush()
        await self._ws.close()


class _HandshakeFailures(logging.Filter):
    """websockets logs every failed opening handshake (a port scan, plain MQTT sent to the WebSocket port) and every
    error inside one (two requests in one write trip an assertion in websockets 15) as an ERROR with a traceback, and
    every refusal (426 to a plain GET of /mqtt, 403 to a page of another site) as a line: all of it is a stranger's to
    cause at will. Here each kind is one line, and a flood of it one line every 10 s. An answer of the control page
    is, to websockets, a rejected handshake too: that is not logged."""

    def __init__(self) -> None:
        super().__init__()
        self._squelch = Squelch()

    def filter(self, record: logging.LogRecord) -> bool:
        status = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if record.msg == "connection open":
            return False  # every upgrade: the login that follows is what the broker logs
        if record.msg == "connection rejected (%d %s)":
            if status not in PAGE_ANSWERS:
                self._squelch.warning(f"websocket {status}", "a WebSocket request refused: %s", record.getMessage())
            return False
        if record.getMessage() not in ("opening handshake failed", "unexpected internal error") or not record.exc_info:
            return True
        exc = record.exc_info[1]
        cause = (exc.__cause__ if exc is not None else None) or exc
        self._squelch.warning(f"websocket {record.getMessage()}", "a WebSocket opening handshake failed: %s",
                              shown(str(cause) or type(cause).__name__))
        return False


def upgrade_cap(per_address: int) -> type[ServerConnection]:
    """WebSocket connections that may wait for their upgrade from one address, as many as may wait for a login from
    there (an eighth of --max-pending): before the upgrade a connection is HTTP, outside the login places, and an
    attack round held thousands open (the broker's open files) and fed each 1 MB of headers."""
    upgrading: Counter[str] = Counter()

    class Capped(ServerConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            self._address = network_of(str(peer[0])) if peer else ""
            upgrading[self._address] += 1
            self._upgrading = True
            if upgrading[self._address] > per_address:
                cast(asyncio.Transport, transport).abort()  # its handshake fails at once, logged once per 10 s

        async def handshake(self, *args: Any, **kwargs: Any) -> None:
            try:
                await super().handshake(*args, **kwargs)
            finally:
                self._done_upgrading()

        def connection_lost(self, exc: Exception | None) -> None:
            self._done_upgrading()
            super().connection_lost(exc)

        def _done_upgrading(self) -> None:
            if getattr(self, "_upgrading", False):
                self._upgrading = False
                upgrading[self._address] -= 1
                if upgrading[self._address] <= 0:
                    del upgrading[self._address]

    return Capped


WS_LOG = logging.getLogger("edison-broker.websocket")
PAGE_ANSWERS = (200, 403, 404)  # a page file, a page of another site (OriginGuard logs it), no such file: not logged
WS_QUEUE = 2  # frames received and not yet read, per WebSocket connection
WS_LOG.addFilter(_HandshakeFailures())


class EdisonBroker(Broker):
    """amqtt's listeners, feeding `Connections`."""

    def __init__(self, listeners: dict[str, dict[str, Any]], connections: Connections,
                 site: Site | None = None) -> None:
        super().__init__({"listeners": listeners, "plugins": {}})
        self.connections = connections
        self.site = site  # the control page, on the web listener
        self._tls: dict[str, ssl.SSLContext] = {}  # TCP listeners whose TLS handshake the connection does

    async def _create_server_instance(self, listener_name: str, listener_type: ListenerType, address: str | None,
                                      port: int, ssl_context: ssl.SSLContext | None) -> Any:
        """amqtt's servers, but a TCP listener with TLS accepts plain TCP: the handshake comes after admission,
        and a WebSocket listener closes a connection whose upgrade is not done within --connect-timeout.

        Python 3.10 has no StreamWriter.start_tls: there asyncio does the handshake before the connection exists.
        """
        if listener_type == ListenerType.WS:
            # a frame may carry one whole packet, and only WS_QUEUE frames wait unread: websockets' defaults (1 MiB,
            # 16 frames) let a stranger waiting for its password check hold 17 MiB
            # the page's listener answers HTTP and lets only its own pages in; without users, so does the other
            guard = self.site if listener_name == WEB_LISTENER else (
                OriginGuard(trial=True) if self.connections.passwords is None else None)
            host = address.strip("[]") if address else address  # an IPv6 address as --web-bind [::1]:8080 gives it
            return await websockets.serve(partial(self.ws_connected, listener_name=listener_name), host, port,
                                          ssl=ssl_context, subprotocols=[websockets.Subprotocol("mqtt")],
                                          process_request=guard.answer if guard else None, server_header=None,
                                          create_connection=upgrade_cap(self.connections.admission.per_address),
                                          open_timeout=self.connections.limits.connect_timeout or None, logger=WS_LOG,
                                          max_size=self.connections.max_packet, max_queue=WS_QUEUE)
        if listener_type == ListenerType.TCP and ssl_context is not None and hasattr(asyncio.StreamWriter, "start_tls"):
            self._tls[listener_name] = ssl_context
            ssl_context = None
        return await super()._create_server_instance(listener_name, listener_type, address, port, ssl_context)

    async def start(self) -> None:
        """amqtt's start without its session monitor and broadcast loop (nothing would feed them)."""
        self.transitions.start()
        try:
            await self._start_listeners()
        except BaseException:
            await self._close_listeners()
            raise
        self.transitions.starting_success()

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        await self.connections.serve(StreamTransport(reader, writer, self._tls.get(listener_name)))

    async def ws_connected(self, websocket: ServerConnection, listener_name: str) -> None:
        await self.connections.serve(WebSocketTransport(websocket))

    async def stop(self, grace: float) -> None:
        """Stop listening, give clients `grace` seconds to take what was sent to them, close everything."""
        for server in self._servers.values():
            server.instance.close()
        await self.connections.close_all(grace)
        await self._close_listeners()

    async def _close_listeners(self) -> None:
        for server in self._servers.values():
            try:
                await asyncio.wait_for(server.close_instance(), 1.0)
            except asyncio.TimeoutError:
                pass
