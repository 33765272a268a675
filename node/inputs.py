"""Inputs: buttons, contacts and motion sensors, debounced, with press / double_press / long_press events.

`Press` is the whole decision, clocked by the caller (`edge` and `advance` take
the time), so every timing can be tested without threads or sleeps.
`InputWatcher` runs it on one thread for all inputs, waiting in `select` until
the next edge or deadline: edges arrive on a line request's file descriptor
with the kernel's timestamps (gpiod), from a thread of the backend through a
wake-up pipe (an mraa interrupt thread, the simulated-input reader), or from
polling `read()` every POLL_INTERVAL seconds where a line has no interrupts.

Debouncing: a level counts once it has held for `debounce` seconds, so the
burst of edges of a bouncing contact is one change. Events (component
`event`): a release within `long_press` of its press is a `press`, reported
once `double_press` seconds pass without a second press; a second press in
that window makes the pair one `double_press` (on its release); holding for
`long_press` is a `long_press` at that moment (a first press still waiting for
its double is reported as a `press` before it).
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.config import InputConfig
from node.pins import InputPin, PinError

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.05  # seconds between reads of a line without interrupts


class Press:
    """The debounced state of one input and the events it makes; pure, clocked by the caller."""

    def __init__(self, config: InputConfig, level: int, now: float) -> None:
        self.config = config
        self._raw = level
        self._raw_since = now
        self.active = self._is_active(level)
        self._long_at: float | None = None  # when a held press becomes a long press
        self._single_at: float | None = None  # when a released press without a second one is a press
        self._second = False  # the press held now is the second of a double
        self._long_done = False  # the press held now was reported as a long press

    def _is_active(self, level: int) -> bool:
        return bool(level) != self.config.active_low

    def edge(self, level: int, now: float) -> None:
        """The line reads `level` at `now` (an edge, or a read at a deadline)."""
        if level != self._raw:
            self._raw, self._raw_since = level, now

    def deadline(self) -> float | None:
        """When `advance` has something to do next, if anything."""
        times = [t for t in (self.settles_at(), self._long_at, self._single_at) if t is not None]
        return min(times) if times else None

    def settles_at(self) -> float | None:
        return self._raw_since + self.config.debounce if self._is_active(self._raw) != self.active else None

    def advance(self, now: float) -> list[str]:
        """Everything due by `now`, in time order: `state` for a debounced change, then event types."""
        happened: list[str] = []
        while True:
            due = self.deadline()
            if due is None or due > now:
                return happened
            if due == self.settles_at():
                self.active = not self.active
                happened.append("state")
                if self.config.component == "event":
                    happened += self._pressed(due) if self.active else self._released(due)
            elif due == self._long_at:
                self._long_at, self._long_done = None, True
                happened += self._first_of_pair() + ["long_press"]
            else:
                self._single_at = None
                happened.append("press")

    def _first_of_pair(self) -> list[str]:
        if self._second:
            self._second = False
            return ["press"]
        return []

    def _pressed(self, t: float) -> list[str]:
        self._long_at = t + self.config.long_press
        if self._single_at is not None:
            self._single_at, self._second = None, True
        return []

    def _released(self, t: float) -> list[str]:
        self._long_at = None
        if self._long_done:
            self._long_done = False
            return []
        if self._second:
            self._second = False
            return ["double_press"]
        if self.config.double_press > 0:
            self._single_at = t + self.config.double_press
            return []
        return ["press"]


StateListener = Callable[["Input"], None]
EventListener = Callable[["Input", str], None]


@dataclass
class Input:
    name: str
    config: InputConfig
    pin: InputPin
    press: Press
    polled: bool = False

    @property
    def state(self) -> str:
        return "ON" if self.press.active else "OFF"


class InputWatcher:
    """One thread for every input of the device: edges in, debounced states and events out to the listeners."""

    def __init__(self, inputs: dict[str, tuple[InputConfig, InputPin]], on_state: StateListener,
                 on_event: EventListener, poll_interval: float = POLL_INTERVAL) -> None:
        now = time.monotonic()
        self.inputs = {name: Input(name, cfg, pin, Press(cfg, pin.read(), now)) for name, (cfg, pin) in inputs.items()}
        self._on_state = on_state
        self._on_event = on_event
        self._poll_interval = poll_interval
        self._edges: list[tuple[Input, int, float]] = []  # from the backends' threads
        self._lock = threading.Lock()
        self._stopping = False
        self._selector: selectors.BaseSelector | None = None
        self._wake: tuple[int, int] | None = None  # the pipe that wakes the thread: read end, write end
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.inputs:
            return
        selector = self._selector = selectors.DefaultSelector()
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        selector.register(self._wake[0], selectors.EVENT_READ, None)
        for item in self.inputs.values():
            edges = item.pin.fileno()
            if edges is not None:
                selector.register(edges, selectors.EVENT_READ, item)
                continue
            item.polled = not item.pin.watch(lambda item=item: self._edge(item))  # type: ignore[misc]
            if item.polled:
                log.info("input %s (pin %s) has no interrupts: read every %g s", item.name, item.pin.number,
                         self._poll_interval)
        self._thread = threading.Thread(target=self._run, name="inputs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._poke()
        if self._thread is not None:
            self._thread.join(1.0)
        for item in self.inputs.values():
            item.pin.close()
        if self._selector is None or (self._thread is not None and self._thread.is_alive()):
            return  # a listener still holds the thread: the process is ending, leave it the descriptors
        self._selector.close()
        with self._lock:
            wake, self._wake = self._wake, None
        for fd in wake or ():
            os.close(fd)

    def _poke(self) -> None:
        with self._lock:
            if self._wake is None:
                return
            try:
                os.write(self._wake[1], b"!")
            except BlockingIOError:
                pass  # the pipe is full: the thread is awake already

    def _edge(self, item: Input) -> None:
        """From the backend's thread: read the level at once, so a short pulse is not read after it ended."""
        try:
            level = item.pin.read()
        except PinError as exc:
            log.error("input %s: %s", item.name, exc)
            return
        with self._lock:
            self._edges.append((item, level, time.monotonic()))
        self._poke()

    def _run(self) -> None:
        assert self._selector is not None and self._wake is not None
        selector, wake = self._selector, self._wake[0]
        next_poll = time.monotonic()
        while True:
            polled = any(item.polled for item in self.inputs.values())
            due = min([d for d in (i.press.deadline() for i in self.inputs.values()) if d is not None]
                      + ([next_poll] if polled else []), default=None)
            ready = selector.select(None if due is None else max(0.0, due - time.monotonic()))
            edges: list[tuple[Input, int, float]] = []
            for key, _ in ready:
                if key.data is None:
                    _drain(wake)
                else:
                    edges += self._read_edges(selector, key.fd, key.data)
            with self._lock:
                if self._stopping:
                    return
                edges, self._edges = self._edges + edges, []
            now = time.monotonic()
            for item, level, t in edges:
                item.press.edge(level, t)
            if polled and now >= next_poll:
                next_poll = now + self._poll_interval
                for item in self.inputs.values():
                    if item.polled:
                        self._read(item, now)
            for item in self.inputs.values():
                self._advance(item, now)

    def _read_edges(self, selector: selectors.BaseSelector, fd: int, item: Input) -> list[tuple[Input, int, float]]:
        try:
            return [(item, level, t) for level, t in item.pin.edges()]
        except PinError as exc:  # a descriptor that keeps failing must not keep the loop spinning
            log.error("input %s: %s; reading it every %g s instead", item.name, exc, self._poll_interval)
            selector.unregister(fd)
            item.polled = True
            return []

    def _read(self, item: Input, now: float) -> None:
        try:
            item.press.edge(item.pin.read(), now)
        except PinError as exc:
            log.error("input %s: %s", item.name, exc)

    def _advance(self, item: Input, now: float) -> None:
        due = item.press.deadline()
        if due is not None and due <= now and item.press.settles_at() == due:
            self._read(item, now)  # confirm the level at the end of the debounce: an edge may have been missed
        for what in item.press.advance(now):
            try:
                if what == "state":
                    log.info("input %s: %s", item.name, item.state)
                    self._on_state(item)
                else:
                    log.info("input %s: %s", item.name, what)
                    self._on_event(item, what)
            except Exception:  # a listener's bug must not end the watcher
                log.exception("input %s: reporting %s failed", item.name, what)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
