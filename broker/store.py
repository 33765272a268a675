"""The broker's state on disk (SQLite): retained messages, persistent sessions, queues.

Each change is committed at once, so a crash loses at most the change being
written. Only sessions worth keeping are stored: clean_session=0 and logged in
with a user name (amqtt keeps no queue for anonymous sessions anyway).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

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
"""


@dataclass(frozen=True)
class StoredMessage:
    topic: str
    data: bytes
    qos: int


@dataclass
class StoredSession:
    client_id: str
    username: str
    subscriptions: list[tuple[str, int]]
    queued: list[StoredMessage]


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- retained messages --------------------------------------------------
    def set_retained(self, topic: str, data: bytes, qos: int) -> None:
        if data:
            self.db.execute("INSERT OR REPLACE INTO retained VALUES (?, ?, ?)", (topic, bytes(data), qos))
        else:
            self.db.execute("DELETE FROM retained WHERE topic = ?", (topic,))

    def retained(self) -> list[StoredMessage]:
        rows = self.db.execute("SELECT topic, data, qos FROM retained ORDER BY topic")
        return [StoredMessage(t, bytes(d), q) for t, d, q in rows]

    # -- sessions -----------------------------------------------------------
    def keep_session(self, client_id: str, username: str) -> None:
        self.db.execute("INSERT INTO sessions VALUES (?, ?) ON CONFLICT(client_id) DO UPDATE SET username = ?",
                        (client_id, username, username))

    def drop_session(self, client_id: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE client_id = ?", (client_id,))

    def has_session(self, client_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM sessions WHERE client_id = ?", (client_id,)).fetchone() is not None

    def subscribe(self, client_id: str, topic_filter: str, qos: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?)", (client_id, topic_filter, qos))

    def unsubscribe(self, client_id: str, topic_filter: str) -> None:
        self.db.execute("DELETE FROM subscriptions WHERE client_id = ? AND filter = ?", (client_id, topic_filter))

    def queue(self, client_id: str, topic: str, data: bytes, qos: int) -> None:
        self.db.execute("INSERT INTO queued (client_id, topic, data, qos) VALUES (?, ?, ?, ?)",
                        (client_id, topic, bytes(data), qos))

    def delivered(self, client_id: str, count: int) -> None:
        """The oldest `count` queued messages of a client reached it."""
        self.db.execute("DELETE FROM queued WHERE id IN "
                        "(SELECT id FROM queued WHERE client_id = ? ORDER BY id LIMIT ?)", (client_id, count))

    def sessions(self) -> list[StoredSession]:
        found = [StoredSession(c, u, [], []) for c, u in self.db.execute("SELECT client_id, username FROM sessions")]
        for s in found:
            s.subscriptions = list(self.db.execute(
                "SELECT filter, qos FROM subscriptions WHERE client_id = ? ORDER BY filter", (s.client_id,)))
            s.queued = [StoredMessage(t, bytes(d), q) for t, d, q in self.db.execute(
                "SELECT topic, data, qos FROM queued WHERE client_id = ? ORDER BY id", (s.client_id,))]
        return found
