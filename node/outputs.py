"""Outputs: an LED (or relay) on one pin, with on/off/toggle, a cancellable blink and, on a PWM pin, brightness
with cancellable transitions.

An output keeps two things apart: its *state* (what the user asked for: ON or
OFF, and the brightness ON means) and its *level* (what the pin shows right
now, 0 to 255). A blink or a transition changes the level on a thread of its
own; any newer command cancels it at once, without waiting for the pattern's
current phase. A blink blinks at the output's brightness and puts the state
back when it ends; a transition moves the level to the new state's.

The pin is written first and the output's record changed only when the write
succeeded, so the state never claims a level the pin did not reach. Changes
are reported to the listener outside the lock (it publishes over MQTT), one
report at a time, as the fields that changed since the last report (`state`,
`effect`, and `brightness` on a PWM output), always the newest values, so the
retained topics end as what the pin shows even when a pattern and a command
race.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from node.config import BlinkPattern, OutputConfig
from node.pins import Pin, PinError

log = logging.getLogger(__name__)

FULL = 255
FADE_STEP = 0.02  # seconds between the steps of a transition (at most one step per brightness unit)
NO_EFFECT = "off"  # Home Assistant's word for a light without an effect
BLINK = "blink"

Listener = Callable[["Output", dict[str, str]], None]


def state_name(on: bool) -> str:
    return "ON" if on else "OFF"


class Output:
    def __init__(self, name: str, pin: Pin, config: OutputConfig, on_change: Listener | None = None) -> None:
        self.name = name
        self.config = config
        self._pin = pin
        self._on_change = on_change
        self._lock = threading.Lock()
        self._cancel: threading.Event | None = None
        self._effect = NO_EFFECT
        self._state = config.safe_state == "ON"
        self._brightness = FULL  # what ON shows; kept while OFF, so ON restores it
        self._write(self._target(), None)
        self._level = self._target()
        self._reported = self._snapshot()  # what the listener was last told (all of it again by report())
        self._reporting = False  # a thread is telling the listener (outside the lock)

    @property
    def state(self) -> str:
        return state_name(self._state)

    @property
    def brightness(self) -> int:
        """The brightness ON shows (255 on a GPIO output)."""
        return self._brightness

    @property
    def level(self) -> str:
        """What the output shows now (differs from `state` during a blink)."""
        return state_name(self._level > 0)

    @property
    def blinking(self) -> bool:
        return self._effect == BLINK

    @property
    def changing(self) -> bool:
        """A blink or a transition is running."""
        return self._cancel is not None

    def set(self, state: str | None, cause: str | None = None, brightness: int | None = None,
            transition: float | None = None) -> str:
        """Apply ON, OFF or TOGGLE (relative to the state, not a blink's level) and on a PWM output a brightness
        (0 turns it off), at once or over `transition` seconds; return the new state.

        Raises PinError, with the output unchanged but for a cancelled pattern, when the pin cannot be written.
        """
        try:
            with self._lock:
                self._stop_pattern()
                if state == "TOGGLE":
                    on = not self._state
                elif state is not None:
                    on = state == "ON"
                else:
                    on = True
                if brightness == 0:
                    on = False
                setting = brightness or self._brightness
                target = setting if on else 0
                if transition and target != self._level:
                    self._state, self._brightness = on, setting
                    self._start(self._run_fade, self._level, target, transition, cause)
                else:
                    self._show(target, cause)
                    self._state, self._brightness = on, setting
                return self.state
        finally:
            self._report()

    def blink(self, pattern: BlinkPattern, cause: str | None = None) -> None:
        """Start `pattern` in the background at the output's brightness; the state is restored when it ends."""
        with self._lock:
            self._stop_pattern()
            self._effect = BLINK
            self._start(self._run_blink, pattern, cause)
        self._report()

    def safe(self) -> str:
        """Stop any pattern and go to the configured safe state."""
        return self.set(self.config.safe_state)

    def report(self) -> None:
        """Tell the listener everything again (after a reconnect), in order with the changes."""
        with self._lock:
            self._reported = {}
        self._report()

    def _target(self) -> int:
        return self._brightness if self._state else 0

    def _start(self, pattern: Callable[..., None], *args: object) -> None:
        # Called with the lock held.
        cancel = self._cancel = threading.Event()
        threading.Thread(target=self._guarded, args=(pattern, cancel, *args), name=f"pattern-{self.name}",
                         daemon=True).start()

    def _guarded(self, pattern: Callable[..., None], cancel: threading.Event, *args: object) -> None:
        cause = args[-1]
        try:
            pattern(cancel, *args)
            if not cancel.is_set():
                log.info("%s: %s of command %s ended", self.name, "blink" if self.blinking else "transition", cause)
            self._end_pattern(cancel, cause)  # type: ignore[arg-type]
        except Exception:
            log.exception("%s of %s (command %s) stopped by an error; restoring %s", self._effect, self.name, cause,
                          self.state)
            try:
                self._end_pattern(cancel, cause)  # type: ignore[arg-type]
            except PinError as exc:
                log.error("%s: could not restore %s after the failed pattern: %s", self.name, self.state, exc)

    def _step(self, cancel: threading.Event, level: int, cause: str | None) -> bool:
        """Show `level` unless cancelled (checked under the lock, so never after a newer command); False if so."""
        with self._lock:
            if cancel.is_set():
                return False
            self._show(level, cause)
        self._report()
        return True

    def _run_blink(self, cancel: threading.Event, pattern: BlinkPattern, cause: str | None) -> None:
        for _ in range(pattern.count):
            for level, seconds in ((self._brightness, pattern.on_time), (0, pattern.off_time)):
                if not self._step(cancel, level, cause) or cancel.wait(seconds):
                    return

    def _run_fade(self, cancel: threading.Event, start: int, target: int, seconds: float, cause: str | None) -> None:
        steps = max(1, min(abs(target - start), round(seconds / FADE_STEP)))
        began = time.monotonic()
        for i in range(1, steps + 1):
            if cancel.wait(max(0.0, began + seconds * i / steps - time.monotonic())):
                return
            if not self._step(cancel, round(start + (target - start) * i / steps), cause):
                return

    def _end_pattern(self, cancel: threading.Event, cause: str | None) -> None:
        try:
            with self._lock:
                if cancel.is_set():
                    return
                self._cancel, self._effect = None, NO_EFFECT
                self._show(self._target(), cause)
        finally:
            self._report()

    def _stop_pattern(self) -> None:
        # Called with the lock held; the pattern thread checks the event under
        # the same lock before every write, so it never writes after this.
        if self._cancel is not None:
            self._cancel.set()
            self._cancel = None
        self._effect = NO_EFFECT

    def _show(self, level: int, cause: str | None) -> None:
        # Called with the lock held.
        if level != self._level:
            self._write(level, cause)
            self._level = level

    def _write(self, level: int, cause: str | None) -> None:
        if self.config.pwm:
            duty = level / FULL
            value: float = 1.0 - duty if self.config.active_low else duty
        else:
            value = 1 if (level > 0) != self.config.active_low else 0
        try:
            self._pin.write(value, cause)
        except PinError:
            raise
        except Exception as exc:
            kind = "PWM" if self.config.pwm else "GPIO"
            raise PinError(f"{self.name}: writing {kind} pin {self._pin.number} failed: {exc!r}") from exc

    def _snapshot(self) -> dict[str, str]:
        # Called with the lock held.
        shown = {"state": state_name(self._level > 0), "effect": self._effect}
        return {**shown, "brightness": str(self._brightness)} if self.config.pwm else shown

    def _report(self) -> None:
        """Tell the listener what changed until nothing is left to tell; one thread at a time, no lock held."""
        while True:
            with self._lock:
                changes = {k: v for k, v in self._snapshot().items() if self._reported.get(k) != v}
                if self._reporting or not changes:
                    return
                self._reporting = True
                self._reported.update(changes)
            try:
                if self._on_change is not None:
                    self._on_change(self, changes)
            except Exception:  # the pin has changed either way: the command's result must still say so
                log.exception("%s: could not report %s", self.name, changes)
            finally:
                with self._lock:
                    self._reporting = False
