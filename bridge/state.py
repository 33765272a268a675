"""What the bridge keeps in --state, so a restart neither loses a post nor acts on one twice.

- `seen-posts.txt`: the command ids of the posts already acted on, one a line,
  the newest `limit` kept. A post counts as acted on once its command is safe
  (in the outbox below, or acknowledged by the broker), so a network that
  delivers it again, or a restart, never makes a second command. Bare digits
  are X post ids from before other networks (read as `x:<digits>`).
- `pending-commands.jsonl` (the outbox): every command accepted and not yet
  acknowledged by the broker (PUBACK). Written and fsynced before the command
  is handed to MQTT and kept across restarts, so a broker that is down, a
  SIGTERM or a crash never loses one; a command sent twice after a crash is
  recognised by its id on the device and not carried out again.
- `cursors.json`: where each stream resumes (Jetstream's last `time_us`,
  Mastodon's last status id), written at most once a second and on exit.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEEN_FILE = "seen-posts.txt"
OUTBOX_FILE = "pending-commands.jsonl"
CURSORS_FILE = "cursors.json"


class StateError(Exception):
    """The state directory cannot be used."""


def _read_lines(path: Path) -> list[str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"state directory {path.parent}: {exc}") from None


def _append(path: Path) -> Any:
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise StateError(f"state directory {path.parent}: {exc}") from None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _durable_append(f: Any, line: str) -> None:
    f.write(line + "\n")
    f.flush()
    os.fsync(f.fileno())


class SeenPosts:
    """Command ids already acted on, bounded.

    `add` writes without waiting for the disk: the outbox has the id durably
    until the broker acknowledges the command, and a start reads the outbox's
    ids as seen. `sync` makes the file durable; the publisher calls it before it
    lets an acknowledged command go from the outbox. One fsync per post, not two.
    """

    def __init__(self, directory: Path, limit: int = 10000) -> None:
        self.path = directory / SEEN_FILE
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()
        lines = _read_lines(self.path)
        bad = 0
        for line in lines:
            if line.isdigit():
                self._remember(f"x:{line}")
            elif line and not any(c.isspace() for c in line):
                self._remember(line)
            elif line:
                bad += 1
        if bad:
            log.warning("%s: %d unreadable line(s) skipped", self.path, bad)
        self._lines_on_disk = len(lines)
        self._file = _append(self.path)
        self._lock = threading.Lock()  # add (a source's thread) and sync (MQTT's) meet here
        self._unsynced = False

    def __contains__(self, command_id: str) -> bool:
        return command_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, command_id: str) -> None:
        with self._lock:
            self._remember(command_id)
            self._file.write(command_id + "\n")
            self._file.flush()
            self._unsynced = True
            self._lines_on_disk += 1
            if self._lines_on_disk >= 2 * self.limit:
                self._file.close()
                _write_atomically(self.path, "".join(i + "\n" for i in self._ids))
                self._file = _append(self.path)
                self._lines_on_disk = len(self._ids)
                self._unsynced = False

    def sync(self) -> None:
        """On disk when this returns."""
        with self._lock:
            if self._unsynced:
                os.fsync(self._file.fileno())
                self._unsynced = False

    def close(self) -> None:
        self.sync()
        with self._lock:
            self._file.close()

    def _remember(self, command_id: str) -> None:
        self._ids[command_id] = None
        self._ids.move_to_end(command_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)


@dataclass(frozen=True)
class Outgoing:
    """One command for one topic; `command` has "id" and "expires" (and "source", for user properties)."""

    topic: str
    command: dict[str, Any]

    @property
    def id(self) -> str:
        command_id: str = self.command["id"]
        return command_id


class Outbox:
    """Commands not yet acknowledged by the broker, in order, on disk when `add` returns.

    The file is a journal: `{"topic", "command"}` lines for commands and
    `{"done": id}` lines once one is acknowledged or given up; it is rewritten
    when it holds more finished lines than pending ones. A torn last line
    (a crash while writing) is skipped with a warning. Not thread-safe: the
    publisher holds its lock around every call.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / OUTBOX_FILE
        self._entries: OrderedDict[str, Outgoing] = OrderedDict()
        lines = _read_lines(self.path)
        bad = 0
        for line in lines:
            try:
                record = json.loads(line)
                if "done" in record:
                    self._entries.pop(record["done"], None)
                else:
                    out = Outgoing(str(record["topic"]), dict(record["command"]))
                    self._entries[out.id] = out
            except (ValueError, TypeError, KeyError):
                bad += 1
        if bad:
            log.warning("%s: %d unreadable line(s) skipped", self.path, bad)
        self._lines_on_disk = len(lines)
        self._file = _append(self.path)
        if bad or self._lines_on_disk > len(self._entries):
            self._compact()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, command_id: str) -> bool:
        return command_id in self._entries

    def __iter__(self) -> Iterator[Outgoing]:
        return iter(list(self._entries.values()))

    def add(self, out: Outgoing) -> None:
        _durable_append(self._file, json.dumps({"topic": out.topic, "command": out.command}, ensure_ascii=False,
                                               separators=(",", ":")))
        self._entries[out.id] = out
        self._lines_on_disk += 1

    def remove(self, command_id: str) -> None:
        if self._entries.pop(command_id, None) is None:
            return
        _durable_append(self._file, json.dumps({"done": command_id}, ensure_ascii=False))
        self._lines_on_disk += 1
        if self._lines_on_disk > 2 * len(self._entries) + 64:
            self._compact()

    def close(self) -> None:
        if self._lines_on_disk > len(self._entries):
            self._compact()
        self._file.close()

    def _compact(self) -> None:
        self._file.close()
        _write_atomically(self.path, "".join(
            json.dumps({"topic": o.topic, "command": o.command}, ensure_ascii=False, separators=(",", ":")) + "\n"
            for o in self._entries.values()))
        self._file = _append(self.path)
        self._lines_on_disk = len(self._entries)


class Cursors:
    """Small values each stream resumes from; a lost update only means a few more duplicates to drop."""

    def __init__(self, directory: Path, min_interval: float = 1.0) -> None:
        self.path = directory / CURSORS_FILE
        self.min_interval = min_interval
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._written: float | None = None  # monotonic time of the last write
        self._dirty = False
        text = "\n".join(_read_lines(self.path))
        if text:
            try:
                values = json.loads(text)
                if not isinstance(values, dict):
                    raise TypeError("not a JSON object")
                self._values = values
            except (ValueError, TypeError) as exc:
                log.warning("%s is unreadable (%s): streams start from now", self.path, exc)

    def get(self, key: str) -> Any:
        with self._lock:
            return self._values.get(key)

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._values[key] = value
            self._dirty = True
            if self._written is None or time.monotonic() - self._written >= self.min_interval:
                self._write()

    def flush(self) -> None:
        with self._lock:
            if self._dirty:
                self._write()

    def _write(self) -> None:
        try:
            _write_atomically(self.path, json.dumps(self._values, sort_keys=True))
        except OSError as exc:
            log.error("cannot write %s: %s (streams resume from an older point)", self.path, exc)
            return
        self._written = time.monotonic()
        self._dirty = False
