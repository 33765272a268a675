"""Outputs: an LED (or relay) on one pin, with on/off/toggle and a cancellable blink.

An output keeps two things apart: its *state* (what the user asked for, ON or
OFF) and its *level* (what the pin shows right now). A blink changes the level
on a thread of its own and puts the state back when it ends; any newer command
cancels it at once, without waiting for the pattern's current phase.

The pin is written first and the output's record changed only when the write
succeeded, so the state never claims a level the pin did not reach. Level
changes are reported to the listener outside the lock (it publishes over
MQTT), one report at a time and always the newest level, so the retained
`/state` ends as what the pin shows even when a blink and a command race.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from node.config import BlinkPattern, OutputConfig
from node.pins import Pin, PinError

log = logging.getLogger(__name__)

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
        self._write(self._state, None)
        self._level = self._state
        self._unreported = False  # a level change the listener has not been told of
        self._reporting = False  # a thread is telling the listener (outside the lock)

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

    def set(self, state: str, cause: str | None = None) -> str:
        """Apply ON, OFF or TOGGLE (relative to the state, not a blink's level); return the new state.

        Raises PinError, with the output unchanged but for a cancelled blink, when the pin cannot be written.
        """
        try:
            with self._lock:
                self._stop_pattern()
                wanted = (not self._state) if state == "TOGGLE" else state == "ON"
                self._show(wanted, cause)
                self._state = wanted
                return self.state
        finally:
            self._report()

    def blink(self, pattern: BlinkPattern, cause: str | None = None) -> None:
        """Start `pattern` in the background; the state is restored when it ends."""
        with self._lock:
            self._stop_pattern()
            cancel = self._cancel = threading.Event()
        threading.Thread(target=self._run_blink, args=(pattern, cancel, cause), name=f"blink-{self.name}",
                         daemon=True).start()

    def safe(self) -> str:
        """Stop any pattern and go to the configured safe state."""
        return self.set(self.config.safe_state)

    def report(self) -> None:
        """Tell the listener the current level again (after a reconnect), in order with the changes."""
        with self._lock:
            self._unreported = True
        self._report()

    def _run_blink(self, pattern: BlinkPattern, cancel: threading.Event, cause: str | None) -> None:
        try:
            for _ in range(pattern.count):
                for level, seconds in ((True, pattern.on_time), (False, pattern.off_time)):
                    with self._lock:
                        if cancel.is_set():
                            return
                        self._show(level, cause)
                    self._report()
                    if cancel.wait(seconds):
                        return
            self._end_blink(cancel, cause)
        except Exception:
            log.exception("blink of %s (command %s) stopped by an error; restoring %s", self.name, cause, self.state)
            try:
                self._end_blink(cancel, cause)
            except PinError as exc:
                log.error("%s: could not restore %s after the failed blink: %s", self.name, self.state, exc)

    def _end_blink(self, cancel: threading.Event, cause: str | None) -> None:
        try:
            with self._lock:
                if cancel.is_set():
                    return
                self._cancel = None
                self._show(self._state, cause)
        finally:
            self._report()

    def _stop_pattern(self) -> None:
        # Called with the lock held; the pattern thread checks the event under
        # the same lock before every write, so it never writes after this.
        if self._cancel is not None:
            self._cancel.set()
            self._cancel = None

    def _show(self, on: bool, cause: str | None) -> None:
        # Called with the lock held.
        if on != self._level:
            self._write(on, cause)
            self._level = on
            self._unreported = True

    def _write(self, on: bool, cause: str | None) -> None:
        try:
            self._pin.write(on != self.config.active_low, cause)
        except PinError:
            raise
        except Exception as exc:
            raise PinError(f"{self.name}: writing GPIO pin {self._pin.number} failed: {exc!r}") from exc

    def _report(self) -> None:
        """Tell the listener the newest level until nothing is left to tell; one thread at a time, no lock held."""
        while True:
            with self._lock:
                if self._reporting or not self._unreported:
                    return
                self._reporting, self._unreported, level = True, False, self._level
            try:
                if self._on_level is not None:
                    self._on_level(self, level)
            except Exception:  # the pin has changed either way: the command's result must still say so
                log.exception("%s: could not report level %s", self.name, state_name(level))
            finally:
                with self._lock:
                    self._reporting = False
