"""The ids of the posts already acted on, kept on disk so a restart never acts twice.

X may deliver a post again after a reconnect (or with backfill), and the bridge
may restart at any time. Ids are appended to `seen-posts.txt` in the state
directory and fsynced before the command is handed to MQTT: after a crash a
command may be lost, but never sent twice. Only the newest `limit` ids are kept;
the file is rewritten (atomically) when it grows to twice that.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "seen-posts.txt"


class StateError(Exception):
    """The state directory cannot be used."""


class SeenPosts:
    def __init__(self, directory: Path, limit: int = 10000) -> None:
        self.path = directory / FILE_NAME
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            lines = self.path.read_text(encoding="ascii").splitlines() if self.path.exists() else []
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"state directory {directory}: {exc}") from None
        bad = 0
        for line in lines:
            if line.isdigit():
                self._remember(line)
            elif line:
                bad += 1
        if bad:
            log.warning("%s: %d unreadable line(s) skipped", self.path, bad)
        self._lines_on_disk = len(lines)
        try:
            self._file = open(self.path, "a", encoding="ascii")  # noqa: SIM115 - kept open for appends
        except OSError as exc:
            raise StateError(f"state directory {directory}: {exc}") from None

    def __contains__(self, post_id: str) -> bool:
        return post_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, post_id: str) -> None:
        """Remember a post id durably (on disk when this returns)."""
        self._remember(post_id)
        self._file.write(post_id + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._lines_on_disk += 1
        if self._lines_on_disk >= 2 * self.limit:
            self._compact()

    def close(self) -> None:
        self._file.close()

    def _remember(self, post_id: str) -> None:
        self._ids[post_id] = None
        self._ids.move_to_end(post_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def _compact(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write("".join(i + "\n" for i in self._ids))
            f.flush()
            os.fsync(f.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="ascii")  # noqa: SIM115
        self._lines_on_disk = len(self._ids)
