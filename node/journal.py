"""The ids of the commands carried out, kept on disk, so that a repeated id is answered and not carried out again.

QoS 1 is "at least once": after a reconnect, a broker failover, or a restart
of the broker or the node, a command can arrive again, with or without the DUP
flag. paho acknowledges a command only after the node has handled it, so a
node that dies in between gets it again. Each command with an id is therefore
recorded as *started*, on disk (fsync), before its effect, and as *done*, with
its result, after. A repeat of a done command gets that result again; one found
started but never done was cut short by a restart and is answered with an
error instead of being carried out a second time.

The file is JSON lines, appended: `{"id": ..., "t": <unix time>}` when a
command starts, the same with `"result": {...}` when it is done. The newest
`limit` ids no older than `max_age` are kept. The file is rewritten
(atomically) at start when the last line is torn (a crash while writing),
a line is unreadable or anything expired, and whenever it grows to twice
the limit.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "commands.jsonl"
LIMIT = 10_000
MAX_AGE = 7 * 86400.0


class JournalError(Exception):
    """The state directory cannot be used, or a command could not be recorded before its effect."""


def default_directory(device_id: str, env: Mapping[str, str] = os.environ) -> Path:
    """systemd's StateDirectory when the node runs under it (StateDirectory=), else a folder of the user's own."""
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"
    return base / "edison-node" / device_id


@dataclass(frozen=True)
class Entry:
    t: float  # unix time the command started
    result: str | None  # the result as JSON text once done; None: started and never done


class Journal:
    """Used from one thread, the link's network thread, which handles one command at a time."""

    def __init__(self, directory: Path, limit: int = LIMIT, max_age: float = MAX_AGE,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self.limit = limit
        self.max_age = max_age
        self._clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._dir_fd = os.open(directory, os.O_RDONLY)
        except OSError as exc:
            raise JournalError(f"state directory {directory}: {exc}") from None
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._dir_fd)
            raise JournalError(f"state directory {directory} is in use by another edison-node") from None
        try:
            clean, self._lines = self._load()
            self._prune()
            if clean and self._lines < 2 * limit:
                self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for appends
            else:
                self._rewrite()
        except OSError as exc:
            os.close(self._dir_fd)
            raise JournalError(f"state directory {directory}: {exc}") from None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, command_id: str) -> Entry | None:
        return self._entries.get(command_id)

    def start(self, command_id: str) -> None:
        """Record that the command is about to take effect; on disk when this returns, else JournalError."""
        entry = Entry(round(self._clock(), 3), None)
        try:
            self._append(_line(command_id, entry))
        except OSError as exc:
            raise JournalError(f"cannot record the command in {self.path}: {exc}") from None
        self._entries[command_id] = entry
        self._prune()

    def finish(self, command_id: str, result: Mapping[str, Any]) -> None:
        """Record the command's result. If the disk fails here, a repeat after a restart is answered as interrupted."""
        started = self._entries.get(command_id)
        entry = Entry(started.t if started else round(self._clock(), 3), json.dumps(result, separators=(",", ":")))
        self._entries[command_id] = entry
        try:
            self._append(_line(command_id, entry))
        except OSError as exc:
            log.error("cannot record the result of command %s in %s: %s", command_id, self.path, exc)

    def close(self) -> None:
        self._file.close()
        os.close(self._dir_fd)  # releases the lock

    def _append(self, line: bytes) -> None:
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._lines += 1
        if self._lines >= 2 * self.limit:
            self._rewrite()

    def _load(self) -> tuple[bool, int]:
        """Read the file into memory; returns whether it was clean and how many lines it had."""
        try:
            lines = self.path.read_bytes().split(b"\n")
        except FileNotFoundError:
            return True, 0
        torn = lines.pop() != b""  # the last element is what follows the last newline
        bad = 0
        for raw in lines:
            entry = _parse(raw)
            if entry is None:
                bad += 1
            else:
                self._entries[entry[0]] = entry[1]
        problems = [f"{bad} unreadable line(s)"] if bad else []
        if torn:
            problems.append("a torn last line (left by a crash while writing)")
        if problems:
            log.warning("%s: skipped %s", self.path, " and ".join(problems))
        return not (torn or bad), len(lines)

    def _prune(self) -> None:
        """Forget the oldest ids beyond the limit and those older than max_age."""
        oldest = self._clock() - self.max_age
        while self._entries and (len(self._entries) > self.limit or next(iter(self._entries.values())).t < oldest):
            self._entries.popitem(last=False)

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.writelines(_line(command_id, entry) for command_id, entry in self._entries.items())
            f.flush()
            os.fsync(f.fileno())
        if hasattr(self, "_file"):
            self._file.close()
        os.replace(tmp, self.path)
        os.fsync(self._dir_fd)  # the rename itself is durable
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for appends
        self._lines = len(self._entries)


def _line(command_id: str, entry: Entry) -> bytes:
    result = "" if entry.result is None else f',"result":{entry.result}'
    return f'{{"id":{json.dumps(command_id)},"t":{entry.t}{result}}}\n'.encode()


def _parse(raw: bytes) -> tuple[str, Entry] | None:
    try:
        record = json.loads(raw)
        command_id, t, result = record["id"], float(record["t"]), record.get("result")
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(command_id, str) or not (result is None or isinstance(result, dict)):
        return None
    return command_id, Entry(t, None if result is None else json.dumps(result, separators=(",", ":")))
