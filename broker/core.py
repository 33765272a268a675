"""Sessions and routing: who is subscribed to what, what waits for whom, and in what order it is sent.

A publish is routed the moment it is read: every matching session gets the
message in its queue (and, for a persistent session, in the data directory)
before the publisher is acknowledged, so nothing the broker acknowledged
depends on what the publisher does next. Each session's queue is sent in
order with at most `MAX_INFLIGHT` QoS 1 and 2 messages awaiting their
acknowledgement (fewer if the client's receive maximum says so) and no more
than the connection can take (`Outlet.writable`); a message leaves the queue
(and the disk) only when its PUBACK or PUBCOMP arrives, and is sent again,
marked DUP, when its client comes back. A QoS 2 message keeps its packet id
across restarts (it is derived from its row in the data directory) and
whether its PUBREC came, so the exchange resumes where it stood.

MQTT 5 adds to a message its own properties (forwarded untouched), an
expiry (a queued message past it is dropped, the rest is sent with what is
left of it), and to a subscription its options and identifier; a session
may end with its connection or outlive it for as long as its client asked,
never longer than --session-expiry.

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
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Protocol

from broker import properties as P
from broker import wire
from broker.access import Access
from broker.filters import RetainedTree, SubscriptionTree, filter_problem, shared_filter
from broker.logs import Squelch, shown
from broker.models import Limits
from broker.store import State, Store, StoredSession, StoredWill

log = logging.getLogger("edison-broker")

MAX_INFLIGHT = 20  # QoS 1 and 2 messages sent to one client and not yet acknowledged (Mosquitto's default)
NEVER = 0xFFFFFFFF  # an MQTT 5 session expiry interval that means: the session does not expire
EXPIRY_TIMER = 60.0  # sessions expiring sooner than this get a timer of their own, the rest the periodic look


class Outlet(Protocol):
    """The live connection of a session."""

    def send(self, data: bytes) -> None:
        """Queue bytes for the client; never blocks."""

    def writable(self) -> bool:
        """Whether the connection takes more now (the pump resumes once it has sent what it holds)."""

    def close(self, reason: str, code: int = wire.SESSION_TAKEN_OVER) -> None:
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
    props: bytes = b""  # the message's own MQTT 5 properties
    expires: float | None = None  # unix time after which it is not sent
    sub_ids: tuple[int, ...] = ()  # identifiers of the subscriptions it matched
    released: bool = False  # QoS 2: its PUBREC came, PUBREL was sent


@dataclass(frozen=True)
class Subscription:
    """A granted subscription: its QoS and (MQTT 5) options and identifier."""

    qos: int
    no_local: bool = False
    as_published: bool = False  # retain as published
    handling: int = 0  # retain handling: 0 send retained, 1 only for a new subscription, 2 never
    sub_id: int | None = None

    @classmethod
    def of(cls, options: int, sub_id: int | None = None) -> Subscription:
        return cls(options & 0x03, bool(options & 0x04), bool(options & 0x08), (options >> 4) & 0x03, sub_id)

    @property
    def options(self) -> int:
        return self.qos | self.no_local << 2 | self.as_published << 3 | self.handling << 4


@dataclass(frozen=True)
class Retained:
    payload: bytes
    qos: int
    props: bytes = b""
    expires: float | None = None

    def cost(self, topic: str) -> int:
        """Bytes it makes the broker hold, its topic included."""
        return len(topic.encode()) + len(self.payload) + len(self.props)


class Session:
    def __init__(self, client_id: str, username: str | None, persistent: bool) -> None:
        self.client_id = client_id
        self.username = username
        self.persistent = persistent
        self.on_disk = False  # whether the data directory has it
        self.expiry: float | None = None  # seconds it outlives its client (persistent sessions); None: the broker's
        self.subscriptions: dict[str, Subscription] = {}
        self.queue: deque[Outgoing] = deque()
        self.queued_bytes = 0
        self.inflight: dict[int, Outgoing] = {}
        self.awaiting_release: set[int] = set()  # QoS 2 publishes acknowledged with PUBREC, before their PUBREL
        self.outlet: Outlet | None = None
        self.offline_since: float | None = None  # unix time its client left (persistent sessions expire)
        self.will: wire.Will | None = None
        self.keepalive = 0
        self.will_due: asyncio.TimerHandle | None = None  # the will if the client stays away (will delay, restart)
        self.expiry_due: asyncio.TimerHandle | None = None
        # of the connection it has now
        self.v5 = False
        self.receive_max = MAX_INFLIGHT
        self.max_packet = 0  # the client's maximum packet size (0: no limit)
        self.alias_max = 0  # topic aliases the client takes
        self.aliases: dict[str, int] = {}
        self._ids = itertools.cycle(range(1, 65536))

    def who(self) -> str:
        return f"user={shown(self.username)} client={shown(self.client_id)}"

    def next_packet_id(self, m: Outgoing) -> int:
        """A free packet id; a stored QoS 2 message's is its row's, so it stays the same after a restart."""
        if m.qos == 2 and m.stored is not None and (m.stored % 65535) + 1 not in self.inflight:
            return (m.stored % 65535) + 1
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
    def __init__(self, access: Access, store: Store | None = None, limits: Limits | None = None,
                 statuses: dict[str, str] | None = None) -> None:
        """`statuses`: each device's status topic -> the device, whose own `online` and `offline` there are retained
        past --max-retained-bytes: one short message per device, and nobody who fills the retained store may make a
        stopped device read as online."""
        self.access = access
        self.store = store
        self.limits = limits or Limits()
        self.statuses = statuses or {}
        self.sessions: dict[str, Session] = {}
        self.subscribers = SubscriptionTree()
        self.retained: RetainedTree[Retained] = RetainedTree()
        self.retained_bytes = 0
        self.dropped = 0  # messages not queued because a client's queue was full
        self.squelch = Squelch()
        self._turns: dict[str, int] = defaultdict(int)  # shared subscriptions: whose turn it is in each group

    # -- start ------------------------------------------------------------------

    def restore(self, state: State, loop: asyncio.AbstractEventLoop) -> None:
        """Take over what the data directory kept; clients that were connected get their will if they stay away."""
        for m in state.retained:
            self._retain(m.topic, Retained(m.data, m.qos, m.props, m.expires), own=m.topic in self.statuses)
        for st in state.sessions:
            s = Session(st.client_id, st.username or None, persistent=True)
            s.on_disk = True
            s.keepalive, s.expiry = st.keepalive, st.expiry
            s.offline_since = st.offline_since
            s.awaiting_release = set(st.awaiting_release)
            for topic_filter, options, sub_id in st.subscriptions:
                if filter_problem(shared_filter(topic_filter)[1]) or not self.access.may_subscribe(
                        s.username, shared_filter(topic_filter)[1]):
                    log.warning("%s: dropped its subscription to %s (no longer allowed)", s.who(), topic_filter)
                    if self.store:
                        self.store.unsubscribe(s.client_id, topic_filter)
                    continue
                self._add_subscription(s, topic_filter, Subscription.of(options, sub_id))
            for m in st.queued:
                out = Outgoing(m.topic, m.data, m.qos, m.retain, stored=m.id, props=m.props, expires=m.expires,
                               sub_ids=m.sub_ids, released=m.released)
                if m.released:  # its PUBREC came before the restart: only the PUBREL is owed
                    s.inflight[s.next_packet_id(out)] = out
                else:
                    s.push(out)
            if st.connected and st.will and (st.keepalive or st.will.delay):
                w = st.will
                s.will = wire.Will(w.topic, w.data, w.qos, w.retain, w.props, w.expiry, w.delay)
                wait = max(w.delay, 1.5 * st.keepalive)
                s.will_due = loop.call_later(wait, self._overdue, s, wait)
            elif st.connected:
                s.offline_since = time.time()
            self.sessions[s.client_id] = s
            self._expire_soon(s)

    def _overdue(self, s: Session, after: float) -> None:
        s.will_due = None
        if s.outlet is None and s.will is not None:
            log.info("%s did not come back within %g s: published its Last Will", s.who(), after)
            s.offline_since = s.offline_since or time.time()
            self._publish_will(s)
            self._keep(s)

    def _lifetime(self, s: Session) -> float | None:
        """Seconds the session outlives its client's absence; None: for ever."""
        ceiling = self.limits.session_expiry or None
        wanted = None if s.expiry is None or s.expiry >= NEVER else s.expiry
        if s.expiry is None:
            return ceiling
        return wanted if ceiling is None else min(ceiling, wanted if wanted is not None else ceiling)

    def _expired(self, s: Session, now: float) -> bool:
        lifetime = self._lifetime(s)
        return s.outlet is None and s.offline_since is not None and lifetime is not None and \
            now - s.offline_since >= lifetime

    def expire(self, now: float) -> int:
        """Drop persistent sessions whose client has been away longer than their expiry; how many."""
        gone = [s for s in self.sessions.values() if self._expired(s, now)]
        for s in gone:
            log.info("%s: session expired after %.0f s away, with %d queued message(s)", s.who(),
                     now - (s.offline_since or now), len(s.queue))
            if s.will is not None:  # a delayed will goes out when its session ends, at the latest
                self._publish_will(s)
            self._drop(s)
        return len(gone)

    def _expire_soon(self, s: Session) -> None:
        """A timer for a session that expires before the periodic look would find it."""
        lifetime = self._lifetime(s)
        if s.offline_since is None or lifetime is None or lifetime >= EXPIRY_TIMER:
            return
        left = max(0.0, s.offline_since + lifetime - time.time())
        s.expiry_due = asyncio.get_running_loop().call_later(left, self.expire, time.time() + left)

    # -- connections ------------------------------------------------------------

    def owner_of(self, client_id: str) -> str | None:
        """The user whose session has this client id, if it is persistent or connected."""
        s = self.sessions.get(client_id)
        return s.username if s is not None and (s.persistent or s.outlet is not None) else None

    def sessions_of(self, username: str | None) -> int:
        """Persistent sessions of a user (each keeps a queue while its client is away)."""
        return sum(1 for s in self.sessions.values() if s.persistent and s.username == username)

    def session_expiry(self, c: wire.Connect) -> float | None:
        """How long the session of this CONNECT may outlive its connection: 0 ends with it, None is the broker's."""
        if c.version != wire.MQTT5:
            return 0 if c.clean_session else None
        return c.props.get(P.SESSION_EXPIRY, 0)

    def attach(self, c: wire.Connect, username: str | None, outlet: Outlet) -> tuple[Session, bool]:
        """The session for a login that was accepted, and whether it existed; a connection it had is closed."""
        s = self.sessions.get(c.client_id)
        expiry = self.session_expiry(c)
        if s is not None and self._expired(s, time.time()):
            self.expire(time.time())  # its time ran out before the periodic look came: gone, will and all
            s = None
        if s is not None:
            if s.outlet is not None:
                log.info("%s: a new connection takes over the session", s.who())
                self._forget_raw(s)
                old, s.outlet = s.outlet, None  # its end must not touch the session any more
                old.close("another connection took over its client id", wire.SESSION_TAKEN_OVER)
                if s.will is not None and (not s.will.delay or not s.persistent or c.clean_session):
                    self._publish_will(s)  # [MQTT-3.1.2-8]: the old connection did not DISCONNECT
            if s.will_due is not None:
                s.will_due.cancel()
                s.will_due = None
            if s.expiry_due is not None:
                s.expiry_due.cancel()
                s.expiry_due = None
            if c.clean_session or not s.persistent:  # a clean session ends with its connection: nothing to resume
                self._drop(s)
                s = None
        present = s is not None
        if s is None:
            s = Session(c.client_id, username, persistent=expiry != 0)
            self.sessions[c.client_id] = s
        s.persistent, s.expiry = expiry != 0, expiry
        s.username, s.will, s.keepalive, s.outlet, s.offline_since = username, c.will, c.keepalive, outlet, None
        s.v5 = c.version == wire.MQTT5
        s.receive_max = min(MAX_INFLIGHT, c.props.get(P.RECEIVE_MAXIMUM, MAX_INFLIGHT) or MAX_INFLIGHT)
        s.max_packet = c.props.get(P.MAXIMUM_PACKET_SIZE, 0) or 0
        s.alias_max, s.aliases = c.props.get(P.TOPIC_ALIAS_MAXIMUM, 0) or 0, {}
        self._keep(s)
        return s, present

    def granted_expiry(self, c: wire.Connect) -> int | None:
        """The session expiry the broker uses instead of the one an MQTT 5 client asked for, if it differs."""
        asked = self.session_expiry(c)
        ceiling = self.limits.session_expiry
        if c.version == wire.MQTT5 and asked and ceiling and (asked >= NEVER or asked > ceiling):
            return int(ceiling)
        return None

    def resume(self, s: Session) -> None:
        """After CONNACK: what was sent and not acknowledged goes again (DUP, or its PUBREL), then the queue."""
        assert s.outlet is not None
        log.debug("%s: sending again %d unacknowledged message(s); %d queued", s.who(), len(s.inflight), len(s.queue))
        for packet_id, m in s.inflight.items():
            if m.released:
                s.outlet.send(wire.ack(wire.PUBREL, packet_id))
            else:
                s.outlet.send(self._encode(s, m, packet_id, dup=True))
        self.pump(s)

    def detach(self, s: Session, outlet: Outlet, graceful: bool, expiry: int | None = None) -> None:
        """The connection ended; without a DISCONNECT first, the will is published (after its delay, if any).

        `expiry` is the session expiry an MQTT 5 DISCONNECT set.
        """
        if s.outlet is not outlet:
            return  # taken over: the session lives on with the new connection
        s.outlet = None
        s.offline_since = time.time()
        self._forget_raw(s)
        if expiry is not None:
            s.expiry, s.persistent = expiry, expiry != 0
        if graceful:
            s.will = None
        elif s.will is not None:
            lifetime = self._lifetime(s) if s.persistent else 0
            delay = min(s.will.delay, lifetime) if lifetime is not None else s.will.delay
            if delay:
                s.will_due = asyncio.get_running_loop().call_later(delay, self._overdue, s, delay)
            else:
                self._publish_will(s)
        if s.persistent:
            self._keep(s)
            self._expire_soon(s)
        else:
            self._drop(s)  # its will, if delayed, went out now: the session ends [MQTT-3.1.3-9]

    def _publish_will(self, s: Session) -> None:
        will, s.will = s.will, None
        assert will is not None
        refusal = self.access.publish_refusal(s.username, will.topic)
        if refusal is None:
            expires = time.time() + will.expiry if will.expiry is not None else None
            self.route(will.topic, will.payload, will.qos, will.retain, props=will.props, expires=expires,
                       owner=s.username)
        else:
            log.warning("refused will: %s topic=%s: %s", s.who(), shown(will.topic), refusal)

    def _keep(self, s: Session) -> None:
        """Write the session to the data directory (persistent ones), or remove it from there (no longer so)."""
        if not self.store:
            return
        if not s.persistent:
            if s.on_disk:
                self.store.drop_session(s.client_id)
                s.on_disk = False
            return
        s.on_disk = True
        w = s.will
        self.store.keep_session(StoredSession(
            s.client_id, s.username or "", s.keepalive,
            StoredWill(w.topic, w.payload, w.qos, w.retain, w.props, w.expiry, w.delay) if w else None,
            connected=s.outlet is not None or s.will_due is not None, offline_since=s.offline_since,
            expiry=s.expiry))

    def _drop(self, s: Session) -> None:
        if self.sessions.get(s.client_id) is not s:
            return
        for topic_filter in s.subscriptions:
            self.subscribers.remove(shared_filter(topic_filter)[1], (s.client_id, topic_filter))
        del self.sessions[s.client_id]
        for timer in (s.will_due, s.expiry_due):
            if timer is not None:
                timer.cancel()
        if s.on_disk and self.store:
            self.store.drop_session(s.client_id)

    def _forget_raw(self, s: Session) -> None:
        """Acknowledgements queued for a connection that is gone never reach another one."""
        if any(m.raw is not None for m in s.queue):
            s.queue = deque(m for m in s.queue if m.raw is None)

    # -- packets ----------------------------------------------------------------

    def publish(self, s: Session, p: wire.Publish) -> int:
        """Route a client's publish, or refuse it with a log line; the MQTT 5 reason code for its acknowledgement."""
        size_limit = self.limits.max_message_size
        if size_limit and len(p.payload) > size_limit:
            self.squelch.warning(f"size {s.username}", "refused publish: %s topic=%s: %d bytes, over the limit of %d",
                                 s.who(), shown(p.topic), len(p.payload), size_limit)
            return wire.QUOTA_EXCEEDED
        refusal = self.access.publish_refusal(s.username, p.topic)
        if refusal is not None:
            self.squelch.warning(f"publish {s.username}", "refused publish: %s topic=%s: %s", s.who(), shown(p.topic),
                                 refusal)
            return wire.NOT_AUTHORIZED
        if p.qos == 2 and s.persistent and self.store:
            self.store.awaiting_release(s.client_id, p.packet_id or 0)  # with the routing: never routed twice
        expires = time.time() + p.expiry if p.expiry is not None else None
        routed = self.route(p.topic, p.payload, p.qos, p.retain, props=p.props, expires=expires, sender=s.client_id,
                            owner=s.username)
        return wire.SUCCESS if routed else wire.NO_MATCHING_SUBSCRIBERS

    def released(self, s: Session, packet_id: int) -> bool:
        """A PUBREL: the QoS 2 publish with this id is done with; whether it was known."""
        if packet_id not in s.awaiting_release:
            return False
        s.awaiting_release.discard(packet_id)
        if s.persistent and self.store:
            self.store.released(s.client_id, packet_id)
        return True

    def route(self, topic: str, payload: bytes, qos: int, retain: bool, props: bytes = b"",
              expires: float | None = None, sender: str | None = None, owner: str | None = None) -> int:
        """Hand a message to every matching session (queue, and disk for persistent ones), at once; to how many.

        A client subscribed by several filters gets one copy, at the highest QoS they grant, with all their
        identifiers; a shared subscription's group gets one copy, for the next member in turn.
        """
        if retain:
            own = owner is not None and self.statuses.get(topic) == owner
            self._retain(topic, Retained(payload, qos, props, expires), stored=True, own=own)
        chosen: dict[str, list[Subscription]] = defaultdict(list)
        groups: dict[str, list[tuple[str, Subscription]]] = defaultdict(list)
        for client_id, topic_filter in self.subscribers.match(topic):
            sub = self.sessions[client_id].subscriptions[topic_filter]
            if topic_filter.startswith("$share/"):
                groups[topic_filter].append((client_id, sub))
            elif not (sub.no_local and client_id == sender):
                chosen[client_id].append(sub)
        for group, members in groups.items():
            client_id, sub = self._next_member(group, members)
            chosen[client_id].append(sub)
        delivered = 0
        for client_id, subs in chosen.items():
            s = self.sessions[client_id]
            q = max(min(qos, sub.qos) for sub in subs)
            if s.outlet is None and not (s.persistent and q):
                continue
            if not self._room(s, topic, len(payload)):
                continue
            keep_retain = retain and any(sub.as_published for sub in subs)
            sub_ids = tuple(sorted(sub.sub_id for sub in subs if sub.sub_id))
            stored = self.store.queue(client_id, topic, payload, q, keep_retain, props, expires, sub_ids) \
                if self.store and s.persistent and q else None
            s.push(Outgoing(topic, payload, q, keep_retain, stored=stored, props=props, expires=expires,
                            sub_ids=sub_ids))
            self.pump(s)
            delivered += 1
        return delivered

    def _next_member(self, group: str, members: list[tuple[str, Subscription]]) -> tuple[str, Subscription]:
        """Round robin among a shared subscription's members, connected ones first."""
        members.sort()
        online = [m for m in members if self.sessions[m[0]].outlet is not None] or members
        turn = self._turns[group]
        self._turns[group] = turn + 1
        return online[turn % len(online)]

    def _retain(self, topic: str, message: Retained, stored: bool = False, own: bool = False) -> None:
        """Keep (or, with an empty payload, forget) the retained message of a topic, within --max-retained-bytes.

        A message costs its topic, payload and properties: a retained message with a long topic and no payload
        holds memory and disk all the same.
        """
        old = self.retained.get(topic)
        growth = (message.cost(topic) if message.payload else 0) - (old.cost(topic) if old else 0)
        limit = self.limits.max_retained_bytes
        if message.payload and growth > 0 and limit and not own and self.retained_bytes + growth > limit:
            self.squelch.warning("retained", "not retained: %s (%d bytes with its topic): the retained messages "
                                 "already hold %d bytes (--max-retained-bytes); delivered to current subscribers only",
                                 shown(topic), message.cost(topic), self.retained_bytes)
            return
        if message.payload:
            self.retained.set(topic, message)
        else:
            self.retained.delete(topic)
        self.retained_bytes += growth
        if stored and self.store:
            self.store.set_retained(topic, message.payload, message.qos, message.props, message.expires)

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

    def _add_subscription(self, s: Session, topic_filter: str, sub: Subscription) -> bool:
        """Whether it is new (not a replacement of one with the same filter)."""
        new = topic_filter not in s.subscriptions
        s.subscriptions[topic_filter] = sub
        if new:
            self.subscribers.add(shared_filter(topic_filter)[1], (s.client_id, topic_filter))
        return new

    def subscribe(self, s: Session, p: wire.Subscribe) -> list[tuple[int, bool]]:
        """Register what may be granted; for each request, the SUBACK code and whether its filter is new."""
        if self.sessions.get(s.client_id) is not s:  # a session taken over or ended: its filters would be orphans
            log.error("%s: SUBSCRIBE for a session that is gone: refused", s.who())
            return [(wire.SUBSCRIBE_FAILURE, False)] * len(p.requests)
        results = []
        for topic_filter, options in p.requests:
            sub = Subscription.of(options, p.sub_id)
            group, path = shared_filter(topic_filter)
            code, problem = wire.TOPIC_FILTER_INVALID, filter_problem(path) if group != "" else \
                "a shared subscription needs a group name and a filter ($share/GROUP/FILTER) [MQTT-4.8.2-1]"
            if not problem and group is not None and sub.no_local:
                code, problem = wire.PROTOCOL_ERROR, "no local on a shared subscription [MQTT-3.8.3-4]"
            if not problem:
                refusal = self.access.subscribe_refusal(s.username, path)
                if refusal is not None:
                    code, problem = wire.NOT_AUTHORIZED, refusal
            cap = self.limits.max_subscriptions
            if not problem and cap and topic_filter not in s.subscriptions and len(s.subscriptions) >= cap:
                code, problem = wire.QUOTA_EXCEEDED, f"already {cap} subscriptions (--max-subscriptions)"
            if problem:
                self.squelch.warning(f"subscribe {s.username}", "refused subscribe: %s topic=%s: %s", s.who(),
                                     shown(topic_filter), problem)
                results.append((code if s.v5 else wire.SUBSCRIBE_FAILURE, False))
                continue
            new = self._add_subscription(s, topic_filter, sub)
            if s.persistent and self.store:
                self.store.subscribe(s.client_id, topic_filter, sub.options, sub.sub_id)
            results.append((sub.qos, new))
        return results

    def subscribed(self, s: Session, p: wire.Subscribe, results: list[tuple[int, bool]]) -> None:
        """After the subscription is kept: the SUBACK, then the retained messages of what was granted.

        A filter given twice in one SUBSCRIBE is handled as two SUBSCRIBEs in turn, its retained messages sent
        for each [MQTT-3.8.4-3]; a shared subscription gets none, and retain handling may say not to send them.
        """
        if s.outlet is None:
            return
        self._control(s, wire.suback(p.packet_id, [code for code, _ in results], s.v5))
        now = time.time()
        for (topic_filter, options), (code, new) in zip(p.requests, results, strict=True):
            sub = Subscription.of(options)
            if code >= wire.SUBSCRIBE_FAILURE or topic_filter.startswith("$share/") or sub.handling == 2 or (
                    sub.handling == 1 and not new):
                continue
            for topic, m in self.retained.matching(topic_filter):
                if m.expires is not None and m.expires <= now:
                    continue
                if self._room(s, topic, len(m.payload)):
                    s.push(Outgoing(topic, m.payload, min(m.qos, code), retain=True, props=m.props,
                                    expires=m.expires, sub_ids=(p.sub_id,) if p.sub_id else ()))
        self.pump(s)

    def unsubscribe(self, s: Session, p: wire.Unsubscribe) -> None:
        if self.sessions.get(s.client_id) is not s:  # its filters now belong to the session that took its place
            log.error("%s: UNSUBSCRIBE for a session that is gone: ignored", s.who())
            return
        codes = []
        for topic_filter in p.filters:
            if s.subscriptions.pop(topic_filter, None) is not None:
                self.subscribers.remove(shared_filter(topic_filter)[1], (s.client_id, topic_filter))
                if s.persistent and self.store:
                    self.store.unsubscribe(s.client_id, topic_filter)
                codes.append(wire.SUCCESS)
            else:
                codes.append(wire.NO_SUBSCRIPTION_EXISTED)
        self._control(s, wire.unsuback(p.packet_id, codes if s.v5 else None))

    def acked(self, s: Session, ack: wire.Ack) -> bytes | None:
        """A PUBACK, PUBREC or PUBCOMP from the client: the message moves on, and the next one may go.

        For a PUBREC, the PUBREL to send once the data directory knows of it: were it sent before, a broker
        killed meanwhile would send the message again after its restart to a client that already had it.
        """
        m = s.inflight.get(ack.packet_id)
        expected = None if m is None else wire.PUBACK if m.qos == 1 else wire.PUBCOMP if m.released else wire.PUBREC
        if m is not None and m.released and ack.kind == wire.PUBREC:
            expected = wire.PUBREC  # sent again: so is the PUBREL
        if ack.kind != expected:
            log.debug("%s: acknowledgement (type %d) for packet id %d, which is not waiting for it", s.who(),
                      ack.kind, ack.packet_id)
            if ack.kind == wire.PUBREC:  # answered, so the client can let go of it
                return wire.ack(wire.PUBREL, ack.packet_id, wire.PACKET_ID_NOT_FOUND, s.v5)
            return None
        assert m is not None
        if ack.kind == wire.PUBREC and ack.code < wire.SUBSCRIBE_FAILURE:
            if not m.released:
                m.released = True
                if m.stored is not None and self.store:
                    self.store.released_out(m.stored)
            return wire.ack(wire.PUBREL, ack.packet_id)
        del s.inflight[ack.packet_id]  # PUBACK, PUBCOMP, or a PUBREC that refuses the message
        self._discard(m)
        self.pump(s)
        return None

    # -- sending ----------------------------------------------------------------

    def _control(self, s: Session, data: bytes) -> None:
        s.push(Outgoing(raw=data, outlet=s.outlet))
        self.pump(s)

    def _encode(self, s: Session, m: Outgoing, packet_id: int | None, dup: bool = False,
                now: float | None = None) -> bytes:
        """The PUBLISH of `m` in the session's version: on MQTT 5 with its properties, expiry left and alias."""
        if not s.v5:
            return wire.publish(m.topic, m.payload, m.qos, m.retain, packet_id, dup)
        pairs: list[tuple[int, int | str | bytes | tuple[str, str]]] = []
        if m.expires is not None:
            pairs.append((P.MESSAGE_EXPIRY, max(1, math.ceil(m.expires - (now or time.time())))))
        pairs += [(P.SUBSCRIPTION_ID, i) for i in m.sub_ids]
        topic = m.topic
        alias = s.aliases.get(topic)
        if alias is not None:
            topic = ""
        elif len(s.aliases) < s.alias_max:
            alias = s.aliases[topic] = len(s.aliases) + 1  # the first message with it names the topic too
        if alias is not None:
            pairs.append((P.TOPIC_ALIAS, alias))
        return wire.publish(topic, m.payload, m.qos, m.retain, packet_id, dup, P.encode(pairs, m.props))

    def pump(self, s: Session) -> None:
        """Send from the queue, in order, while the client has room for QoS 1 and 2 messages and its connection for
        bytes; a message past its expiry, or larger than the client takes, is dropped."""
        outlet = s.outlet
        if outlet is None:
            return
        now = time.time()
        while s.queue and outlet.writable():
            m = s.queue[0]
            if m.raw is None and m.qos and len(s.inflight) >= s.receive_max:
                return
            s.pop()
            if m.raw is not None:
                if m.outlet is outlet:
                    outlet.send(m.raw)
                continue
            if m.expires is not None and m.expires <= now:
                log.debug("%s: message on %s expired before it could be sent", s.who(), shown(m.topic))
                self._discard(m)
                continue
            packet_id = s.next_packet_id(m) if m.qos else None
            named = m.topic in s.aliases
            data = self._encode(s, m, packet_id, now=now)
            if s.max_packet and len(data) > s.max_packet:
                if not named:
                    s.aliases.pop(m.topic, None)  # never reached the client
                self.squelch.warning(f"too large {s.client_id}", "dropped message on %s for %s: %d bytes, over the "
                                     "maximum packet size of %d its client stated", shown(m.topic), s.who(),
                                     len(data), s.max_packet)
                self._discard(m)
                continue
            if packet_id is not None:
                s.inflight[packet_id] = m
            outlet.send(data)

    def _discard(self, m: Outgoing) -> None:
        if m.stored is not None and self.store:
            self.store.delivered(m.stored)

    def unacknowledged(self) -> int:
        """Messages for connected clients not yet acknowledged by them."""
        return sum(len(s.inflight) + sum(1 for m in s.queue if m.raw is None)
                   for s in self.sessions.values() if s.outlet is not None)
