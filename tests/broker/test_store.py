"""The store: committed before the answer, the first layout migrated, changes the disk refused kept, publishers held
back by a slow disk."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from broker.store import Store


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
