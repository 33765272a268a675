"""One client connection: its login, then its packets, read one at a time and answered in order.

What a stranger can do to a connection slot is bounded: CONNECT must arrive
within `connect_timeout`, only so many connections may be logging in at once
(broker.login.Admission, which gives a newcomer the place of the busiest
address when all are taken), a failed login waits out its delay outside those
places, a packet's size is checked before its body is read, and a malformed
packet closes the connection as MQTT prescribes. After the login a connection that sends nothing for
1.5 times its keep-alive is closed and its will published.

A QoS 1 publish is routed as soon as it is read; its PUBACK follows once the
data directory has it (when there is one), in the order the publishes came,
while the next packets are already being read. QoS 2 likewise, with PUBREC.

The CONNECT's protocol level sets the connection's MQTT version. On MQTT 5
the broker says why it refuses something (a reason code in CONNACK, PUBACK,
PUBREC, SUBACK) and why it ends a connection (DISCONNECT with a reason code
before closing it), states its limits in CONNACK (receive maximum, maximum
packet size, topic aliases) and holds clients to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from broker import properties as P
from broker import wire
from broker.access import Access
from broker.core import Core, Session
from broker.filters import topic_problem
from broker.login import FORGET_AFTER, STALLED_AFTER, Admission, Passwords, Throttle, network_of
from broker.logs import Squelch, shown
from broker.models import MAX_UNACKNOWLEDGED, Limits

log = logging.getLogger("edison-broker")
T = TypeVar("T")

MAX_WRITE_BUFFER = 4 * 1024 * 1024  # bytes a client may leave unread before it is dropped as not reading
CLOSE_WAIT = 2.0  # seconds a stopping broker waits for its aborted connections to wind up
HIGH_WATER = 256 * 1024  # bytes waiting for the network above which a client's queue is not sent from
# Logins wait for the disk only past twice the backlog that holds publishers back: a publish flood on a slow disk
# must not delay a device's login, while logins repeated with large wills cannot grow the backlog without bound.
LOGIN_BACKLOG = 2
TOPIC_ALIASES = 32  # topic aliases an MQTT 5 client may set up on one connection
FAREWELL_WAIT = 1.0  # seconds a DISCONNECT to an MQTT 5 client may take before the connection is dropped


class Closed(Exception):
    """The client's side of the connection is gone."""


class Transport(Protocol):
    """A byte stream to one client (TCP, TLS or WebSocket)."""

    peer: tuple[str, int]

    async def secure(self, timeout: float | None) -> None:
        """The TLS handshake, where the listener has TLS and it was left to the connection; Closed if it fails."""

    async def read_exactly(self, n: int) -> bytes:
        """n bytes, or Closed."""

    def write(self, data: bytes) -> None: ...

    def buffered(self) -> int:
        """Bytes written and not yet taken by the network."""

    async def flush(self) -> None: ...

    def abort(self) -> None:
        """Close at once, dropping what is unsent."""

    async def close(self) -> None:
        """Send what is buffered, then close; bounded by the caller."""


class Held(Exception):
    """A login not checked: its user's logins from its address failed lately, and the delay is not over."""


