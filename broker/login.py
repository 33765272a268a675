"""Logins: password checks that cannot stall the broker, and a growing delay after failures.

An argon2 check takes about 0.1 s of CPU on purpose. It runs on one worker
thread, never on the event loop, so clients that are logged in keep their
round trips while strangers guess. An unknown user costs the same check as a
known one (against a hash made at start), so the time of the answer does not
tell which users exist. A password that passed once is remembered as a keyed
digest, so a device reconnecting (or a thousand after a restart) costs no
argon2; a wrong password always pays it. After a failed login the refusal is sent only after a
delay that doubles with each failure from the same address or for the same
user name (0.5 s up to 30 s, forgotten after 10 quiet minutes): the connection
waits meanwhile, and the number of connections that may wait is capped, so a
guesser gets a few tries a minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from broker import passwords

log = logging.getLogger("edison-broker")

FIRST_DELAY, MAX_DELAY, FORGET_AFTER = 0.5, 30.0, 600.0
MAX_TRACKED = 10_000  # addresses and user names remembered; the oldest go first


class Passwords:
    """The users of a password file made by `edison-broker passwd`, checked off the event loop."""

    def __init__(self, path: Path) -> None:
        from pwdlib import PasswordHash
        from pwdlib.hashers.argon2 import Argon2Hasher

        self._hasher = PasswordHash((Argon2Hasher(),))
        self._hashes = passwords.read(path)
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="login")
        self._key = secrets.token_bytes(32)
        self._proven: dict[str, bytes] = {}  # user -> keyed digest of the password that last passed argon2

    @property
    def users(self) -> list[str]:
        return list(self._hashes)

    def known(self, user: str) -> bool:
        return user in self._hashes

    async def check(self, user: str, password: bytes | None) -> bool:
        try:
            text = (password or b"").decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        stored = self._hashes.get(user)
        digest = hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).digest()
        proven = self._proven.get(user)
        if proven is not None and hmac.compare_digest(proven, digest):
            return True  # the same password passed argon2 before: a reconnect storm costs no argon2
        ok = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._verify, text, stored or self._decoy)
        ok = ok and stored is not None and bool(text)
        if ok:
            self._proven[user] = digest
        return ok

    def _verify(self, password: str, hashed: str) -> bool:
        try:
            return bool(self._hasher.verify(password, hashed))
        except Exception:  # an unusable hash in the file: a refusal, never a crash
            log.exception("cannot check a password against its hash")
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Failures:
    count: int
    last: float


class Throttle:
    """Failed logins per address and per user name, and how long the next refusal should wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: OrderedDict[str, _Failures] = OrderedDict()

    def failed(self, address: str, user: str | None) -> tuple[float, float]:
        """Count a failure; the delays (address, user) before answering it."""
        return self._count(f"address {address}"), self._count(f"user {user}") if user else 0.0

    def succeeded(self, address: str, user: str) -> None:
        self._seen.pop(f"address {address}", None)
        self._seen.pop(f"user {user}", None)

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
        return min(FIRST_DELAY * 2 ** (record.count - 1), MAX_DELAY)
