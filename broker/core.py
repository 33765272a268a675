"""Sessions and routing: who is subscribed to what, what waits for whom, and in what order it is sent.

A publish is routed the moment it is read: every matching session gets the
message in its queue (and, for a persistent session, in the data directory)
before the publisher is acknowledged, so nothing the broker acknowledged
depends on what the publisher does next. Each session's queue is sent in
order with at most `MAX_INFLIGHT` QoS 1 messages awaiting their PUBACK; a
message leaves the queue (and the disk) only when its PUBACK arrives, and is
sent again, marked DUP, when its client comes back.

Nothing here awaits: connect, subscribe, unsubscribe, publish and disconnect
change the routing state in one step each on the event loop, so they can
interleave in any order without races. No sockets here either: a connection
hands decoded packets in and gets bytes out through its `Outlet`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from broker import wire
from broker.access import Access
from broker.filters import RetainedTree, SubscriptionTree, filter_problem
from broker.store import State, Store, StoredSession, StoredWill

log = logging.getLogger("edison-broker")

MAX_INFLIGHT = 20  # QoS 1 messages sent to one client and not yet acknowledged (Mosquitto's default)


class Outlet(Protocol):
    """The live connection of a session."""

    def send(self, data: bytes) -> None:
        """Queue bytes for the client; never blocks."""

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
        self.inflight: dict[int, Outgoing] = {}
        self.awaiting_release: set[int] = set()  # QoS 2 publishes acknowledged with PUBREC, before their PUBREL
        self.outlet: Outlet | None = None
        self.will: wire.Will | None = None
        self.keepalive = 0
        self.will_due: asyncio.TimerHandle | None = None  # restored at start: the will if the client stays away
        self._ids = itertools.cycle(range(1, 65536))

    def who(self) -> str:
        return f"user={self.username or '(none)'} client={self.client_id}"

    def next_packet_id(self) -> int:
        while True:
            packet_id = next(self._ids)
            if packet_id not in self.inflight:
                return packet_id


class Core:
    def __init__(self, access: Access, store: Store | None = None, max_queued: int = 10_000,
                 max_message_size: int = 65536) -> None:
        self.access = access
        self.store = store
        self.max_queued = max_queued
        self.max_message_size = max_message_size
        self.sessions: dict[str, Session] = {}
        self.subscribers = SubscriptionTree()
        self.retained: RetainedTree[tuple[bytes, int]] = RetainedTree()
        self.dropped = 0  # messages not queued because a client's queue was full

    # -- start ------------------------------------------------------------------

    def restore(self, state: State, loop: asyncio.AbstractEventLoop) -> None:
        """Take over what the data directory kept; clients that were connected get their will if they stay away."""
        for m in state.retained:
            self.retained.set(m.topic, (m.data, m.qos))
        for st in state.sessions:
            s = Session(st.client_id, st.username or None, persistent=True)
            s.keepalive = st.keepalive
            for topic_filter, qos in st.subscriptions:
                if filter_problem(topic_filter) or not self.access.may_subscribe(s.username, topic_filter):
                    log.warning("%s: dropped its subscription to %s (no longer allowed)", s.who(), topic_filter)
                    if self.store:
                        self.store.unsubscribe(s.client_id, topic_filter)
                    continue
                s.subscriptions[topic_filter] = qos
                self.subscribers.add(topic_filter, s.client_id, qos)
            s.queue.extend(Outgoing(m.topic, m.data, m.qos, stored=m.id) for m in st.queued)
            if st.connected and st.will and st.keepalive:
                s.will = wire.Will(st.will.topic, st.will.data, st.will.qos, st.will.retain)
                s.will_due = loop.call_later(1.5 * st.keepalive, self._overdue, s)
            self.sessions[s.client_id] = s

    def _overdue(self, s: Session) -> None:
        s.will_due = None
        if s.outlet is None and s.will is not None:
            log.info("%s did not come back within %g s: published its Last Will", s.who(), 1.5 * s.keepalive)
            self._publish_will(s)
            self._keep(s)

    # -- connections ------------------------------------------------------------

    def owner_of(self, client_id: str) -> str | None:
        """The user whose persistent session has this client id, if any."""
        s = self.sessions.get(client_id)
        return s.username if s is not None and s.persistent else None

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
        s.username, s.will, s.keepalive, s.outlet = username, c.will, c.keepalive, outlet
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
            log.warning("refused will: %s topic=%s", s.who(), will.topic)

    def _keep(self, s: Session) -> None:
        if not s.persistent:
            return
        w = s.will
        stored = StoredSession(s.client_id, s.username or "", s.keepalive,
                               StoredWill(w.topic, w.payload, w.qos, w.retain) if w else None,
                               connected=s.outlet is not None or s.will_due is not None)
        if self.store:
            self.store.keep_session(stored)

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
        if len(p.payload) > self.max_message_size:
            log.warning("refused publish: %s topic=%s: %d bytes, over the limit of %d", s.who(), p.topic,
                        len(p.payload), self.max_message_size)
        elif not self.access.may_publish(s.username, p.topic):
            log.warning("refused publish: %s topic=%s", s.who(), p.topic)
        else:
            self.route(p.topic, p.payload, p.qos, p.retain)

    def route(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Hand a message to every matching session (queue, and disk for persistent ones), at once."""
        if retain:
            if payload:
                self.retained.set(topic, (payload, qos))
            else:
                self.retained.delete(topic)
            if self.store:
                self.store.set_retained(topic, payload, qos)
        for client_id, sub_qos in self.subscribers.match(topic).items():
            s = self.sessions[client_id]
            q = min(qos, sub_qos, 1)
            if s.outlet is None and not (s.persistent and q):
                continue
            if self.max_queued and len(s.queue) >= self.max_queued:
                self.dropped += 1
                log.error("dropped message on %s for %s: already %d queued (--max-queued)", topic, s.who(),
                          self.max_queued)
                continue
            stored = self.store.queue(client_id, topic, payload, q) if self.store and s.persistent and q else None
            s.queue.append(Outgoing(topic, payload, q, stored=stored))
            self.pump(s)

    def subscribe(self, s: Session, p: wire.Subscribe) -> list[int]:
        """Register what may be granted (at most QoS 1); the codes for the SUBACK."""
        codes = []
        for topic_filter, qos in p.requests:
            problem = filter_problem(topic_filter)
            if problem or not self.access.may_subscribe(s.username, topic_filter):
                log.warning("refused subscribe: %s topic=%s%s", s.who(), topic_filter,
                            f": {problem}" if problem else "")
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
        """After the subscription is kept: the SUBACK, then the retained messages of what was granted."""
        if s.outlet is None:
            return
        self._control(s, wire.suback(p.packet_id, codes))
        for (topic_filter, _), granted in zip(p.requests, codes, strict=True):
            if granted == wire.SUBSCRIBE_FAILURE:
                continue
            for topic, (payload, qos) in self.retained.matching(topic_filter):
                s.queue.append(Outgoing(topic, payload, min(qos, granted), retain=True))
        self.pump(s)

    def unsubscribe(self, s: Session, p: wire.Unsubscribe) -> None:
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
        s.queue.append(Outgoing(raw=data, outlet=s.outlet))
        self.pump(s)

    def pump(self, s: Session) -> None:
        """Send from the queue, in order, while the client has room for QoS 1 messages."""
        outlet = s.outlet
        if outlet is None:
            return
        while s.queue:
            m = s.queue[0]
            if m.raw is None and m.qos and len(s.inflight) >= MAX_INFLIGHT:
                return
            s.queue.popleft()
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