class Connections:
    """What all connections share: the core, the logins, the limits and the counts they keep."""

    def __init__(self, core: Core, access: Access, passwords: Passwords | None, limits: Limits) -> None:
        self.core = core
        self.access = access
        self.passwords = passwords
        self.limits = limits
        self.throttle = Throttle()
        self.squelch = Squelch()
        self.admission = Admission(limits.max_pending, max(1, limits.max_pending // 8))
        self.refusing: Counter[str] = Counter()  # per address: refusals waiting out their delay
        self.per_user: Counter[str] = Counter()  # logged-in connections of each user
        self.logged_in = 0
        self.live: set[Connection] = set()
        self.stopping = False
        # a packet may carry the largest message, a topic of up to 64 KiB and its headers
        self.max_packet = (limits.max_message_size + 65_600) if limits.max_message_size else 268_435_455

    async def serve(self, transport: Transport) -> None:
        connection = Connection(self, transport)
        self.live.add(connection)
        try:
            await connection.run()
        finally:
            self.live.discard(connection)

    async def close_all(self, grace: float) -> None:
        """Stop reading from every client, give them `grace` seconds to take what is theirs, then close."""
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.core.unacknowledged() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for c in list(self.live):
            c.end("the broker is stopping", wire.SHUTTING_DOWN)
        tasks = [asyncio.ensure_future(c.finished.wait()) for c in list(self.live)]
        if tasks:  # each was aborted: they end at once, but a busy loop takes its time to run them
            await asyncio.wait(tasks, timeout=CLOSE_WAIT)


class Connection:
    def __init__(self, hub: Connections, transport: Transport) -> None:
        self.hub = hub
        self.transport = transport
        self.address, port = transport.peer
        self.peer = f"{self.address}:{port}"
        self.finished = asyncio.Event()
        self._ended: str | None = None
        self._stopped = asyncio.Event()
        self._graceful = False
        self._flush_wanted = asyncio.Event()
        self._acks: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue(MAX_UNACKNOWLEDGED)  # and: ends an exchange
        self._receiving = 0  # QoS 1 and 2 publishes whose PUBACK or PUBCOMP was not sent yet (receive maximum)
        self._aliases: dict[int, str] = {}  # topic aliases the client set up
        self._farewell: asyncio.Future[None] | None = None
        self._task: asyncio.Task | None = None  # the one that runs run(): its reader, which _close() follows
        self._drain_owed = False
        self._session_expiry: int | None = None  # of the CONNECT, MQTT 5 (a DISCONNECT may change it)
        self._disconnect_expiry: int | None = None
        self.v5 = False
        self.assigned = False  # whether the broker chose its client id
        self.server_keepalive: int | None = None  # the keep-alive the broker chose instead of the client's
        self._tasks: list[asyncio.Task[None]] = []
        self.session: Session | None = None
        self._since = asyncio.get_running_loop().time()
        self._connect_read = False
        self._doubt: str | None = None  # why its login may give its place to a newer one (see Admission)

    # -- Outlet -----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self._ended is not None:
            return
        self.transport.write(data)
        if self.transport.buffered() > MAX_WRITE_BUFFER:
            self.end(f"it left {self.transport.buffered()} bytes unread", wire.QUOTA_EXCEEDED)
            return
        self._flush_wanted.set()

    def writable(self) -> bool:
        return self._ended is None and self.transport.buffered() < HIGH_WATER

    def close(self, reason: str, code: int = wire.SESSION_TAKEN_OVER) -> None:
        self.end(reason, code)

    def yields(self) -> str | None:
        if self._doubt:
            return self._doubt
        if not self._connect_read and asyncio.get_running_loop().time() - self._since > STALLED_AFTER:
            return f"it sent no CONNECT for {STALLED_AFTER:g} s"
        return None

    def end(self, reason: str, code: int | None = None) -> None:
        """Stop this connection at once (its reader sees the connection closed); an MQTT 5 client is told `code`."""
        if self._ended is None:
            self._ended = reason
            self._stopped.set()
            if not (self.v5 and code is not None):
                self.transport.abort()
                return
            self.transport.write(wire.disconnect(code))
            if asyncio.current_task() is not self._task:  # ended from outside while its reader may be waiting
                self._farewell = asyncio.ensure_future(self._say_farewell())
            else:  # its reader stops now, and _close() sends the DISCONNECT and reads what the client still sends
                self._drain_owed = True

    async def _say_farewell(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError, OSError, Closed):
            await asyncio.wait_for(self.transport.close(), FAREWELL_WAIT)
        self.transport.abort()

    async def _drain(self) -> None:
        """Send what is left, then read and drop what the client still sends until it closes: closing at once
        would reset a connection that data is still arriving on, and the reset can destroy the DISCONNECT
        before the client reads why (a client flooding past the receive maximum would see a broken pipe)."""
        await self.transport.flush()
        while True:
            await self.transport.read_exactly(65536)

    async def _unless_ended(self, awaitable: Awaitable[T]) -> T:
        """The result of `awaitable`, or Closed as soon as the connection is ended meanwhile."""
        task = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self._stopped.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not task.done():
            task.cancel()
        if self._ended is not None:  # even when both finished: what follows must not act for a session taken over
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: asyncio would log it as never retrieved
            raise Closed
        return task.result()

    # -- the connection's life ----------------------------------------------------

    async def run(self) -> None:
        self._task = asyncio.current_task()
        session: Session | None = None
        try:
            session = self.session = await self._login()
            if session is None:
                return
            self._tasks = [asyncio.create_task(self._flusher()), asyncio.create_task(self._acknowledger())]
            await self._serve(session)
        except Closed:
            pass
        except Exception:  # a bug must cost one connection, never the broker
            log.exception("connection from %s ended by an internal error", self.peer)
        finally:
            if session is not None:
                self.hub.logged_in -= 1
                if session.username is not None:
                    self.hub.per_user[session.username] -= 1
                if not self.hub.stopping:  # a stopping broker keeps the will for the next start
                    self.hub.core.detach(session, self, self._graceful, self._disconnect_expiry)
                if self._ended and not self.hub.stopping:
                    log.info("%s: connection closed: %s", session.who(), self._ended)
            for task in self._tasks:
                task.cancel()
            await self._close()
            self.finished.set()

    async def _close(self) -> None:
        """Send what is left (a refusal, say) and close; a connection that was ended is dropped at once, once an
        MQTT 5 client was told why."""
        if self._farewell is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._farewell
        elif self._drain_owed:
            with contextlib.suppress(asyncio.TimeoutError, OSError, Closed):
                await asyncio.wait_for(self._drain(), FAREWELL_WAIT)
        if self._ended is None:
            with contextlib.suppress(asyncio.TimeoutError, OSError, Closed):
                await asyncio.wait_for(self.transport.close(), 1.0)
        self.transport.abort()

    async def _read(self, timeout: float | None) -> tuple[int, int, bytes]:
        return await asyncio.wait_for(wire.read_packet(self.transport.read_exactly, self.hub.max_packet), timeout)

    async def _login(self) -> Session | None:
        hub = self.hub
        if not hub.admission.admit(self.address, self):
            hub.squelch.warning("pending", "refused connection from %s: %d connections are waiting to log in, "
                                "at most %d from one address (--max-pending)", self.peer, hub.admission.waiting(),
                                hub.admission.per_address)
            return None
        try:
            try:
                await self.transport.secure(hub.limits.connect_timeout or None)
            except Closed as exc:
                log.info("closed connection from %s: %s", self.peer, exc)
                return None
            connect = await self._connect_packet()
            if connect is None:
                return None
            user = connect.username
            if user is not None and hub.throttle.failing(user):
                self._doubt = f"a login as {shown(user)} failed in the last {FORGET_AFTER / 60:g} minutes"
            if hub.passwords is not None and user is None and connect.password is None:
                # Nothing to guess, nothing to check: refused at once, and not counted against the address (a client
                # asking which MQTT version the broker speaks, as the node does, sends no credentials).
                hub.squelch.info("no credentials", "refused a login without user name or "
                                 "password from %s (client %s): edison-node sends one at its start to learn which "
                                 "MQTT version the broker speaks", self.peer, shown(connect.client_id))
                await self._answer(wire.NOT_AUTHORIZED)
                return None
            if hub.passwords is not None:
                try:
                    delays = await self._unless_ended(self._check(connect))
                except Held:
                    hub.squelch.warning("held", "refused login: user=%s client=%s from %s "
                                        "unchecked: a login as that user from there failed lately and its delay is "
                                        "not over", shown(user), shown(connect.client_id), self.peer)
                    await self._answer(wire.NOT_AUTHORIZED)
                    return None
                if delays is not None:
                    hub.admission.release(self.address, self)  # a refusal waits out its delay outside the admission
                    await self._refuse_login(connect, delays)
                    return None
                assert user is not None  # a login without a user name is refused
                hub.throttle.succeeded(network_of(self.address), user)
            store = hub.core.store
            if store is not None and store.crowded(LOGIN_BACKLOG):  # each login writes its session (and will)
                await self._unless_ended(store.room())
            return self._accept(connect)
        finally:
            hub.admission.release(self.address, self)

    async def _connect_packet(self) -> wire.Connect | None:
        """The CONNECT, or None once the connection was answered or closed as MQTT says."""
        hub = self.hub
        packet = None
        try:
            packet = await self._read(hub.limits.connect_timeout or None)
            self._connect_read = True
            connect = wire.parse_connect(*packet)
        except asyncio.TimeoutError:
            hub.squelch.info("no connect", "closed connection from %s: no CONNECT within %g s", self.peer,
                             hub.limits.connect_timeout)
            return None
        except wire.UnsupportedProtocol as exc:
            hub.squelch.info("protocol", "refused client %s: %s", self.peer, exc)
            await self._answer(wire.UNACCEPTABLE_PROTOCOL)
            return None
        except wire.Malformed as exc:
            hub.squelch.warning("malformed connect", "closed connection from %s: %s", self.peer, exc)
            if packet is not None and packet[0] == wire.CONNECT and packet[2][2:7] == b"MQTT\x05":
                self.v5 = True  # an MQTT 5 client is told why
                await self._answer(exc.code)
            return None
        except Closed:
            log.debug("connection from %s closed before its CONNECT", self.peer)
            return None
        self.v5 = connect.version == wire.MQTT5
        problem = topic_problem(connect.will.topic) if connect.will else None
        if connect.will and problem:
            hub.squelch.warning("will topic", "closed connection from %s: will topic %s: %s", self.peer,
                                shown(connect.will.topic), problem)
            if self.v5:
                await self._answer(wire.TOPIC_NAME_INVALID)
            return None
        if connect.props.text(P.AUTH_METHOD) is not None:
            hub.squelch.info("auth method", "refused client %s: enhanced authentication (%s) is not supported",
                             self.peer, shown(connect.props.text(P.AUTH_METHOD)))
            await self._answer(wire.BAD_AUTH_METHOD)
            return None
        if not connect.client_id:
            if not connect.clean_session and not self.v5:
                hub.squelch.warning("empty client id", "refused client %s: empty client id needs clean session "
                                    "[MQTT-3.1.3-8]", self.peer)
                await self._answer(wire.IDENTIFIER_REJECTED)
                return None
            connect = dataclasses.replace(connect, client_id=f"auto-{uuid.uuid4().hex[:16]}")
            self.assigned = True
        return connect

    async def _check(self, connect: wire.Connect) -> tuple[float, float] | None:
        """None if the password is right, else the delays (address, user) its refusal waits; Held if the user's
        logins from this address failed lately and the next may not be checked yet (Throttle.held)."""
        hub, user = self.hub, connect.username
        assert hub.passwords is not None
        source = network_of(self.address)  # an IPv6 /64 is one address: its other addresses are its own to pick
        if user is None:
            return hub.throttle.failed(source, user)
        if hub.throttle.held(source, user):
            raise Held
        with hub.throttle.checking(source, user):
            if await hub.passwords.check(user, connect.password, source, hub.admission.trusted(self.address)):
                return None
            return hub.throttle.failed(source, user)

    async def _refuse_login(self, connect: wire.Connect, delays: tuple[float, float]) -> None:
        """Answer a failed login after its delay; an address already waiting out many refusals gets none."""
        hub, user = self.hub, connect.username
        assert hub.passwords is not None
        why = "no user name" if user is None else "wrong password" if hub.passwords.known(user) else "unknown user"
        by_address, by_user = delays
        key = network_of(self.address)
        hub.admission.failed(self.address)  # not trusted for a while, and its other checks lose their priority
        hub.passwords.failed(key)
        if hub.refusing[key] >= hub.admission.per_address:
            hub.squelch.warning(f"refusing {key}", "refused login from %s: %s; %d refusals from there are already "
                                "waiting out their delay: closed without an answer", self.peer, why, hub.refusing[key])
            return
        log.warning("refused login: user=%s client=%s from %s: %s; failed logins from %s: next answer in %.1f s%s",
                    shown(user), shown(connect.client_id), self.peer, why, self.address, by_address,
                    f", as {shown(user)}: {by_user:.1f} s" if user else "")
        hub.refusing[key] += 1
        try:
            await self._unless_ended(asyncio.sleep(max(by_address, by_user)))
            await self._answer(wire.NOT_AUTHORIZED)
        finally:
            hub.refusing[key] -= 1
            if hub.refusing[key] <= 0:
                del hub.refusing[key]

    def _accept(self, connect: wire.Connect) -> Session | None:
        """Attach an authenticated login to its session, unless its client id or the limits say no."""
        hub, user, client_id = self.hub, connect.username, connect.client_id
        refusal = self._client_id_refusal(client_id, user)
        if refusal:
            log.warning("refused login: user=%s client=%s: %s", shown(user), shown(client_id), refusal)
            self.transport.write(wire.connack(False, wire.NOT_AUTHORIZED, self.v5))
            return None
        taking_over = client_id in hub.core.sessions and hub.core.sessions[client_id].outlet is not None
        full = None
        if hub.limits.max_connections and hub.logged_in >= hub.limits.max_connections and not taking_over:
            full = f"already {hub.logged_in} connections (--max-connections)"
        elif (hub.limits.max_connections_per_user and user is not None and not taking_over
              and hub.per_user[user] >= hub.limits.max_connections_per_user):
            full = f"user {shown(user)} already has {hub.per_user[user]} connections (--max-connections-per-user)"
        elif (hub.limits.max_sessions_per_user and hub.core.session_expiry(connect) != 0
              and client_id not in hub.core.sessions
              and hub.core.sessions_of(user) >= hub.limits.max_sessions_per_user):
            full = (f"user {shown(user)} already has {hub.core.sessions_of(user)} persistent sessions "
                    "(--max-sessions-per-user): log in with a clean session or one of their client ids")
        if full:
            hub.squelch.warning(f"full {user}", "refused connection from %s: %s", self.peer, full)
            self.transport.write(wire.connack(False, wire.QUOTA_EXCEEDED if self.v5 else wire.SERVER_UNAVAILABLE,
                                              self.v5))
            return None
        if hub.stopping:
            return None
        longest = hub.limits.max_keepalive
        if self.v5 and longest and not 0 < connect.keepalive <= longest:
            connect = dataclasses.replace(connect, keepalive=longest)  # told in CONNACK: Server Keep Alive
            self.server_keepalive = longest
        hub.logged_in += 1
        if user is not None:
            hub.per_user[user] += 1
        hub.admission.logged_in(self.address)
        session, present = hub.core.attach(connect, user, self)
        self.send(wire.connack(present, wire.ACCEPTED, self.v5, self._connack_properties(connect)))
        hub.core.resume(session)
        log.debug("user=%s client=%s from %s logged in (%s session)", shown(user), shown(client_id), self.peer,
                  "resumed" if present else "new")
        return session

    def _connack_properties(self, connect: wire.Connect) -> bytes:
        """What an MQTT 5 client must know: the broker's limits, and what it chose in the client's place."""
        if not self.v5:
            return b""
        self._session_expiry = self.hub.core.session_expiry(connect)  # type: ignore[assignment]
        pairs: list[tuple[int, int | str | bytes | tuple[str, str]]] = [
            (P.RECEIVE_MAXIMUM, MAX_UNACKNOWLEDGED), (P.TOPIC_ALIAS_MAXIMUM, TOPIC_ALIASES),
            (P.MAXIMUM_PACKET_SIZE, self.hub.max_packet)]
        granted = self.hub.core.granted_expiry(connect)
        if granted is not None:
            pairs.append((P.SESSION_EXPIRY, granted))
        if self.assigned:
            pairs.append((P.ASSIGNED_CLIENT_ID, connect.client_id))
        if self.server_keepalive is not None:
            pairs.append((P.SERVER_KEEP_ALIVE, self.server_keepalive))
        return P.encode(pairs)

    def _client_id_refusal(self, client_id: str, user: str | None) -> str | None:
        owner = self.hub.access.client_id_owner(client_id)
        if owner is not None and owner != user:
            return f"client id belongs to user {owner}"
        holder = self.hub.core.owner_of(client_id)
        if self.hub.passwords is not None and holder is not None and holder != (user or ""):
            return f"client id in use by user {holder}"
        return None

    async def _answer(self, code: int) -> None:
        self.transport.write(wire.connack(False, code, self.v5))
        with contextlib.suppress(OSError, Closed):
            await asyncio.wait_for(self.transport.flush(), 1.0)

    async def _serve(self, s: Session) -> None:
        core, timeout = self.hub.core, 1.5 * s.keepalive or None
        while True:
            try:
                packet = wire.parse(*await self._read(timeout), v5=self.v5)
            except asyncio.TimeoutError:
                self.end(f"nothing received for {timeout:g} s (keep-alive {s.keepalive} s)", wire.KEEP_ALIVE_TIMEOUT)
                return
            except wire.Malformed as exc:
                self.end(f"{exc}", exc.code)
                return
            # Reading what is already buffered never yields, so a client that keeps its buffer full would hold
            # the event loop (other clients, SIGTERM) for as long as it sends: every packet gives the others a turn
            # (a turn of a few milliseconds each made every other client wait a round of all such clients).
            await asyncio.sleep(0)
            if isinstance(packet, (wire.Publish, wire.Subscribe)) and core.store and core.store.crowded():
                await self._unless_ended(core.store.room())  # the disk is behind: this client waits, TCP holds it
            if self._ended is not None:
                return  # taken over or stopped: what is still buffered belongs to no session any more
            # From here to the next await the session is this connection's: nothing else can run meanwhile.
            if isinstance(packet, wire.Publish):
                await self._publish(s, packet)
            elif isinstance(packet, wire.Ack):
                if packet.kind == wire.PUBREL:
                    known = core.released(s, packet.packet_id)
                    code = wire.SUCCESS if known or not self.v5 else wire.PACKET_ID_NOT_FOUND
                    await self._unless_ended(self._acks.put((wire.ack(wire.PUBCOMP, packet.packet_id, code, self.v5),
                                                             True)))
                else:
                    pubrel = core.acked(s, packet)
                    if pubrel is not None:  # sent once the data directory knows the PUBREC came
                        await self._unless_ended(self._acks.put((pubrel, False)))
            elif isinstance(packet, wire.Subscribe):
                results = core.subscribe(s, packet)
                await self._committed()  # Closed if the session was taken over meanwhile: its SUBACK is not owed
                core.subscribed(s, packet, results)
            elif isinstance(packet, wire.Unsubscribe):
                core.unsubscribe(s, packet)
            elif isinstance(packet, wire.Control) and packet.kind == wire.PINGREQ:
                self.send(wire.PINGRESP_PACKET)
            elif isinstance(packet, wire.Control) and packet.kind == wire.AUTH:
                self.end("it sent AUTH, but enhanced authentication is not supported", wire.PROTOCOL_ERROR)
                return
            elif isinstance(packet, wire.Control):  # DISCONNECT
                self._disconnected(packet)
                return

    def _disconnected(self, packet: wire.Control) -> None:
        """A DISCONNECT: the will is dropped, unless (MQTT 5) the client asks for it or sets a session expiry after
        asking for none, which is a protocol error [MQTT-3.14.2-2]."""
        if packet.session_expiry is not None and packet.session_expiry and self._session_expiry == 0:
            self.end("its DISCONNECT set a session expiry after its CONNECT asked for none", wire.PROTOCOL_ERROR)
            return
        self._graceful = packet.code != wire.DISCONNECT_WITH_WILL
        self._disconnect_expiry = packet.session_expiry

    async def _publish(self, s: Session, p: wire.Publish) -> None:
        p = self._unalias(p)
        problem = topic_problem(p.topic)
        if problem:
            self.end(f"PUBLISH to {p.topic[:80]!r}: {problem}", wire.TOPIC_NAME_INVALID)
            raise Closed
        if self.hub.stopping:
            return  # not acknowledged: the client sends it again once the broker is back
        resent = p.qos == 2 and p.packet_id in s.awaiting_release
        if p.qos and not resent:
            self._receiving += 1
            if self.v5 and self._receiving > MAX_UNACKNOWLEDGED:
                self.end(f"more than {MAX_UNACKNOWLEDGED} publishes unacknowledged (its receive maximum)",
                         wire.RECEIVE_MAXIMUM_EXCEEDED)
                raise Closed
        code = wire.SUCCESS if resent else self.hub.core.publish(s, p)  # a resend before PUBREL was routed already
        if p.qos == 1:
            await self._unless_ended(self._acks.put((wire.ack(wire.PUBACK, p.packet_id or 0, code, self.v5), True)))
        elif p.qos == 2:
            refused = self.v5 and code >= wire.SUBSCRIBE_FAILURE
            if not refused:
                s.awaiting_release.add(p.packet_id or 0)
            await self._unless_ended(self._acks.put((wire.ack(wire.PUBREC, p.packet_id or 0, code, self.v5),
                                                     refused)))

    def _unalias(self, p: wire.Publish) -> wire.Publish:
        """The publish with its topic, where an MQTT 5 client gave a topic alias; Closed for a wrong alias."""
        if p.alias is None:
            return p
        if p.alias > TOPIC_ALIASES:
            self.end(f"topic alias {p.alias}, over its maximum of {TOPIC_ALIASES}", wire.TOPIC_ALIAS_INVALID)
            raise Closed
        if p.topic:
            self._aliases[p.alias] = p.topic
            return p
        topic = self._aliases.get(p.alias)
        if topic is None:
            self.end(f"topic alias {p.alias} was never set", wire.PROTOCOL_ERROR)
            raise Closed
        return dataclasses.replace(p, topic=topic)

    async def _committed(self) -> None:
        store = self.hub.core.store
        if store is not None:
            await self._unless_ended(store.committed())

    async def _acknowledger(self) -> None:
        """Acknowledge publishes in the order they came, each once what it changed is on disk."""
        while True:
            ack, ends_exchange = await self._acks.get()
            try:
                await self._committed()
            except Closed:
                return
            self.send(ack)
            if ends_exchange:
                self._receiving = max(0, self._receiving - 1)

    async def _flusher(self) -> None:
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            try:
                await self.transport.flush()
            except (OSError, Closed):
                self.transport.abort()  # the reader sees the connection closed, as when the client drops it
                return
            if self.session is not None:
                self.hub.core.pump(self.session)  # the network took what it held: the queue may go on
