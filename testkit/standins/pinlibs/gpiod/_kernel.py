"""The simulated kernel under the stand-in gpiod: chips, lines, requests and their queues, as the GPIO character
device (uAPI v2, drivers/gpio/gpiolib-cdev.c) behaves; the private counterpart of the real package's `_ext`.

A chip is a JSON file (`make_chip` writes one) where a board has a character device:
the real `is_gpiochip_device` would refuse it with ENOTTY, this one accepts it and
nothing else. The kernel's refusals are raised as the real bindings raise them,
OSError with its errno: ENOENT for a missing path or line name, ENOTTY for a file that is no
chip, EACCES, EBUSY for a line another request holds, EINVAL for settings the kernel
refuses, EPERM for setting an input. Edge events carry CLOCK_MONOTONIC
timestamps and, with a debounce period, come once the level has held that long, as
the kernel's software debounce does.

The test's hand on the wire: `drive(path, offset, level)` sets the level an
input line sees (gpio-sim's `pull` attribute), `fail(path, offset, error)` makes
the line's writes fail, `level(path, offset)` and `history` tell what outputs show.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .line import Bias, Direction, Drive, Edge, Value
from .line_info import LineInfo
from .line_settings import LineSettings

MARK = "gpiod-standin-chip"
DEFAULT_EVENTS_PER_LINE = 16  # the kernel's buffer when the request asks for none
READ_EVENTS = 64  # what read_edge_events takes at most without max_events (the bindings' buffer)

_lock = threading.RLock()
_chips: dict[str, SimChip] = {}
_seqno = itertools.count(1)
history: list[tuple[str, int, int, float]] = []  # (chip path, offset, electrical level, time.monotonic())
listeners: list[Callable[[], None]] = []  # called after every change of an output


def make_chip(path: str | Path, label: str, names: list[str]) -> Path:
    """Write a chip description at `path`: one line per name ('' for an unnamed line)."""
    path = Path(path)
    path.write_text(json.dumps({MARK: True, "label": label, "lines": names}))
    return path


def reset() -> None:
    with _lock:
        for chip in _chips.values():
            for line in chip.lines:
                if line.timer is not None:
                    line.timer.cancel()
        _chips.clear()
        history.clear()
        listeners.clear()


def _error(code: int, path: str | None = None) -> OSError:
    return OSError(code, os.strerror(code), path) if path else OSError(code, os.strerror(code))


def _describe(path: str) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get(MARK) else None


def is_chip(path: str) -> bool:
    return os.path.exists(path) and _describe(path) is not None


def open_chip(path: str) -> SimChip:
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    data = _describe(real)
    if data is None:
        raise _error(errno.ENOTTY, path)
    if not os.access(real, os.R_OK | os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    with _lock:
        if real not in _chips:
            _chips[real] = SimChip(real, Path(real).name, data["label"], data["lines"])
        return _chips[real]


def chip_of(path: str | Path) -> SimChip:
    with _lock:
        return _chips[os.path.realpath(path)]


def drive(path: str | Path, offset: int, level: int) -> None:
    """Set the electrical level an input line sees, as a switch or a sensor would."""
    chip_of(path).lines[offset].drive(1 if level else 0)


def fail(path: str | Path, offset: int, error: OSError | None) -> None:
    """Make writes to the line raise `error` (None: work again), as a chip whose bus has failed."""
    chip_of(path).lines[offset].fault = error


def level(path: str | Path, offset: int) -> int:
    return chip_of(path).lines[offset].electrical()


class SimLine:
    def __init__(self, chip: SimChip, offset: int, name: str) -> None:
        self.chip, self.offset, self.name = chip, offset, name
        self.settings = LineSettings()
        self.request: SimRequest | None = None
        self.consumer = ""
        self.driven: int | None = None  # the level the outside world puts on the line
        self.out = 0  # the electrical level an output drives
        self.fault: OSError | None = None
        self.reported = 0  # the level of the last edge event (debounced)
        self.timer: threading.Timer | None = None

    def info(self) -> LineInfo:
        s = self.settings
        used = self.request is not None
        return LineInfo(self.offset, self.name, used, self.consumer, s.direction.value if used else
                        Direction.INPUT.value, s.active_low, s.bias.value if used else Bias.UNKNOWN.value,
                        s.drive.value, s.edge_detection.value, s.event_clock.value,
                        used and s.debounce_period.total_seconds() > 0,
                        int(s.debounce_period.total_seconds() * 1_000_000) if used else 0)

    def electrical(self) -> int:
        if self.request is not None and self.settings.direction == Direction.OUTPUT:
            return self.out
        if self.driven is not None:
            return self.driven
        return 1 if self.request is not None and self.settings.bias == Bias.PULL_UP else 0

    def logical(self) -> Value:
        return Value.ACTIVE if bool(self.electrical()) != self.settings.active_low else Value.INACTIVE

    def configure(self, settings: LineSettings, output: Value | None) -> None:
        self.settings = settings
        if settings.direction == Direction.OUTPUT:
            self.set(output if output is not None else settings.output_value)
        self.reported = self.electrical()

    def set(self, value: Value) -> None:
        if self.fault is not None:
            raise self.fault
        out = 1 if bool(value == Value.ACTIVE) != self.settings.active_low else 0
        if out != self.out:
            self.out = out
            history.append((self.chip.path, self.offset, out, time.monotonic()))
            for listener in listeners:
                listener()

    def drive(self, level: int) -> None:
        with _lock:
            if level == self.driven:
                return
            self.driven = level
            if self.request is None or self.settings.direction != Direction.INPUT:
                return
            period = self.settings.debounce_period.total_seconds()
            if period <= 0:
                self._report()
                return
            if self.timer is not None:
                self.timer.cancel()
            self.timer = threading.Timer(period, self._settled)
            self.timer.daemon = True
            self.timer.start()

    def _settled(self) -> None:
        with _lock:
            self.timer = None
            if self.request is not None:
                self._report()

    def _report(self) -> None:
        level = self.electrical()
        if level == self.reported:
            return
        self.reported = level
        rising = bool(level) != self.settings.active_low  # events are logical, as the line's values are
        edge = self.settings.edge_detection
        if edge == Edge.BOTH or edge == (Edge.RISING if rising else Edge.FALLING):
            assert self.request is not None
            self.request.queue(self.offset, 1 if rising else 2)


class SimChip:
    def __init__(self, path: str, name: str, label: str, names: list[str]) -> None:
        self.path, self.name, self.label = path, name, label
        self.lines = [SimLine(self, offset, line_name) for offset, line_name in enumerate(names)]
        self.handles: list[SimHandle] = []  # the open file descriptions of the chip, for info events

    def changed(self, offset: int, event_type: int) -> None:
        """Tell every handle watching the line (LINE_REQUESTED 1, LINE_RELEASED 2, LINE_CONFIG_CHANGED 3)."""
        for handle in self.handles:
            if offset in handle.watched:
                handle.queue((event_type, time.monotonic_ns(), self.lines[offset].info()))

    def offset_of(self, name: str) -> int:
        for line in self.lines:
            if line.name == name:
                return line.offset
        raise _error(errno.ENOENT)

    def request(self, config: list[tuple[int, LineSettings]], output_values: list[Value] | None, consumer: str | None,
                event_buffer_size: int | None) -> SimRequest:
        with _lock:
            for offset, settings in config:
                if not 0 <= offset < len(self.lines):
                    raise _error(errno.EINVAL)
                _validate(settings)
                if self.lines[offset].request is not None:
                    raise _error(errno.EBUSY)
            request = SimRequest(self, [offset for offset, _ in config],
                                 event_buffer_size or DEFAULT_EVENTS_PER_LINE * len(config))
            for i, (offset, settings) in enumerate(config):
                line = self.lines[offset]
                line.request, line.consumer = request, consumer or "?"
                line.configure(settings, output_values[i] if output_values else None)
                self.changed(offset, 1)
            return request


class SimHandle:
    """An open chip: its file descriptor reads info events of the lines it watches."""

    def __init__(self, chip: SimChip) -> None:
        self.chip = chip
        self.watched: set[int] = set()
        self._read, self._write = os.pipe()
        self._events: deque[tuple[int, int, LineInfo]] = deque()
        with _lock:
            chip.handles.append(self)

    @property
    def fd(self) -> int:
        return self._read

    def watch(self, offset: int) -> LineInfo:
        with _lock:
            if offset in self.watched:
                raise _error(errno.EBUSY)
            self.watched.add(offset)
            return self.chip.lines[offset].info()

    def unwatch(self, offset: int) -> None:
        with _lock:
            if offset not in self.watched:
                raise _error(errno.EBUSY)
            self.watched.discard(offset)

    def queue(self, event: tuple[int, int, LineInfo]) -> None:
        self._events.append(event)
        os.write(self._write, b"i")

    def read_event(self) -> tuple[int, int, LineInfo]:
        while True:
            with _lock:
                if self._events:
                    os.read(self._read, 1)
                    return self._events.popleft()
            select.select([self._read], [], [])

    def close(self) -> None:
        with _lock:
            self.chip.handles.remove(self)
            os.close(self._read)
            os.close(self._write)


def _validate(settings: LineSettings) -> None:
    """What gpio_v2_line_flags_validate refuses with EINVAL."""
    direction = settings.direction
    if settings.edge_detection != Edge.NONE and direction != Direction.INPUT:
        raise _error(errno.EINVAL)
    if settings.drive != Drive.PUSH_PULL and direction != Direction.OUTPUT:
        raise _error(errno.EINVAL)
    if settings.bias != Bias.AS_IS and direction == Direction.AS_IS:
        raise _error(errno.EINVAL)


class SimRequest:
    """A line request: its file descriptor is the read end of a pipe holding one byte per queued edge event."""

    def __init__(self, chip: SimChip, offsets: list[int], capacity: int) -> None:
        self.chip, self.offsets, self.capacity = chip, offsets, capacity
        self._read, self._write = os.pipe()
        self._events: deque[tuple[int, int, int, int, int]] = deque()
        self._line_seqno = dict.fromkeys(offsets, 0)
        self.released = False

    @property
    def fd(self) -> int:
        return self._read

    def queue(self, offset: int, event_type: int) -> None:
        with _lock:
            if len(self._events) == self.capacity:  # the kernel drops the oldest event
                self._events.popleft()
                os.read(self._read, 1)
            self._line_seqno[offset] += 1
            self._events.append((event_type, time.monotonic_ns(), offset, next(_seqno), self._line_seqno[offset]))
            os.write(self._write, b"e")

    def read_events(self, max_events: int | None) -> list[tuple[int, int, int, int, int]]:
        while True:
            with _lock:
                if self._events:
                    taken = [self._events.popleft() for _ in range(min(len(self._events), max_events or READ_EVENTS))]
                    os.read(self._read, len(taken))
                    return taken
            select.select([self._read], [], [])  # a read of the request blocks until an event is queued

    def reconfigure(self, config: dict[int, LineSettings]) -> None:
        with _lock:
            for settings in config.values():
                _validate(settings)
            for offset, settings in config.items():
                self.chip.lines[offset].configure(settings, None)
                self.chip.changed(offset, 3)

    def line(self, offset: int) -> SimLine:
        if offset not in self.offsets:
            raise _error(errno.EINVAL)
        return self.chip.lines[offset]

    def release(self) -> None:
        with _lock:
            for offset in self.offsets:
                line = self.chip.lines[offset]
                if line.timer is not None:
                    line.timer.cancel()
                    line.timer = None
                line.request, line.consumer = None, ""
                self.chip.changed(offset, 2)
            self.released = True
            os.close(self._read)
            os.close(self._write)
