"""The broker's parts without sockets: the wire format, topic filters, routing, the store and login throttling."""

from __future__ import annotations

import asyncio
import threading
import time
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import properties as P
from broker import wire
from broker.access import Access
from broker.core import MAX_INFLIGHT, Core, Retained
from broker.filters import RetainedTree, SubscriptionTree, covers, filter_problem, matches
from broker.login import Admission, Throttle, network_of
from broker.models import Limits
from broker.store import Store
from tests.helpers import TIMEOUT

# -- wire -----------------------------------------------------------------------

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


# -- filters ----------------------------------------------------------------------

@pytest.mark.parametrize("allowed,requested,inside", [
    ("edison/#", "edison/+/led/set", True), ("edison/#", "edison", True), ("edison/#", "#", False),
    ("edison/+/+/set", "edison/d/led/set", True), ("edison/+/+/set", "edison/+/+/set", True),
    ("edison/+/+/set", "edison/+/+/#", False), ("edison/d/+/set", "edison/+/led/set", False),
    ("a/b", "a/b", True), ("a/b", "a/+", False), ("+", "a", True), ("+", "a/b", False),
])
def test_covers(allowed, requested, inside):
    assert covers(allowed, requested) is inside


def test_filters_and_matching():
    assert filter_problem("a/#/b") and filter_problem("a/b+") and filter_problem("") and not filter_problem("+/+/#")
    assert matches("a/#", "a") and matches("+/b", "a/b") and not matches("#", "$SYS/x") and matches("$SYS/#", "$SYS/x")


topic_levels = st.lists(st.sampled_from(["a", "b", "c", "$s"]), min_size=1, max_size=4)
filter_levels = st.lists(st.sampled_from(["a", "b", "+", "$s"]), min_size=1, max_size=4)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(filter_levels, st.booleans(), st.integers(0, 1)), max_size=12), topic_levels)
def test_subscription_tree_agrees_with_matching_one_by_one(subs, levels):
    tree, expected = SubscriptionTree(), []
    topic = "/".join(levels)
    for i, (f_levels, hash_end, _) in enumerate(subs):
        topic_filter = "/".join(f_levels + (["#"] if hash_end else []))
        tree.add(topic_filter, (f"c{i}", topic_filter))
        if matches(topic_filter, topic):
            expected.append((f"c{i}", topic_filter))
    assert sorted(tree.match(topic)) == sorted(expected)
    for i, (f_levels, hash_end, _) in enumerate(subs):
        topic_filter = "/".join(f_levels + (["#"] if hash_end else []))
        tree.remove(topic_filter, (f"c{i}", topic_filter))
    assert tree.match(topic) == [] and not tree._root.children and not tree._root.rest


@settings(max_examples=300, deadline=None)
@given(st.lists(topic_levels, max_size=10), filter_levels, st.booleans())
def test_retained_tree_finds_exactly_the_matching_topics(topics, f_levels, hash_end):
    tree: RetainedTree[int] = RetainedTree()
    for levels in topics:
        tree.set("/".join(levels), 1)
    topic_filter = "/".join(f_levels + (["#"] if hash_end else []))
    found = sorted(t for t, _ in tree.matching(topic_filter))
    assert found == sorted({"/".join(t) for t in topics if matches(topic_filter, "/".join(t))})
    for levels in topics:
        tree.delete("/".join(levels))
    assert len(tree) == 0 and tree._root == {}


# -- routing ----------------------------------------------------------------------

class Wire:
    """A connection as the core sees it: collects what would be sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed: str | None = None

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    full = False

    def writable(self) -> bool:
        return not self.full

    def close(self, reason: str, code: int = wire.SESSION_TAKEN_OVER) -> None:
        self.closed = reason

    def publishes(self) -> list[wire.Publish]:
        packets = [wire.parse(d[0] >> 4, d[0] & 15, d[2:] if d[1] < 128 else d[3:]) for d in self.sent
                   if d[0] >> 4 == wire.PUBLISH]
        return [p for p in packets if isinstance(p, wire.Publish)]


def login(core: Core, client_id: str, clean: bool = False, will: wire.Will | None = None) -> tuple:
    w = Wire()
    session, present = core.attach(wire.Connect(client_id, clean, 60, will, client_id, b""), client_id, w)
    core.resume(session)
    return session, w, present


def test_a_session_that_was_taken_over_can_neither_subscribe_nor_unsubscribe_for_its_successor():
    """A packet read by the old connection just before the takeover must not leave an orphan filter behind (every
    publish to it would fail) nor remove the new session's filter."""
    core = Core(Access(None))
    old, _, _ = login(core, "dev", clean=True)
    new, w, _ = login(core, "dev", clean=True)
    core.subscribe(new, wire.Subscribe(1, (("cmd", 1),)))
    assert core.subscribe(old, wire.Subscribe(2, (("other", 1),))) == [(wire.SUBSCRIBE_FAILURE, False)]
    core.unsubscribe(old, wire.Unsubscribe(3, ("cmd",)))
    core.route("cmd", b"still", 1, False)
    core.route("other", b"no one", 1, False)
    assert [p.payload for p in w.publishes()] == [b"still"]
    newest, w, _ = login(core, "dev", clean=True)  # `new` is dropped too: what it had is gone with it
    core.route("cmd", b"gone", 1, False)
    assert w.publishes() == [] and core.subscribers.match("cmd") == []


