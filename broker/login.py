"""Logins: who may try, password checks that cannot stall the broker, and a growing delay after failures.

Who may try: at most `per_address` connections from one address (an IPv6 /64
counts as one) may be logging in at once, and `total` from everywhere. A
newcomer from an address that holds all its places takes the oldest of them
that sent no CONNECT for a second (`STALLED_AFTER`) or one for a user name whose
login failed in the last 10 minutes, so a stranger behind the device's own NAT
cannot keep it out with idle sockets or wrong passwords, while devices of one
NAT reconnecting together do not take each other's places. When all
places are taken, a newcomer from an address holding fewer than the busiest
address takes the oldest place of that address, so strangers holding places
from a few addresses cannot keep a device from a new one out.
An address that logged in successfully in the last day (and failed no login in
the last 10 minutes) is let in past the total, up to twice it, and its password
checks go first (every other check, while others wait too), so strangers who
fill it from many addresses do not lock the devices out.

An argon2 check takes about 0.1 s of CPU on purpose. It runs on one worker
thread, never on the event loop, so clients that are logged in keep their
round trips while strangers guess; logins from addresses that succeeded
before are checked first, and the others take turns by address, so a device
waits for one check per guessing address rather than for all their guesses.
An unknown user costs the same check as a known one (against a hash made at
start), so the time of the answer does not tell which users exist. A password
that passed once is remembered as a keyed digest, so a device reconnecting
(or a thousand after a restart) costs no argon2; a wrong password always pays
it. After a failed login the refusal is sent only after a
delay that doubles with each failure from the same address or for the same
user name (0.5 s up to 30 s, forgotten after 10 quiet minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from broker import passwords
from broker.logs import Squelch

log = logging.getLogger("edison-broker")

FIRST_DELAY, MAX_DELAY, FORGET_AFTER = 0.5, 30.0, 600.0
MAX_TRACKED = 10_000  # addresses and user names remembered; the oldest go first
TRUSTED_FOR = 86400.0  # seconds an address that logged in is let in past the total
STALLED_AFTER = 1.0  # seconds without a CONNECT after which a newer connection from its address may take its place


def is_loopback(host: str) -> bool:
    """Whether a host name or address (no port, no brackets) is this machine by loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def network_of(address: str) -> str:
    """What counts as one address: an IPv4 address, or the /64 of an IPv6 one (one subscriber's share)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class Pending(Protocol):
    """A connection that holds a place while it logs in."""

    def end(self, reason: str) -> None: ...

    def yields(self) -> str | None:
        """Why it may give its place to a newer connection from its address (no CONNECT for STALLED_AFTER
        seconds, or one for a user name whose login failed lately), or None."""


class Admission:
    """How many connections may be logging in at once, per address and in all."""

    def __init__(self, total: int, per_address: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.per_address = per_address
        self._clock = clock
        self._waiting: dict[str, list[Pending]] = {}  # address -> its connections logging in, oldest first
        self._trusted: OrderedDict[str, float] = OrderedDict()  # address -> when it last logged in
        self._failed: OrderedDict[str, float] = OrderedDict()  # address -> when a login from it last failed
        self._squelch = Squelch()

    def admit(self, address: str, who: Pending) -> bool:
        """Take a place for `who`, from `address`, or False (then it is closed at once)."""
        key = network_of(address)
        held = len(self._waiting.get(key, ()))
        if self.total and held >= self.per_address:
            for victim in self._waiting[key]:  # oldest first
                why = victim.yields()
                if why:
                    self._evict(key, f"{why}, and a newer connection from {key} wanted its place (at most "
                                     f"{self.per_address} from one address)", victim)
                    break
            else:
                return False
        elif self.total and (waiting := self.waiting()) >= self.total:
            if self.trusted(key) and waiting < 2 * self.total:
                pass  # an address that logged in before: let in past the total
            elif not self._evict_for(key, held):
                return False
        self._waiting.setdefault(key, []).append(who)
        return True

    def _evict_for(self, key: str, held: int) -> bool:
        """Free the oldest place of the busiest address, if it holds more than `key` would with one more."""
        busiest = max(self._waiting, key=lambda k: len(self._waiting[k]))
        if len(self._waiting[busiest]) <= held + 1:
            return False
        self._evict(busiest, f"its place was given to {key}: all {self.total} places are taken (--max-pending) "
                             f"and {busiest} held {len(self._waiting[busiest])} of them")
        return True

    def _evict(self, key: str, why: str, victim: Pending | None = None) -> None:
        """Close a connection from `key` that is logging in, the oldest unless told which."""
        victim = victim or self._waiting[key][0]
        self._remove(key, victim)
        self._squelch.warning(f"evicted {key}", "closed a connection from %s that was not logged in yet: %s", key, why)
        victim.end(why)

    def release(self, address: str, who: Pending) -> None:
        """Give back the place of `who` (nothing if it was already taken from it)."""
        self._remove(network_of(address), who)

    def _remove(self, key: str, who: Pending) -> None:
        held = self._waiting.get(key)
        if held is not None and who in held:
            held.remove(who)
            if not held:
                del self._waiting[key]

    def waiting(self) -> int:
        return sum(len(held) for held in self._waiting.values())

    def logged_in(self, address: str) -> None:
        """A login from `address` succeeded: it is trusted, unless a login from it failed in the last FORGET_AFTER."""
        key = network_of(address)
        self._trusted.pop(key, None)
        failed = self._failed.get(key)
        if failed is not None and self._clock() - failed < FORGET_AFTER:
            return  # an account holder must not make its address urgent again between wrong guesses
        self._trusted[key] = self._clock()
        while len(self._trusted) > MAX_TRACKED:
            self._trusted.popitem(last=False)

    def failed(self, address: str) -> None:
        """A login from `address` failed: it is not trusted for FORGET_AFTER seconds."""
        key = network_of(address)
        self._trusted.pop(key, None)
        self._failed.pop(key, None)
        self._failed[key] = self._clock()
        while len(self._failed) > MAX_TRACKED:
            self._failed.popitem(last=False)

    def trusted(self, address: str) -> bool:
        since = self._trusted.get(network_of(address))
        return since is not None and self._clock() - since < TRUSTED_FOR


Job = tuple[str, str, "asyncio.Future[bool]"]  # password, hash, where the answer goes


class _Checker:
    """One thread that runs argon2 checks: the urgent ones first, the others one address at a time in turn."""

    def __init__(self, verify: Callable[[str, str], bool]) -> None:
        self._verify = verify
        self._cond = threading.Condition()
        # urgent, then not: address -> its checks, oldest first; an address served goes to the back of the line
        self._lines: tuple[OrderedDict[str, deque[Job]], OrderedDict[str, deque[Job]]] = (OrderedDict(), OrderedDict())
        self._urgent_turn = True
        threading.Thread(target=self._run, name="login", daemon=True).start()

    def submit(self, password: str, hashed: str, urgent: bool, source: str) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        with self._cond:
            self._lines[0 if urgent else 1].setdefault(source, deque()).append((password, hashed, future))
            self._cond.notify()
        return future

    def demote(self, source: str) -> None:
        """A login from `source` failed: its checks waiting in the urgent line go to the back of the other."""
        with self._cond:
            jobs = self._lines[0].pop(source, None)
            if jobs:
                line = self._lines[1]
                line[source] = jobs + line.pop(source, deque())

    def _next(self) -> Job | None:
        """The next check: urgent and other in turn while both wait, so neither line can starve the other."""
        lines = self._lines if self._urgent_turn else self._lines[::-1]
        for line in lines:
            if line:
                source, jobs = line.popitem(last=False)
                job = jobs.popleft()
                if jobs:
                    line[source] = jobs
                self._urgent_turn = line is not self._lines[0]
                return job
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                job = self._cond.wait_for(self._next)
            assert job is not None
            password, hashed, future = job
            if future.cancelled():
                continue  # its connection is gone: no argon2 for nobody
            ok = self._verify(password, hashed)
            future.get_loop().call_soon_threadsafe(_settle, future, ok)


def _settle(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():
        future.set_result(ok)


class _SharedCheck:
    """One password check awaited by every login that sent the same password at once; cancelled (so never run)
    only when all of them have gone."""

    def __init__(self, future: asyncio.Future[bool]) -> None:
        self.future = future
        self._waiting = 0

    async def wait(self) -> bool:
        self._waiting += 1
        try:
            return await asyncio.shield(self.future)
        except asyncio.CancelledError:
            self._waiting -= 1
            if not self._waiting:
                self.future.cancel()
            raise


class Passwords:
    """The users of a password file made by `edison-broker passwd`, checked off the event loop."""

    def __init__(self, path: Path) -> None:
        from pwdlib import PasswordHash
        from pwdlib.hashers.argon2 import Argon2Hasher

        self._hasher = PasswordHash((Argon2Hasher(),))
        self._path = path
        self._hashes = passwords.read(path)
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))
        self._checker = _Checker(self._verify)
        self._key = secrets.token_bytes(32)
        self._proven: dict[str, bytes] = {}  # user -> keyed digest of the password that last passed argon2
        self._checking: dict[tuple[str, bytes], _SharedCheck] = {}  # checks under way, by user and digest

    @property
    def users(self) -> list[str]:
        return list(self._hashes)

    def reload(self) -> None:
        """Read the file again; a user whose hash changed must pass argon2 again."""
        hashes = passwords.read(self._path)
        for user in [u for u in self._proven if hashes.get(u) != self._hashes.get(u)]:
            del self._proven[user]
        self._hashes = hashes

    def known(self, user: str) -> bool:
        return user in self._hashes

    async def check(self, user: str, password: bytes | None, source: str, urgent: bool = False) -> bool:
        """Whether `password` is the user's; `urgent` checks go first (addresses that logged in), the others take
        turns by `source` (the address, as network_of gives it)."""
        try:
            text = (password or b"").decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        stored = self._hashes.get(user)
        digest = hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).digest()
        proven = self._proven.get(user)
        if proven is not None and hmac.compare_digest(proven, digest):
            return True  # the same password passed argon2 before: a reconnect storm costs no argon2
        key = (user, digest)
        check = self._checking.get(key)
        if check is None:  # the same login arriving many times at once (one user's clients) costs one argon2
            check = self._checking[key] = _SharedCheck(self._checker.submit(text, stored or self._decoy, urgent,
                                                                            source))
            check.future.add_done_callback(lambda _: self._checking.pop(key, None))
        ok = await check.wait()
        ok = ok and stored is not None and bool(text)
        if ok:
            self._proven[user] = digest
        return ok

    def failed(self, source: str) -> None:
        """A login from `source` failed: its other checks lose their priority (see Admission.failed)."""
        self._checker.demote(source)

    def _verify(self, password: str, hashed: str) -> bool:
        try:
            return bool(self._hasher.verify(password, hashed))
        except Exception:  # an unusable hash in the file: a refusal, never a crash
            log.exception("cannot check a password against its hash")
            return False


@dataclass
class _Failures:
    count: int
    last: float


class Throttle:
    """Failed logins per address and per user name, and how long the next refusal should wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: OrderedDict[str, _Failures] = OrderedDict()
        self._checking: Counter[str] = Counter()  # address and user of the checks running

    def failed(self, address: str, user: str | None) -> tuple[float, float]:
        """Count a failure; the delays (address, user) before answering it."""
        if user:
            self._count(f"pair {address} {user}")
        return self._count(f"address {address}"), self._count(f"user {user}") if user else 0.0

    def succeeded(self, address: str, user: str) -> None:
        for key in (f"address {address}", f"user {user}", f"pair {address} {user}"):
            self._seen.pop(key, None)

    def failing(self, user: str) -> bool:
        """Whether a login as `user` (whether it exists or not) failed in the last FORGET_AFTER seconds."""
        return self._fresh(f"user {user}") is not None

    def held(self, address: str, user: str) -> bool:
        """Whether a login as `user` from `address` is refused unchecked: one from there as that user failed lately,
        and its delay is not over or another is being checked. The delay holds back the next guess, not only the
        answer: answers alone held nothing, as a guesser on parallel connections took "no answer within a second"
        for a wrong guess, at the hashing's speed. Other users from there, and that user from elsewhere, go on."""
        record = self._fresh(f"pair {address} {user}")
        if record is None:
            return False
        return f"{address} {user}" in self._checking or self._clock() < record.last + _delay(record.count)

    @contextlib.contextmanager
    def checking(self, address: str, user: str) -> Iterator[None]:
        """A password check of `user` from `address` runs; count its failure before it ends."""
        key = f"{address} {user}"
        self._checking[key] += 1
        try:
            yield
        finally:
            self._checking[key] -= 1
            if not self._checking[key]:
                del self._checking[key]

    def _fresh(self, key: str) -> _Failures | None:
        record = self._seen.get(key)
        return record if record is not None and self._clock() - record.last <= FORGET_AFTER else None

    def _count(self, key: str) -> float:
        now = self._clock()
        record = self._seen.pop(key, None)
        if record is None or now - record.last > FORGET_AFTER:
            record = _Failures(0, now)
        record.count += 1
        record.last = now
        self._seen[key] = record
        while len(self._seen) > MAX_TRACKED:
            self._seen.popitem(last=False)
        return _delay(record.count)


def _delay(failures: int) -> float:
    """How long the answer to the `failures`th failure in a row, and the next check, wait."""
    return min(FIRST_DELAY * 2 ** (failures - 1), MAX_DELAY)
