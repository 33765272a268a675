"""Sessions and routing: who is subscribed to what, what waits for whom, and in what order it is sent.

A publish is routed the moment it is read: every matching session gets the
message in its queue (and, for a persistent session, in the data directory)
before the publisher is acknowledged, so nothing the broker acknowledged
depends on what the publisher does next. Each session's queue is sent in
order with at most `MAX_INFLIGHT` QoS 1 messages awaiting their PUBACK and no
more than the connection can take (`Outlet.writable`); a message leaves the
queue (and the disk) only when its PUBACK arrives, and is sent again, marked
DUP, when its client comes back.

What one client can make the broker hold is bounded: its queue (messages and
bytes), its subscriptions, its persistent sessions, and the retained messages
of everyone together.

Nothing here awaits: connect, subscribe, unsubscribe, publish and disconnect
change the routing state in one step each on the event loop, so they can
interleave in any order without races. No sockets here either: a connection
hands decoded packets in and gets bytes out through its `Outlet`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from broker import wire
from broker.access import Access
from broker.filters import RetainedTree, SubscriptionTree, filter_problem
from broker.logs import Squelch, shown
from broker.server import Limits
from broker.store import State, Store, StoredSession, StoredWill

log = logging.getLogger("edison-broker")

MAX_INFLIGHT = 20  # QoS 1 messages sent to one client and not yet acknowledged (Mosquitto's default)


class Outlet(Protocol):
    """The live connection of a session."""

    def send(self, data: bytes) -> None:
        """Queue bytes for the client; never blocks."""

    def writable(self) -> bool:
        """Whether the connection takes more now (the pump resumes once it has sent what it holds)."""

    def close(self, reason: str) -> None:
        """End the connection at once, without a Last Will (another connection took the session over)."""


@dataclass
class Outgoing:
    """A message for one session, or (`raw`) an acknowledgement that must keep its place among them."""

    topic: str = ""
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    stored: int | None = None  # row id in the data directory, deleted when the client acknowledges it
    raw: bytes | None = None
    outlet: Outlet | None = None  # the connection a `raw` entry belongs to


class Session:
    def __init__(self, client_id: str, username: str | None, persistent: bool) -> None:
        self.client_id = client_id
        self.username = username
        self.persistent = persistent
        self.subscriptions: dict[str, int] = {}
        self.queue: deque[Outgoing] = deque()
        self.queued_bytes = 0
        self.inflight: dict[int, Outgoing] = {}
        self.awaiting_release: set[int] = set()  # QoS 2 publishes acknowledged with PUBREC, before their PUBREL
        self.outlet: Outlet | None = None
        self.offline_since: float | None = None  # unix time its client left (persistent sessions expire)
        self.will: wire.Will | None = None
        self.keepalive = 0
        self.will_due: asyncio.TimerHandle | None = None  # restored at start: the will if the client stays away
        self._ids = itertools.cycle(range(1, 65536))

    def who(self) -> str:
        return f"user={shown(self.username)} client={shown(self.client_id)}"

    def next_packet_id(self) -> int:
        while True:
            packet_id = next(self._ids)
            if packet_id not in self.inflight:
                return packet_id

    def push(self, m: Outgoing) -> None:
        self.queue.append(m)
        self.queued_bytes += len(m.payload)

    def pop(self) -> Outgoing:
        m = self.queue.popleft()
        self.queued_bytes -= len(m.payload)
        return m


class Core:
    def __init__(self, access: Access, store: Store | None = None, limits: Limits | None = None) -> None:
        self.access = access
        self.store = store
        self.limits = limits or Limits()
        self.sessions: dict[str, Session] = {}
        self.subscribers = SubscriptionTree()
        self.retained: RetainedTree[tuple[bytes, int]] = RetainedTree()
        self.retained_bytes = 0
        self.dropped = 0  # messages not queued because a client's queue was full
        self.squelch = Squelch()

    # -- start ------------------------------------------------------------------

    def restore(self, state: State, loop: asyncio.AbstractEventLoop) -> None:
        """Take over what the data directory kept; clients that were connected get their will if they stay away."""
        for m in state.retained:
            self._retain(m.topic, m.data, m.qos)
        for st in state.sessions:
            s = Session(st.client_id, st.username or None, persistent=True)
            s.keepalive = st.keepalive
            s.offline_since = st.offline_since
            s.awaiting_release = set(st.awaiting_release)
            for topic_filter, qos in st.subscriptions:
                if filter_problem(topic_filter) or not self.access.may_subscribe(s.username, topic_filter):
                    log.warning("%s: dropped its subscription to %s (no longer allowed)", s.who(), topic_filter)
                    if self.store:
                        self.store.unsubscribe(s.client_id, topic_filter)
                    continue
                s.subscriptions[topic_filter] = qos
                self.subscribers.add(topic_filter, s.client_id, qos)
            for m in st.queued:
                s.push(Outgoing(m.topic, m.data, m.qos, stored=m.id))
            if st.connected and st.will and st.keepalive:
                s.will = wire.Will(st.will.topic, st.will.data, st.will.qos, st.will.retain)
                s.will_due = loop.call_later(1.5 * st.keepalive, self._overdue, s)
            elif st.connected:
                s.offline_since = time.time()
            self.sessions[s.client_id] = s

    def _overdue(self, s: Session) -> None:
        s.will_due = None
        if s.outlet is None and s.will is not None:
            log.info("%s did not come back within %g s: published its Last Will", s.who(), 1.5 * s.keepalive)
            s.offline_since = time.time()
            self._publish_will(s)
            self._keep(s)

    def expire(self, now: float) -> int:
        """Drop persistent sessions whose client has been away longer than the session expiry; how many."""
        limit = self.limits.session_expiry
        if not limit:
            return 0
        gone = [s for s in self.sessions.values()
                if s.outlet is None and s.offline_since is not None and now - s.offline_since > limit]
        for s in gone:
            log.info("%s: session expired after %.0f days away, with %d queued message(s)", s.who(),
                     (now - (s.offline_since or now)) / 86400, len(s.queue))
            self._drop(s)
        return len(gone)

    # -- connections ------------------------------------------------------------

    def owner_of(self, client_id: str) -> str | None:
        """The user whose session has this client id, if it is persistent or connected."""
        s = self.sessions.get(client_id)
        return s.username if s is not None and (s.persistent or s.outlet is not None) else None

    def sessions_of(self, username: str | None) -> int:
        """Persistent sessions of a user (each keeps a queue while its client is away)."""
        return sum(1 for s in self.sessions.values() if s.persistent and s.username == username)

    def attach(self, c: wire.Connect, username: str | None, outlet: Outlet) -> tuple[Session, bool]:
        """The session for a login that was accepted, and whether it existed; a connection it had is closed."""
        s = self.sessions.get(c.client_id)
        if s is not None:
            if s.outlet is not None:
                log.info("%s: a new connection takes over the session", s.who())
                self._forget_raw(s)
                old, s.outlet = s.outlet, None  # its end must not touch the session any more
                old.close("another connection took over its client id")
            if s.will_due is not None:
                s.will_due.cancel()
                s.will_due = None
            if c.clean_session or not s.persistent:  # a clean session ends with its connection: nothing to resume
                self._drop(s)
                s = None
        present = s is not None
        if s is None:
            s = Session(c.client_id, username, persistent=not c.clean_session)
            self.sessions[c.client_id] = s
        s.username, s.will, s.keepalive, s.outlet, s.offline_since = username, c.will, c.keepalive, outlet, None
        self._keep(s)
        return s, present

    def resume(self, s: Session) -> None:
        """After CONNACK: what was sent and not acknowledged goes again (DUP), then the queue."""
        assert s.outlet is not None
        log.debug("%s: sending again %d unacknowledged message(s); %d queued", s.who(), len(s.inflight), len(s.queue))
        for packet_id, m in s.inflight.items():
            s.outlet.send(wire.publish(m.topic, m.payload, m.qos, m.retain, packet_id, dup=True))
        self.pump(s)

    def detach(self, s: Session, outlet: Outlet, graceful: bool) -> None:
        """The connection ended; without a DISCONNECT first, the will is published."""
        if s.outlet is not outlet:
            return  # taken over: the session lives on with the new connection
        s.outlet = None
        s.offline_since = time.time()
        self._forget_raw(s)
        if not graceful and s.will is not None:
            self._publish_will(s)
        s.will = None
        if s.persistent:
            self._keep(s)
        else:
            self._drop(s)

    def _publish_will(self, s: Session) -> None:
        will, s.will = s.will, None
        assert will is not None
        if self.access.may_publish(s.username, will.topic):
            self.route(will.topic, will.payload, will.qos, will.retain)
        else:
            log.warning("refused will: %s topic=%s", s.who(), shown(will.topic))

    def _keep(self, s: Session) -> None:
        if not s.persistent or not self.store:
            return
        w = s.will
        self.store.keep_session(StoredSession(
            s.client_id, s.username or "", s.keepalive, StoredWill(w.topic, w.payload, w.qos, w.retain) if w else None,
            connected=s.outlet is not None or s.will_due is not None, offline_since=s.offline_since))

    def _drop(self, s: Session) -> None:
        if self.sessions.get(s.client_id) is not s:
            return
        for topic_filter in s.subscriptions:
            self.subscribers.remove(topic_filter, s.client_id)
        del self.sessions[s.client_id]
        if s.persistent and self.store:
            self.store.drop_session(s.client_id)

    def _forget_raw(self, s: Session) -> None:
        """Acknowledgements queued for a connection that is gone never reach another one."""
        if any(m.raw is not None for m in s.queue):
            s.queue = deque(m for m in s.queue if m.raw is None)

    # -- packets ----------------------------------------------------------------

    def publish(self, s: Session, p: wire.Publish) -> None:
        """Route a client's publish, or refuse it with a log line (MQTT 3.1.1 has no negative acknowledgement)."""
        size_limit = self.limits.max_message_size
        if size_limit and len(p.payload) > size_limit:
            self.squelch.warning(f"size {s.username}", "refused publish: %s topic=%s: %d bytes, over the limit of %d",
                                 s.who(), shown(p.topic), len(p.payload), size_limit)
        elif not self.access.may_publish(s.username, p.topic):
            self.squelch.warning(f"publish {s.username}", "refused publish: %s topic=%s", s.who(), shown(p.topic))
        else:
            if p.qos == 2 and s.persistent and self.store:
                self.store.awaiting_release(s.client_id, p.packet_id or 0)  # with the routing: never routed twice
            self.route(p.topic, p.payload, p.qos, p.retain)

    def released(self, s: Session, packet_id: int) -> None:
        """A PUBREL: the QoS 2 publish with this id is done with."""
        if packet_id in s.awaiting_release:
            s.awaiting_release.discard(packet_id)
            if s.persistent and self.store:
                self.store.released(s.client_id, packet_id)

    def route(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Hand a message to every matching session (queue, and disk for persistent ones), at once."""
        if retain:
            self._retain(topic, payload, qos, stored=True)
        for client_id, sub_qos in self.subscribers.match(topic).items():
            s = self.sessions[client_id]
            q = min(qos, sub_qos, 1)
            if s.outlet is None and not (s.persistent and q):
                continue
            if not self._room(s, topic, len(payload)):
                continue
            stored = self.store.queue(client_id, topic, payload, q) if self.store and s.persistent and q else None
            s.push(Outgoing(topic, payload, q, stored=stored))
            self.pump(s)

    def _retain(self, topic: str, payload: bytes, qos: int, stored: bool = False) -> None:
        """Keep (or, with an empty payload, forget) the retained message of a topic, within --max-retained-bytes."""
        old = self.retained.get(topic)
        growth = len(payload) - (len(old[0]) if old else 0)
        limit = self.limits.max_retained_bytes
        if payload and growth > 0 and limit and self.retained_bytes + growth > limit:
            self.squelch.warning("retained", "not retained: %s (%d bytes): the retained messages already hold "
                                 "%d bytes (--max-retained-bytes); delivered to current subscribers only",
                                 shown(topic), len(payload), self.retained_bytes)
            return
        if payload:
            self.retained.set(topic, (payload, qos))
        else:
            self.retained.delete(topic)
        self.retained_bytes += growth
        if stored and self.store:
            self.store.set_retained(topic, payload, qos)

    def _room(self, s: Session, topic: str, size: int) -> bool:
        """Whether a message fits in the client's queue (messages and bytes); else it is dropped, with a log line."""
        limits = self.limits
        if (limits.max_queued and len(s.queue) >= limits.max_queued) or (
                limits.max_queued_bytes and s.queued_bytes + size > limits.max_queued_bytes):
            self.dropped += 1
            self.squelch.warning(f"dropped {s.client_id}", "dropped message on %s for %s: already %d queued, %d bytes "
                                 "(--max-queued, --max-queued-bytes)", shown(topic), s.who(), len(s.queue),
                                 s.queued_bytes)
            return False
        return True

    def subscribe(self, s: Session, p: wire.Subscribe) -> list[int]:
        """Register what may be granted (at most QoS 1); the codes for the SUBACK."""
        if self.sessions.get(s.client_id) is not s:  # a session taken over or ended: its filters would be orphans
            log.error("%s: SUBSCRIBE for a session that is gone: refused", s.who())
            return [wire.SUBSCRIBE_FAILURE] * len(p.requests)
        codes = []
        for topic_filter, qos in p.requests:
            problem = filter_problem(topic_filter)
            if not problem and not self.access.may_subscribe(s.username, topic_filter):
                problem = "not allowed"
            cap = self.limits.max_subscriptions
            if not problem and cap and topic_filter not in s.subscriptions and len(s.subscriptions) >= cap:
                problem = f"already {cap} subscriptions (--max-subscriptions)"
            if problem:
                self.squelch.warning(f"subscribe {s.username}", "refused subscribe: %s topic=%s: %s", s.who(),
                                     shown(topic_filter), problem)
                codes.append(wire.SUBSCRIBE_FAILURE)
                continue
            granted = min(qos, 1)
            s.subscriptions[topic_filter] = granted
            self.subscribers.add(topic_filter, s.client_id, granted)
            if s.persistent and self.store:
                self.store.subscribe(s.client_id, topic_filter, granted)
            codes.append(granted)
        return codes

    def subscribed(self, s: Session, p: wire.Subscribe, codes: list[int]) -> None:
        """After the subscription is kept: the SUBACK, then the retained messages of what was granted.

        A filter given twice in one SUBSCRIBE sends its retained messages once.
        """
        if s.outlet is None:
            return
        self._control(s, wire.suback(p.packet_id, codes))
        granted = {f: code for (f, _), code in zip(p.requests, codes, strict=True) if code != wire.SUBSCRIBE_FAILURE}
        for topic_filter, code in granted.items():
            for topic, (payload, qos) in self.retained.matching(topic_filter):
                if self._room(s, topic, len(payload)):
                    s.push(Outgoing(topic, payload, min(qos, code), retain=True))
        self.pump(s)

    def unsubscribe(self, s: Session, p: wire.Unsubscribe) -> None:
        if self.sessions.get(s.client_id) is not s:  # its filters now belong to the session that took its place
            log.error("%s: UNSUBSCRIBE for a session that is gone: ignored", s.who())
            return
        for topic_filter in p.filters:
            if s.subscriptions.pop(topic_filter, None) is not None:
                self.subscribers.remove(topic_filter, s.client_id)
                if s.persistent and self.store:
                    self.store.unsubscribe(s.client_id, topic_filter)
        self._control(s, wire.unsuback(p.packet_id))

    def acked(self, s: Session, packet_id: int) -> None:
        """A PUBACK: the message is done with, the next one may go."""
        m = s.inflight.pop(packet_id, None)
        if m is None:
            log.debug("%s acknowledged unknown packet id %d", s.who(), packet_id)
            return
        if m.stored is not None and self.store:
            self.store.delivered(m.stored)
        self.pump(s)

    # -- sending ----------------------------------------------------------------

    def _control(self, s: Session, data: bytes) -> None:
        s.push(Outgoing(raw=data, outlet=s.outlet))
        self.pump(s)

    def pump(self, s: Session) -> None:
        """Send from the queue, in order, while the client has room for QoS 1 messages and its connection for bytes."""
        outlet = s.outlet
        if outlet is None:
            return
        while s.queue and outlet.writable():
            m = s.queue[0]
            if m.raw is None and m.qos and len(s.inflight) >= MAX_INFLIGHT:
                return
            s.pop()
            if m.raw is not None:
                if m.outlet is outlet:
                    outlet.send(m.raw)
            elif m.qos:
                packet_id = s.next_packet_id()
                s.inflight[packet_id] = m
                outlet.send(wire.publish(m.topic, m.payload, m.qos, m.retain, packet_id))
            else:
                outlet.send(wire.publish(m.topic, m.payload, 0, m.retain))

    def unacknowledged(self) -> int:
        """Messages for connected clients not yet acknowledged by them."""
        return sum(len(s.inflight) + sum(1 for m in s.queue if m.raw is None)
                   for s in self.sessions.values() if s.outlet is not None)