def test_a_queue_is_sent_in_order_with_at_most_the_inflight_window():
    core = Core(Access(None))
    device, w, _ = login(core, "dev")
    core.subscribe(device, wire.Subscribe(1, (("cmd/#", 1),)))
    for n in range(MAX_INFLIGHT + 5):
        core.route("cmd/x", f"{n}".encode(), 1, False)
    got = w.publishes()
    assert [p.payload for p in got] == [f"{n}".encode() for n in range(MAX_INFLIGHT)]
    core.acked(device, wire.Ack(wire.PUBACK, got[0].packet_id or 0))
    assert [p.payload for p in w.publishes()][-1] == f"{MAX_INFLIGHT}".encode()


def test_offline_persistent_session_keeps_qos1_and_gets_it_again_marked_dup_if_unacknowledged():
    core = Core(Access(None))
    device, w, _ = login(core, "dev")
    core.subscribe(device, wire.Subscribe(1, (("cmd", 1),)))
    core.detach(device, w, graceful=True)
    core.route("cmd", b"queued", 1, False)
    core.route("cmd", b"qos0 is not kept", 0, False)
    device, w, present = login(core, "dev")
    assert present and [(p.payload, p.dup, p.retain) for p in w.publishes()] == [(b"queued", False, False)]
    core.detach(device, w, graceful=False)
    device, w, _ = login(core, "dev")
    assert [(p.payload, p.dup) for p in w.publishes()] == [(b"queued", True)]


def test_takeover_publishes_the_old_connections_will_once_and_keeps_routing():
    """The old connection did not DISCONNECT, so its will goes out [MQTT-3.1.2-8], as Mosquitto does."""
    core = Core(Access(None))
    will = wire.Will("status", b"offline", 1, True)
    s1, w1, _ = login(core, "dev", will=will)
    core.subscribe(s1, wire.Subscribe(1, (("cmd", 1),)))
    s1.will = wire.Will("status", b"offline", 1, True)
    s2, w2, present = login(core, "dev", will=wire.Will("status", b"second", 1, True))
    assert w1.closed and present and s2 is s1
    assert core.retained.get("status") == Retained(b"offline", 1)
    core.detach(s1, w1, graceful=False)  # the old connection ends after the takeover: no second will, no harm
    assert core.retained.get("status") == Retained(b"offline", 1)
    core.route("cmd", b"x", 1, False)
    assert [p.payload for p in w2.publishes()] == [b"x"]


def test_clean_session_takeover_and_late_end_of_the_old_connection_leave_routing_consistent():
    core = Core(Access(None))
    s1, w1, _ = login(core, "c", clean=True)
    core.subscribe(s1, wire.Subscribe(1, (("t", 1),)))
    s2, w2, _ = login(core, "c", clean=True)
    core.detach(s1, w1, graceful=False)
    core.subscribe(s2, wire.Subscribe(2, (("u", 0),)))
    core.route("t", b"gone with the old session", 1, False)
    core.route("u", b"new", 0, False)
    assert [p.payload for p in w2.publishes()] == [b"new"]
    core.detach(s2, w2, graceful=True)
    assert not core.sessions and core.subscribers.match("t") == []


def test_unclean_end_publishes_the_will_and_a_clean_one_does_not():
    core = Core(Access(None))
    watcher, ww, _ = login(core, "w")
    core.subscribe(watcher, wire.Subscribe(1, (("status", 1),)))
    for graceful in (True, False):
        s, w, _ = login(core, "dev", will=wire.Will("status", b"offline", 1, True))
        core.detach(s, w, graceful=graceful)
    assert [p.payload for p in ww.publishes()] == [b"offline"]
    assert core.retained.get("status") == Retained(b"offline", 1)


