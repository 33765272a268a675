"""Real processes for the tests and the benchmarks: free ports, a child whose output is watched line by line, the node's
trace, log records to wait on. No sleeps, only waits on events."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 15.0  # generous: the suite must pass on a busy 2-core machine


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_ports()
_next_port = itertools.count(10000 + (os.getpid() * 97) % 10000)  # spread concurrent test runs apart


def free_ports(count: int = 1) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1, below the kernel's ephemeral range.

    In that range any outgoing connection, of this or another process on the
    machine, could take a port between now and the server's bind, or while a
    killed server is started again on its ports.
    """
    for _ in range(1000):
        base = next(_next_port)
        if base + count >= _EPHEMERAL[0]:
            base = 10000 + base % 10000
        if base + count > _EPHEMERAL[0] and base <= _EPHEMERAL[1]:
            continue
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            for _ in range(count - 1):
                next(_next_port)
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports below {_EPHEMERAL[0]}")


def free_port() -> int:
    return free_ports(1)


class Proc:
    """A child process whose combined output is kept in a file and watched line by line."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 stdin: int | None = subprocess.DEVNULL) -> None:
        self.argv = argv
        self.log_path = log_path
        self._lines: list[str] = []
        self._new_line = threading.Condition()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with open(self.log_path, "ab") as log:
            for raw in self.popen.stdout:
                log.write(raw)
                log.flush()
                with self._new_line:
                    self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    @property
    def output(self) -> str:
        with self._new_line:
            return "\n".join(self._lines)

    def wait_for_line(self, pattern: str, timeout: float = TIMEOUT, start: int = 0) -> str:
        """Wait until a line matching `pattern` (regex) appears; fail with the output so far."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                for line in self._lines[start:]:
                    if rx.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} from {self.argv[:3]}; output:\n{self.output}")
                self._new_line.wait(remaining)

    def wait_until(self, done: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        """Wait until `done()` holds, checking it at each new line of output; whether it held in time."""
        deadline = time.monotonic() + timeout
        with self._new_line:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    return done()
                self._new_line.wait(remaining)
            return True

    def line_count(self) -> int:
        with self._new_line:
            return len(self._lines)

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.popen.wait(timeout)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(TIMEOUT)
        self._reader.join(TIMEOUT)


def stop_gracefully(procs: list[Proc]) -> None:
    """SIGTERM each process still running, give it TIMEOUT to exit, then make sure it is gone."""
    for proc in procs:
        if proc.popen.poll() is None:
            proc.signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        proc.stop()


def read_trace(path: Path) -> list[dict]:
    """The level changes the node has traced so far: whole lines only.

    The node appends a line per change while we read, and a write that crosses a
    page boundary becomes visible in two steps, so the last line may be half
    written: it counts once its newline is there.
    """
    if not path.exists():
        return []
    whole, _, _ = path.read_bytes().rpartition(b"\n")
    return [json.loads(line) for line in whole.decode().splitlines() if line.strip()]


def python_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class LogLines(logging.Handler):
    """Log records as they arrive, from any thread, so a test can wait for one instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._arrived = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._arrived:
            self.lines.append(f"{record.levelname} {record.getMessage()}")
            self._arrived.notify_all()

    @property
    def text(self) -> str:
        with self._arrived:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT, count: int = 1) -> str:
        """The `count`th line matching `pattern`, once it is there."""
        rx = re.compile(pattern)

        def found() -> str | None:
            return next(itertools.islice((line for line in self.lines if rx.search(line)), count - 1, None), None)

        with self._arrived:
            if not self._arrived.wait_for(lambda: found() is not None, timeout):
                raise AssertionError(f"not {count} log line(s) matching {pattern!r}; log:\n" + "\n".join(self.lines))
            return found() or ""
