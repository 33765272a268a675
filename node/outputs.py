"""Outputs: an LED (or relay) on one pin, with on/off/toggle and a cancellable blink.

An output keeps two things apart: its *state* (what the user asked for, ON or
OFF) and its *level* (what the pin shows right now). A blink changes the level
on a thread of its own and puts the state back when it ends; any newer command
cancels it at once, without waiting for the pattern's current phase.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from node.config import BlinkPattern, OutputConfig
from node.pins import Pin

Listener = Callable[["Output", bool], None]


def state_name(on: bool) -> str:
    return "ON" if on else "OFF"


class Output:
    def __init__(self, name: str, pin: Pin, config: OutputConfig, on_level: Listener | None = None) -> None:
        self.name = name
        self.config = config
        self._pin = pin
        self._on_level = on_level
        self._lock = threading.Lock()
        self._cancel: threading.Event | None = None
        self._state = config.safe_state == "ON"
        self._level = self._state
        pin.write(self._state != config.active_low)

    @property
    def state(self) -> str:
        return state_name(self._state)

    @property
    def level(self) -> str:
        """What the output shows now (differs from `state` during a blink)."""
        return state_name(self._level)

    @property
    def blinking(self) -> bool:
        return self._cancel is not None

    def set(self, state: str) -> str:
        """Apply ON, OFF or TOGGLE (relative to the state, not a blink's level); return the new state."""
        with self._lock:
            self._stop_pattern()
            self._state = (not self._state) if state == "TOGGLE" else state == "ON"
            self._show(self._state)
            return self.state

    def blink(self, pattern: BlinkPattern) -> None:
        """Start `pattern` in the background; the state is restored when it ends."""
        with self._lock:
            self._stop_pattern()
            cancel = self._cancel = threading.Event()
        threading.Thread(target=self._run_blink, args=(pattern, cancel), name=f"blink-{self.name}", daemon=True).start()

    def safe(self) -> str:
        """Stop any pattern and go to the configured safe state."""
        return self.set(self.config.safe_state)

    def _run_blink(self, pattern: BlinkPattern, cancel: threading.Event) -> None:
        for _ in range(pattern.count):
            for level, seconds in ((True, pattern.on_time), (False, pattern.off_time)):
                with self._lock:
                    if cancel.is_set():
                        return
                    self._show(level)
                if cancel.wait(seconds):
                    return
        with self._lock:
            if not cancel.is_set():
                self._cancel = None
                self._show(self._state)

    def _stop_pattern(self) -> None:
        # Called with the lock held; the pattern thread checks the event under
        # the same lock before every write, so it never writes after this.
        if self._cancel is not None:
            self._cancel.set()
            self._cancel = None

    def _show(self, on: bool) -> None:
        if on == self._level:
            return
        self._level = on
        self._pin.write(on != self.config.active_low)
        if self._on_level is not None:
            self._on_level(self, on)