def test_queue_limit_drops_and_counts():
    core = Core(Access(None), limits=Limits(max_queued=2))
    s, w, _ = login(core, "dev")
    core.subscribe(s, wire.Subscribe(1, (("cmd", 1),)))
    core.detach(s, w, graceful=True)
    for n in range(3):
        core.route("cmd", b"%d" % n, 1, False)
    assert core.dropped == 1 and [m.payload for m in s.queue] == [b"0", b"1"]


# -- store ------------------------------------------------------------------------

def test_store_commits_before_answering_and_migrates_the_first_layout(tmp_path):
    path = tmp_path / "broker.sqlite3"
    old = sqlite3.connect(path)  # the layout of the first release, without keep-alive and will columns
    old.executescript("CREATE TABLE sessions (client_id TEXT PRIMARY KEY, username TEXT NOT NULL);"
                      "INSERT INTO sessions VALUES ('dev', 'dev');")
    old.commit()
    old.close()

    async def write() -> None:
        store = Store(path)
        assert [s.client_id for s in store.load().sessions] == ["dev"]
        store.start(asyncio.get_running_loop())
        message_id = store.queue("dev", "cmd", b"x", 1)
        store.set_retained("t", b"r", 1)
        await store.committed()
        reader = sqlite3.connect(path)  # another connection sees it: it is on disk
        assert reader.execute("SELECT id, data FROM queued").fetchall() == [(message_id, b"x")]
        reader.close()
        store.delivered(message_id)
        store.close()

    asyncio.run(write())
    store = Store(path)
    state = store.load()
    assert [s.queued for s in state.sessions] == [[]] and [(m.topic, m.data) for m in state.retained] == [("t", b"r")]
    store.close()


# -- login ------------------------------------------------------------------------

def test_throttle_doubles_per_address_and_user_and_forgets():
    now = [0.0]
    t = Throttle(clock=lambda: now[0])
    assert t.failed("1.2.3.4", "dev") == (0.5, 0.5)
    assert t.failed("1.2.3.4", "other") == (1.0, 0.5)
    assert t.failed("5.6.7.8", "dev") == (0.5, 1.0)
    for _ in range(10):
        t.failed("1.2.3.4", None)
    assert t.failed("1.2.3.4", None) == (30.0, 0.0)
    now[0] = 1000.0
    assert t.failed("1.2.3.4", "dev") == (0.5, 0.5)


class _Refusing:
    """sqlite3's connection, refusing the next `failures` COMMITs as a full disk does."""

    def __init__(self, db: sqlite3.Connection, failures: int) -> None:
        self.db, self.failures = db, failures

    def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, args)

    def close(self) -> None:
        self.db.close()


def test_store_keeps_changes_the_disk_refused_and_writes_them_once_it_can(tmp_path):
    async def write() -> None:
        store = Store(tmp_path / "broker.sqlite3")
        store._db = _Refusing(store._db, failures=2)  # type: ignore[assignment]
        store.start(asyncio.get_running_loop())
        store.set_retained("t", b"kept", 1)
        await asyncio.wait_for(store.committed(), 10)  # waits out two refusals (0.5 s, 1 s), then is on disk
        store.close()

    asyncio.run(write())
    assert [(m.topic, m.data) for m in Store(tmp_path / "broker.sqlite3").load().retained] == [("t", b"kept")]


def test_store_holds_publishers_back_while_the_disk_is_behind_and_lets_them_go_once_written(tmp_path):
    """A QoS 0 flood while the disk refuses must meet back-pressure, not fill memory."""
    from broker.store import MAX_BACKLOG

    async def flood() -> None:
        store = Store(tmp_path / "broker.sqlite3")
        refusing = _Refusing(store._db, failures=10**9)
        store._db = refusing  # type: ignore[assignment]
        store.start(asyncio.get_running_loop())
        message = b"x" * 60_000
        sent = 0
        while not store.crowded():
            store.set_retained("t", message, 0)
            sent += 1
        assert sent * len(message) <= MAX_BACKLOG + len(message)
        room = asyncio.ensure_future(store.room())
        await asyncio.sleep(0.6)  # the writer has tried (and failed) at least once meanwhile
        assert not room.done(), "a publisher must wait while the disk refuses"
        refusing.failures = 0
        await asyncio.wait_for(room, 10)
        assert not store.crowded()
        await asyncio.wait_for(store.committed(), 10)
        store.close()

    asyncio.run(flood())
    assert [(m.topic, len(m.data)) for m in Store(tmp_path / "broker.sqlite3").load().retained] == [("t", 60_000)]


