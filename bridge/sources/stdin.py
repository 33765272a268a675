"""stdin: posts as JSON lines in X's filtered stream format, for trying triggers without any network."""

from __future__ import annotations

from collections.abc import Sequence

import os
import threading

from bridge.pipeline import Pipeline
from bridge.sources import split_lines
from bridge.sources.x import StreamDisconnect, handle_line, log


class StdinSource:
    """Posts as JSON lines in the filtered stream's own format, from a file descriptor; ends at end of file.

    For trying triggers without an X app: usernames cannot be resolved to ids
    here, so `allow.x` matches by username too (case-insensitive).
    """

    network = "x"

    def __init__(self, pipeline: Pipeline, accounts: Sequence[str], fd: int) -> None:
        self.pipeline = pipeline
        self.fd = fd
        usernames = [a for a in accounts if not a.isdigit()]
        for user_id in (a for a in accounts if a.isdigit()):
            pipeline.allow("x", user_id)
        pipeline.allowed["x"].names = frozenset(n.lower() for n in usernames)
        if usernames:
            log.info("reading posts from stdin: %s matched by username (no X API to resolve ids)",
                     ", ".join(usernames))

    def run(self, stop: threading.Event) -> int:
        for line in split_lines(iter(lambda: os.read(self.fd, 65536), b"")):
            if stop.is_set() or self.pipeline.stopped:
                return 0
            try:
                handle_line(self.pipeline, line)
            except StreamDisconnect as exc:
                log.warning("stream error message in the input: %s", exc)
        log.info("end of input")
        return 0
