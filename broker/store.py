"""The broker's state on disk (SQLite): retained messages, persistent sessions, their queues.

The event loop never waits for the disk: changes are handed to one writer
thread, which commits whatever has gathered in one transaction (WAL, fsync on
commit). `committed()` resolves once everything handed over before it is on
disk; the broker acknowledges a QoS 1 publish only then, so a SIGKILL or a
power cut after the PUBACK loses nothing. Concurrent publishers share one
fsync, which keeps the cost per message small. When the disk refuses a commit
(full, read-only), the changes are kept and tried again until it takes them:
acknowledgements wait meanwhile, and nothing is lost or needs a restart.
What waits for the disk is bounded (`MAX_BACKLOG`): beyond it, connections
stop reading publishes until the writer catches up, so a QoS 0 flood meets
TCP back-pressure instead of filling the broker's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("edison-broker")

SCHEMA_VERSION = 4
SCHEMA = """
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, data BLOB NOT NULL, qos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, username TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    client_id TEXT NOT NULL REFERENCES sessions(client_id) ON DELETE CASCADE,
    filter TEXT NOT NULL, qos INTEGER NOT NULL, PRIMARY KEY (client_id, filter));
CREATE TABLE IF NOT EXISTS queued (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL REFERENCES sessions(client_id) ON DELETE CASCADE,
    topic TEXT NOT NULL, data BLOB NOT NULL, qos INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS queued_by_client ON queued (client_id, id);
"""
# Version 2: a session remembers its keep-alive, its Last Will and whether its client was connected,
# so a client that was connected when the broker stopped gets its will published if it does not return.
MIGRATIONS = {2: ["ALTER TABLE sessions ADD COLUMN keepalive INTEGER NOT NULL DEFAULT 0",
                  "ALTER TABLE sessions ADD COLUMN will_topic TEXT",
                  "ALTER TABLE sessions ADD COLUMN will_data BLOB",
                  "ALTER TABLE sessions ADD COLUMN will_qos INTEGER NOT NULL DEFAULT 0",
                  "ALTER TABLE sessions ADD COLUMN will_retain INTEGER NOT NULL DEFAULT 0",
                  "ALTER TABLE sessions ADD COLUMN connected INTEGER NOT NULL DEFAULT 0"],
              # Version 3: when its client left (sessions expire), and QoS 2 publishes routed before their PUBREL.
              3: ["ALTER TABLE sessions ADD COLUMN offline_since REAL",
                  "CREATE TABLE IF NOT EXISTS awaiting_release ("
                  "client_id TEXT NOT NULL REFERENCES sessions(client_id) ON DELETE CASCADE, "
                  "packet_id INTEGER NOT NULL, PRIMARY KEY (client_id, packet_id))"],
              # Version 4: MQTT 5 and QoS 2 to subscribers. A message's properties and expiry, a subscription's
              # options (in `qos`) and identifier, a session's expiry (NULL: the broker's), a will's properties and
              # delay, and whether a QoS 2 message's PUBREC came.
              4: ["ALTER TABLE retained ADD COLUMN props BLOB NOT NULL DEFAULT x''",
                  "ALTER TABLE retained ADD COLUMN expires REAL",
                  "ALTER TABLE subscriptions ADD COLUMN sub_id INTEGER",
                  "ALTER TABLE queued ADD COLUMN retain INTEGER NOT NULL DEFAULT 0",
                  "ALTER TABLE queued ADD COLUMN props BLOB NOT NULL DEFAULT x''",
                  "ALTER TABLE queued ADD COLUMN expires REAL",
                  "ALTER TABLE queued ADD COLUMN sub_ids TEXT NOT NULL DEFAULT ''",
                  "ALTER TABLE queued ADD COLUMN released INTEGER NOT NULL DEFAULT 0",
                  "ALTER TABLE sessions ADD COLUMN expiry REAL",
                  "ALTER TABLE sessions ADD COLUMN will_props BLOB",
                  "ALTER TABLE sessions ADD COLUMN will_expiry INTEGER",
                  "ALTER TABLE sessions ADD COLUMN will_delay INTEGER NOT NULL DEFAULT 0"]}


KEEP_SESSION = """
INSERT INTO sessions (client_id, username, keepalive, will_topic, will_data, will_qos, will_retain, connected,
                      offline_since, expiry, will_props, will_expiry, will_delay)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(client_id) DO UPDATE SET username = excluded.username, keepalive = excluded.keepalive,
    will_topic = excluded.will_topic, will_data = excluded.will_data, will_qos = excluded.will_qos,
    will_retain = excluded.will_retain, connected = excluded.connected, offline_since = excluded.offline_since,
    expiry = excluded.expiry, will_props = excluded.will_props, will_expiry = excluded.will_expiry,
    will_delay = excluded.will_delay
"""


RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # seconds between tries while the disk refuses a commit (a failed try costs little)
MAX_BACKLOG = 8 * 1024 * 1024  # bytes of changes waiting for the disk above which publishers are held back
OP_OVERHEAD = 64  # bytes counted for a change besides its text and blobs
CLOSE_WAIT = 1.0  # seconds a stopping broker waits for the disk to take what is pending


class StoreError(Exception):
    """The data directory cannot be opened; the message says why (raised at start only)."""


@dataclass(frozen=True)
class StoredMessage:
    topic: str
    data: bytes
    qos: int
    id: int = 0  # row id of a queued message
    retain: bool = False
    props: bytes = b""  # its MQTT 5 properties, as they came
    expires: float | None = None  # unix time
    sub_ids: tuple[int, ...] = ()
    released: bool = False  # QoS 2: its PUBREC came


@dataclass(frozen=True)
class StoredWill:
    topic: str
    data: bytes
    qos: int
    retain: bool
    props: bytes = b""
    expiry: int | None = None  # message expiry interval
    delay: int = 0  # will delay interval


@dataclass
class StoredSession:
    client_id: str
    username: str
    keepalive: int = 0
    will: StoredWill | None = None
    connected: bool = False
    offline_since: float | None = None  # unix time its client left
    expiry: float | None = None  # seconds it outlives its client; None: the broker's --session-expiry
    subscriptions: list[tuple[str, int, int | None]] = field(default_factory=list)  # filter, options, identifier
    queued: list[StoredMessage] = field(default_factory=list)
    awaiting_release: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class State:
    retained: list[StoredMessage]
    sessions: list[StoredSession]


Op = tuple[str, tuple, int]  # statement, arguments, bytes counted against MAX_BACKLOG


class Store:
    def __init__(self, path: Path) -> None:
        """Open (or create) the data; StoreError says why it cannot be used."""
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()
            self.next_id = 1 + (self._db.execute("SELECT COALESCE(MAX(id), 0) FROM queued").fetchone()[0])
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"--data {path.parent}: cannot use {path.name}: {exc}") from None
        self._ops: list[Op] = []
        self._submitted = 0  # ops handed over so far
        self._done = 0  # ops committed so far
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._backlog = 0  # bytes of changes handed over and not yet committed
        self._room_waiters: list[asyncio.Future[None]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._write_loop, name="store", daemon=True)

    def _migrate(self) -> None:
        version = max(1, self._db.execute("PRAGMA user_version").fetchone()[0])  # 0: the first layout, unnumbered
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"written by a newer release (layout {version}; this one knows up to "
                                        f"{SCHEMA_VERSION}): upgrade edison-broker, or move the file away")
        self._db.executescript(SCHEMA)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                self._db.execute(statement)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def load(self) -> State:
        """Everything on disk, read once at start before the writer runs (a query per table, not per session)."""
        q = self._db.execute
        retained = [StoredMessage(t, bytes(d), n, props=bytes(p), expires=e)
                    for t, d, n, p, e in q("SELECT topic, data, qos, props, expires FROM retained")]
        sessions: dict[str, StoredSession] = {}
        for row in q("SELECT client_id, username, keepalive, will_topic, will_data, will_qos, will_retain, connected, "
                     "offline_since, expiry, will_props, will_expiry, will_delay FROM sessions"):
            (client_id, username, keepalive, will_topic, will_data, will_qos, will_retain, connected, offline, expiry,
             will_props, will_expiry, will_delay) = row
            will = StoredWill(will_topic, bytes(will_data), will_qos, bool(will_retain), bytes(will_props or b""),
                              will_expiry, will_delay) if will_topic else None
            sessions[client_id] = StoredSession(client_id, username, keepalive, will, bool(connected), offline,
                                                expiry)
        for client_id, topic_filter, options, sub_id in q(
                "SELECT client_id, filter, qos, sub_id FROM subscriptions ORDER BY filter"):
            sessions[client_id].subscriptions.append((topic_filter, options, sub_id))
        for i, client_id, t, d, n, r, p, e, ids, rel in q(
                "SELECT id, client_id, topic, data, qos, retain, props, expires, sub_ids, released FROM queued "
                "ORDER BY id"):
            sessions[client_id].queued.append(StoredMessage(t, bytes(d), n, i, bool(r), bytes(p), e, tuple(
                int(x) for x in ids.split(",") if x), bool(rel)))
        for client_id, packet_id in q("SELECT client_id, packet_id FROM awaiting_release"):
            sessions[client_id].awaiting_release.append(packet_id)
        return State(retained, list(sessions.values()))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()

    # -- changes (called on the event loop; applied in order by the writer) ---------

    def set_retained(self, topic: str, data: bytes, qos: int, props: bytes = b"", expires: float | None = None) -> None:
        if data:
            self._submit("INSERT OR REPLACE INTO retained (topic, data, qos, props, expires) VALUES (?, ?, ?, ?, ?)",
                         (topic, bytes(data), qos, props, expires))
        else:
            self._submit("DELETE FROM retained WHERE topic = ?", (topic,))

    def keep_session(self, s: StoredSession) -> None:
        """Create or update a session (its user, keep-alive, will and connected flag)."""
        w = s.will
        self._submit(KEEP_SESSION, (s.client_id, s.username, s.keepalive, w.topic if w else None,
                                    bytes(w.data) if w else None, w.qos if w else 0, int(w.retain) if w else 0,
                                    int(s.connected), s.offline_since, s.expiry, w.props if w else None,
                                    w.expiry if w else None, w.delay if w else 0))

    def drop_session(self, client_id: str) -> None:
        self._submit("DELETE FROM sessions WHERE client_id = ?", (client_id,))

    def subscribe(self, client_id: str, topic_filter: str, options: int, sub_id: int | None = None) -> None:
        self._submit("INSERT OR REPLACE INTO subscriptions (client_id, filter, qos, sub_id) VALUES (?, ?, ?, ?)",
                     (client_id, topic_filter, options, sub_id))

    def unsubscribe(self, client_id: str, topic_filter: str) -> None:
        self._submit("DELETE FROM subscriptions WHERE client_id = ? AND filter = ?", (client_id, topic_filter))

    def queue(self, client_id: str, topic: str, data: bytes, qos: int, retain: bool = False, props: bytes = b"",
              expires: float | None = None, sub_ids: tuple[int, ...] = ()) -> int:
        """Keep a message for a client; its id, for `delivered`."""
        message_id, self.next_id = self.next_id, self.next_id + 1
        self._submit("INSERT INTO queued (id, client_id, topic, data, qos, retain, props, expires, sub_ids) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (message_id, client_id, topic, bytes(data), qos, int(retain),
                                                           props, expires, ",".join(map(str, sub_ids))))
        return message_id

    def released_out(self, message_id: int) -> None:
        """The client answered a QoS 2 message with PUBREC: after a restart only its PUBREL is sent."""
        self._submit("UPDATE queued SET released = 1 WHERE id = ?", (message_id,))

    def awaiting_release(self, client_id: str, packet_id: int) -> None:
        """A QoS 2 publish was routed: its id is kept until the PUBREL, so a resend after a crash is not routed."""
        self._submit("INSERT OR IGNORE INTO awaiting_release VALUES (?, ?)", (client_id, packet_id))

    def released(self, client_id: str, packet_id: int) -> None:
        self._submit("DELETE FROM awaiting_release WHERE client_id = ? AND packet_id = ?", (client_id, packet_id))

    def delivered(self, message_id: int) -> None:
        self._submit("DELETE FROM queued WHERE id = ?", (message_id,))

    def _submit(self, sql: str, args: tuple) -> None:
        size = OP_OVERHEAD + sum(len(a) for a in args if isinstance(a, (bytes, str)))
        with self._cond:
            self._ops.append((sql, args, size))
            self._submitted += 1
            self._backlog += size
            self._cond.notify()

    def crowded(self, times: int = 1) -> bool:
        """Whether more than `times` x MAX_BACKLOG bytes of changes wait for the disk (then wait for `room()`)."""
        return self._backlog > times * MAX_BACKLOG

    async def room(self) -> None:
        """Wait until the writer has brought the backlog down to half of MAX_BACKLOG (at once if it is not crowded)."""
        assert self._loop is not None, "start() the store first"
        with self._cond:
            if self._backlog <= MAX_BACKLOG:
                return
            future = self._loop.create_future()
            self._room_waiters.append(future)
        await future

    # -- durability -------------------------------------------------------------

    async def committed(self) -> None:
        """Wait until every change handed over so far is on disk (while the disk refuses, that waits)."""
        assert self._loop is not None, "start() the store first"
        with self._cond:
            if self._done >= self._submitted:
                return
            future = self._loop.create_future()
            self._waiters.append((self._submitted, future))
        await future

    def _write_loop(self) -> None:
        """Commit what gathered, in one transaction; when the disk refuses, keep it and try again, backing off."""
        retry_in = RETRY_FIRST
        failing_since: float | None = None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._ops or self._closing)
                ops, self._ops = self._ops, []
                upto = self._submitted
                if not ops and self._closing:
                    return
            try:
                self._db.execute("BEGIN")
                for sql, args, _ in ops:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.error("cannot write the data directory %s: %s; publishes are not acknowledged until it can "
                              "be written (trying again, every %g s at most)", self.path.parent, exc, RETRY_MAX)
                with self._cond:
                    self._ops = ops + self._ops  # in order, before what came meanwhile
                    if self._closing:
                        log.error("stopping with %d change(s) not written to %s", len(self._ops), self.path)
                        return
                    self._cond.wait(retry_in)
                retry_in = min(retry_in * 2, RETRY_MAX)
                continue
            if failing_since is not None:
                log.warning("the data directory %s can be written again, after %.0f s", self.path.parent,
                            time.monotonic() - failing_since)
                failing_since, retry_in = None, RETRY_FIRST
            with self._cond:
                self._done = upto
                ready = [f for n, f in self._waiters if n <= upto]
                self._waiters = [(n, f) for n, f in self._waiters if n > upto]
                self._backlog -= sum(size for _, _, size in ops)
                if self._room_waiters and self._backlog <= MAX_BACKLOG // 2:
                    ready += self._room_waiters
                    self._room_waiters = []
            if ready and self._loop is not None:
                self._loop.call_soon_threadsafe(_resolve, ready)

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Commit what is pending and close, waiting `timeout` seconds at most (call it once the broker stops).

        What is still unwritten then was never acknowledged (QoS 1 and 2 publishes are acknowledged only once
        committed): its clients send it again. SQLite rolls the unfinished transaction back at the next start.
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the data directory %s is slow: stopping with %d change(s) not yet written after %g s "
                        "(no publish among them was acknowledged)", self.path.parent, self._submitted - self._done,
                        timeout)
            return
        self._db.close()


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for f in futures:
        if not f.done():
            f.set_result(None)