def test_a_stopping_broker_waits_for_a_slow_disk_a_bounded_time(tmp_path, caplog):
    class Slow(_Refusing):
        """A disk whose sync takes seconds."""

        def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
            if sql == "COMMIT":
                time.sleep(3)
            return self.db.execute(sql, args)

    async def stop() -> float:
        store = Store(tmp_path / "broker.sqlite3")
        store._db = Slow(store._db, failures=0)  # type: ignore[assignment]
        store.start(asyncio.get_running_loop())
        store.set_retained("t", b"late", 0)
        started = time.monotonic()
        store.close(timeout=0.5)
        return time.monotonic() - started

    assert asyncio.run(stop()) < 2.5, "close() must not wait for the slow commit"
    assert "stopping with 1 change(s) not yet written after 0.5 s" in caplog.text, "and it says so"


def test_a_qos2_publish_is_routed_once_even_when_sent_again_after_a_restart(tmp_path):
    async def run() -> None:
        store = Store(tmp_path / "broker.sqlite3")
        store.start(asyncio.get_running_loop())
        core = Core(Access(None), store)
        device, dw, _ = login(core, "dev")
        core.subscribe(device, wire.Subscribe(1, (("cmd", 1),)))
        sender, _, _ = login(core, "sender")
        core.publish(sender, wire.Publish("cmd", b"once", 2, False, packet_id=7))
        await store.committed()
        store.close()
        restarted = Store(tmp_path / "broker.sqlite3")
        restarted.start(asyncio.get_running_loop())
        core = Core(Access(None), restarted)
        core.restore(restarted.load(), asyncio.get_running_loop())
        assert core.sessions["sender"].awaiting_release == {7}  # a resend of id 7 before its PUBREL is not routed
        core.released(core.sessions["sender"], 7)
        await restarted.committed()
        restarted.close()

    asyncio.run(run())


def test_sessions_expire_after_their_client_stayed_away():
    core = Core(Access(None), limits=Limits(session_expiry=100))
    s, w, _ = login(core, "dev")
    core.detach(s, w, graceful=True)
    assert s.offline_since is not None
    assert core.expire(s.offline_since + 50) == 0 and "dev" in core.sessions
    assert core.expire(s.offline_since + 150) == 1 and "dev" not in core.sessions


def test_a_session_past_its_expiry_is_not_resumed_even_before_the_periodic_look():
    core = Core(Access(None), limits=Limits(session_expiry=100))
    s, w, _ = login(core, "dev")
    core.subscribe(s, wire.Subscribe(1, (("cmd", 1),)))
    core.detach(s, w, graceful=True)
    s.offline_since = time.time() - 150
    again, _, present = login(core, "dev")
    assert not present and again is not s and again.subscriptions == {}


def test_a_connection_that_takes_no_more_stops_the_queue_until_it_does():
    core = Core(Access(None))
    s, w, _ = login(core, "dev")
    core.subscribe(s, wire.Subscribe(1, (("cmd", 0),)))
    w.full = True
    for n in range(3):
        core.route("cmd", b"%d" % n, 0, False)
    assert w.publishes() == [] and len(s.queue) == 3
    w.full = False
    core.pump(s)
    assert [p.payload for p in w.publishes()] == [b"0", b"1", b"2"]


class _Pending:
    def __init__(self, stalled: bool = False) -> None:
        self.ended: str | None = None
        self._stalled = stalled

    def end(self, reason: str) -> None:
        self.ended = reason

    def yields(self) -> str | None:
        return "it stalled" if self._stalled else None


