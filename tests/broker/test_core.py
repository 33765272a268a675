"""Routing in the core without sockets: sessions, takeovers, wills, queues, the inflight window, expiry."""

from __future__ import annotations

import asyncio
import time

from broker import wire
from broker.access import Access
from broker.core import MAX_INFLIGHT, Core, Retained
from broker.models import Limits
from broker.store import Store


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


def test_a_full_retained_store_still_keeps_a_devices_own_status():
    """Whoever fills --max-retained-bytes must not leave a stopped device reading as online: its own `offline`,
    one byte longer than `online`, is retained anyway; the same topic from another user is held to the cap."""
    status = "edison/dev/status"
    limit = Retained(b"online", 1).cost(status) + Retained(b"x" * 60, 1).cost("edison/junk/x/set")
    core = Core(Access(None), limits=Limits(max_retained_bytes=limit), statuses={status: "dev"})
    core.route(status, b"online", 1, True, owner="dev")
    core.route("edison/junk/x/set", b"x" * 60, 1, True, owner="laptop")  # now exactly full
    core.route("edison/junk/y/set", b"y" * 60, 1, True, owner="laptop")
    assert core.retained.get("edison/junk/y/set") is None
    core.route(status, b"offline", 1, True, owner="dev")
    kept = core.retained.get(status)
    assert kept is not None and kept.payload == b"offline"
    core.route(status, b"online, says laptop", 1, True, owner="laptop")
    assert core.retained.get(status) == kept
