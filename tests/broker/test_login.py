"""Logins: the throttle after failures, admission per address and in all, password checks taking turns."""

from __future__ import annotations

import asyncio
import threading

from broker.login import Admission, Throttle, network_of
from testkit.procs import TIMEOUT


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


def test_a_user_whose_logins_from_an_address_failed_is_checked_from_there_once_per_delay():
    """The delay holds back the next guess, not only the answer: a guesser on parallel connections is refused
    unchecked until it is over, and one check runs at a time. That user from elsewhere, and other users from there,
    are checked as usual."""
    now = [0.0]
    t = Throttle(clock=lambda: now[0])
    here, laptop = "192.0.2.1", "laptop"
    with t.checking(here, laptop):
        assert not t.held(here, laptop)  # first tries run in parallel
        t.failed(here, laptop)
    assert t.held(here, laptop)
    assert not t.held(here, "phone") and not t.held("198.51.100.7", laptop)
    now[0] = 0.5  # the first failure's delay is over: the next guess is checked
    assert not t.held(here, laptop)
    with t.checking(here, laptop):
        assert t.held(here, laptop)  # one at a time
        t.failed(here, laptop)
    now[0] = 1.49
    assert t.held(here, laptop)
    now[0] = 1.5
    assert not t.held(here, laptop)
    t.failed(here, laptop)
    t.succeeded(here, laptop)
    assert not t.held(here, laptop)


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