def test_admission_per_address_and_in_all_with_known_addresses_let_in():
    now = [0.0]
    a = Admission(total=4, per_address=2, clock=lambda: now[0])
    held = [_Pending() for _ in range(6)]
    assert a.admit("10.0.0.1", held[1]) and a.admit("10.0.0.1", held[0])
    assert not a.admit("10.0.0.1", _Pending()), "a third from one address waits while the oldest may yet log in"
    assert a.admit("2001:db8::1", held[2]) and a.admit("2001:db8::ffff", held[3])
    assert not a.admit("2001:db8::2", _Pending()) and a.waiting() == 4, "one /64 counts as one address"
    held[1]._stalled = True
    assert a.admit("10.0.0.1", held[5]) and held[1].ended and not held[0].ended, "the oldest, stalled, gave its place"
    held[5]._stalled = True
    assert a.admit("10.0.0.1", held[1]) and held[5].ended and not held[0].ended, "so does a younger one that yields"
    a.release("10.0.0.1", held[0])
    a.release("2001:db8::ffff", held[3])
    held = [_Pending() for _ in range(6)]
    assert a.admit("10.0.0.2", held[0]) and a.admit("10.0.0.3", held[1]) and a.waiting() == 4
    assert not a.admit("10.0.0.9", _Pending()), "all four places taken, one each: a newcomer takes none of them"
    a.logged_in("10.0.0.9")
    assert a.admit("10.0.0.9", held[4]), "an address that logged in is let in past the total"
    a.failed("10.0.0.9")
    assert not a.admit("10.0.0.9", _Pending()), "until a login from it fails"
    a.logged_in("10.0.0.9")
    assert not a.admit("10.0.0.9", _Pending()), "a success right after a failure does not make it trusted again"
    now[0] = 700.0
    a.logged_in("10.0.0.9")
    assert a.admit("10.0.0.9", held[5]), "ten quiet minutes later it does"
    a.release("10.0.0.9", held[5])
    now[0] = 700.0 + 86400 + 1
    assert not a.admit("::ffff:10.0.0.9", _Pending()) and network_of("::ffff:10.0.0.9") == "10.0.0.9"
    assert not any(p.ended for p in held)
    a.release("10.0.0.2", held[0])
    a.release("10.0.0.2", held[0])  # given back twice (evicted, then its connection ended): counted once
    assert a.waiting() == 4


def test_admission_gives_a_newcomer_the_oldest_place_of_the_busiest_address():
    a = Admission(total=6, per_address=4)
    attacker = [_Pending() for _ in range(6)]
    for n, p in enumerate(attacker):
        assert a.admit(f"10.0.0.{n % 2}", p)
    device = _Pending()
    assert a.admit("10.9.9.9", device), "two addresses hold three places each: a newcomer takes one"
    assert attacker[0].ended and not any(p.ended for p in attacker[1:]), "the oldest of the busiest goes"
    assert a.waiting() == 6
    others = [_Pending() for _ in range(3)]
    for n, p in enumerate(others):
        assert a.admit(f"10.9.8.{n}", p)
    assert sum(bool(p.ended) for p in attacker) == 4 and a.waiting() == 6
    assert not a.admit("10.9.7.1", _Pending()), "six addresses, one place each: nobody gives a place away"
    assert not device.ended and not any(p.ended for p in others)


def _checks_in_order(submit_while_first_runs) -> list[str]:
    """The passwords in the order a _Checker verified them; `submit_while_first_runs(checker)` queues the rest."""
    from broker.login import _Checker

    first_running, go = threading.Event(), threading.Event()
    order: list[str] = []

    def verify(password: str, hashed: str) -> bool:
        order.append(password)
        if len(order) == 1:
            first_running.set()
            go.wait(TIMEOUT)
        return True

    async def run() -> None:
        checker = _Checker(verify)
        futures = [checker.submit("first", "h", False, "10.0.0.1")]
        await asyncio.get_running_loop().run_in_executor(None, first_running.wait, TIMEOUT)
        futures += submit_while_first_runs(checker)
        go.set()
        assert all(await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT))

    asyncio.run(run())
    return order


def test_password_checks_take_turns_urgent_or_not_and_one_address_at_a_time():
    """A device's login waits for one check per guessing address, not for every guess queued before it; urgent
    checks (addresses that logged in before) go every other time, so neither kind can starve the other."""
    def queue(checker):
        return ([checker.submit(f"a{n}", "h", False, "10.0.0.1") for n in range(2, 6)]
                + [checker.submit("b1", "h", False, "10.0.0.2")]
                + [checker.submit(f"u{n}", "h", True, f"10.0.1.{n}") for n in range(1, 4)])
    assert _checks_in_order(queue) == ["first", "u1", "a2", "u2", "b1", "u3", "a3", "a4", "a5"]


def test_an_address_whose_login_failed_loses_the_priority_of_its_waiting_checks():
    def queue(checker):
        futures = [checker.submit(f"k{n}", "h", True, "10.0.0.7") for n in range(1, 4)]
        futures.append(checker.submit("n1", "h", False, "10.0.0.8"))
        checker.demote("10.0.0.7")
        return futures
    assert _checks_in_order(queue) == ["first", "n1", "k1", "k2", "k3"]


def test_subscribe_with_packet_id_0_is_malformed():
    with pytest.raises(wire.Malformed, match="packet id 0"):
        wire.parse(wire.SUBSCRIBE, 2, b"\x00\x00\x00\x01a\x01")


# -- MQTT 5 codec -------------------------------------------------------------------

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
