"""Simulated pins: in memory, every level change recorded with its time.

Like gpiozero's MockFactory, the history is what tests assert on; listeners
let the node print the LED to a terminal or append a JSON-lines trace.
Simulated inputs are driven by `drive` (gpiozero's drive_high/drive_low), or
by JSON lines `{"pin": 36, "value": 0}` read from a file or a FIFO
(`follow`), so anyone without a board can press the button.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from node.pins import InputPin, Pin, PinError, PinFactory, PinId, PwmChannel, numbered, without_channel

log = logging.getLogger(__name__)

FILE_POLL = 0.05  # seconds between looks at a regular --sim-inputs file that has nothing new (a FIFO blocks)
MAX_LINE = 1024


@dataclass(frozen=True)
class Change:
    t: float  # time.time() of the change
    pin: int
    value: int  # the level; for a PWM pin 1 while the duty is above 0
    id: str | None = None  # the command that caused it (or the id given with a simulated input)
    duty: float | None = None  # PWM pins only

    def as_json(self) -> str:
        fields: dict[str, object] = {"t": self.t, "pin": self.pin}
        fields.update({"duty": self.duty} if self.duty is not None else {"value": self.value})
        return json.dumps(fields if self.id is None else {**fields, "id": self.id})


Listener = Callable[[Change], None]


class SimPin(Pin):
    """A simulated GPIO output; set `fault` to make its writes fail as broken hardware would."""

    number: int

    def __init__(self, number: int, factory: SimFactory) -> None:
        super().__init__(number)
        self._factory = factory
        self.value = 0
        self.fault: Exception | None = None

    def write(self, level: float, cause: str | None = None) -> None:
        if self.fault is not None:
            raise self.fault
        value = 1 if level else 0
        if value != self.value:
            self.value = value
            self._factory._record(Change(time.time(), self.number, value, cause))


class SimPwmPin(SimPin):
    """A simulated PWM output: records the duty cycle of every change."""

    def __init__(self, number: int, factory: SimFactory, period: float) -> None:
        super().__init__(number, factory)
        self.period = period
        self.duty = 0.0

    def write(self, level: float, cause: str | None = None) -> None:
        if self.fault is not None:
            raise self.fault
        duty = round(min(1.0, max(0.0, float(level))), 4)
        if duty != self.duty:
            self.duty, self.value = duty, 1 if duty > 0 else 0
            self._factory._record(Change(time.time(), self.number, self.value, cause, duty))


class SimInputPin(InputPin):
    """A simulated input line: idle at the level its pull gives, moved by `drive`."""

    number: int

    def __init__(self, number: int, factory: SimFactory, pull: str) -> None:
        super().__init__(number)
        self._factory = factory
        self.value = 1 if pull == "up" else 0
        self._on_edge: Callable[[], None] | None = None

    def read(self) -> int:
        return self.value

    def watch(self, on_edge: Callable[[], None]) -> bool:
        self._on_edge = on_edge
        return True

    def drive(self, value: int, cause: str | None = None) -> None:
        """Set the level, as a switch or a sensor would; the change is recorded and the watcher told."""
        value = 1 if value else 0
        if value == self.value:
            return
        self.value = value
        self._factory._record(Change(time.time(), self.number, value, cause))
        if self._on_edge is not None:
            self._on_edge()

    def close(self) -> None:
        self._on_edge = None


class SimFactory(PinFactory):
    def __init__(self, trace: TextIO | None = None, listeners: list[Listener] | None = None) -> None:
        self.history: list[Change] = []
        self._pins: dict[int, SimPin] = {}
        self._inputs: dict[int, SimInputPin] = {}
        self._trace = trace
        self._listeners = list(listeners or [])
        self._lock = threading.Lock()

    def pin(self, number: PinId, active_low: bool = False) -> SimPin:
        number = numbered(number, "sim")
        return self._pins.setdefault(number, SimPin(number, self))

    def pwm(self, number: PinId, period: float, channel: PwmChannel | None = None) -> SimPwmPin:
        number = numbered(number, "sim")
        without_channel(channel, "sim")
        pin = self._pins.setdefault(number, SimPwmPin(number, self, period))
        assert isinstance(pin, SimPwmPin), f"pin {number} is already a GPIO output"
        return pin

    def input(self, number: PinId, pull: str, active_low: bool = False, debounce: float = 0.0) -> SimInputPin:
        number = numbered(number, "sim")
        return self._inputs.setdefault(number, SimInputPin(number, self, pull))

    def feed(self, line: str) -> None:
        """Apply one JSON line `{"pin": N, "value": 0|1}` (optionally `"id"`) to a simulated input; PinError if bad."""
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PinError(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or set(data) - {"pin", "value", "id"} or not {"pin", "value"} <= set(data):
            raise PinError('expected {"pin": <input pin>, "value": 0 or 1} (and optionally "id")')
        pin, value, cause = data["pin"], data["value"], data.get("id")
        if value not in (0, 1) or isinstance(value, bool):
            raise PinError(f"value must be 0 or 1 (got {value!r})")
        if cause is not None and not (isinstance(cause, str) and cause.isprintable() and len(cause) <= 128):
            raise PinError("id must be printable text of at most 128 characters")
        target = self._inputs.get(pin) if isinstance(pin, int) and not isinstance(pin, bool) else None
        if target is None:
            raise PinError(f"pin {pin!r} is not a configured input (inputs: {sorted(self._inputs) or 'none'})")
        target.drive(value, cause)

    def _record(self, change: Change) -> None:
        with self._lock:
            self.history.append(change)
            if self._trace is not None:
                self._trace.write(change.as_json() + "\n")
                self._trace.flush()
        for listener in self._listeners:
            listener(change)

    def close(self) -> None:
        if self._trace is not None:
            self._trace.close()


def open_inputs(path: Path) -> int:
    """Open --sim-inputs FILE for following: a FIFO as it is, a regular file (created if missing) at its end.

    A FIFO is opened for reading and writing, so the open does not wait for a
    writer and reads block (never spin) when the last writer has closed it.
    """
    try:
        if path.exists() and stat.S_ISFIFO(path.stat().st_mode):
            return os.open(path, os.O_RDWR)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        os.lseek(fd, 0, os.SEEK_END)  # only what is appended from now on
        return fd
    except OSError as exc:
        raise PinError(f"--sim-inputs {path}: {exc}") from None


def follow(fd: int, factory: SimFactory, name: str) -> threading.Thread:
    """Read JSON lines from `fd` for ever on a daemon thread, driving the simulated inputs; bad lines are logged."""
    fifo = stat.S_ISFIFO(os.fstat(fd).st_mode)

    def run() -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError as exc:
                log.error("%s: cannot read simulated inputs any more: %s", name, exc)
                return
            if not chunk:
                if fifo:  # cannot happen while we hold the write end too
                    return
                time.sleep(FILE_POLL)  # a regular file has no way to wait for more
                continue
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > MAX_LINE:
                log.error("%s: line over %d bytes skipped", name, MAX_LINE)
                pending = b""
            for raw in lines:
                _feed(factory, raw, name)

    thread = threading.Thread(target=run, name="sim-inputs", daemon=True)
    thread.start()
    return thread


def _feed(factory: SimFactory, raw: bytes, name: str) -> None:
    line = raw.decode("utf-8", "replace").strip()
    if not line:
        return
    try:
        factory.feed(line)
    except PinError as exc:
        log.error("%s: simulated input %r ignored: %s", name, line[:80], exc)
    except Exception:  # a bug in a listener: the reader keeps going
        log.exception("%s: simulated input %r failed", name, line[:80])
