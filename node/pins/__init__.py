"""Pin backends, in the manner of gpiozero's pin factories.

Outputs and inputs hold pins made by a `PinFactory`; the factory is the only
thing that knows the hardware. `sim` records every level change for tests and
the terminal, `mraa` drives an Edison, `auto` takes mraa where it imports.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

BACKENDS = ("auto", "mraa", "sim")
PULLS = ("up", "down", "none")


class PinError(Exception):
    """A pin cannot be set up or driven; raised at start so the node refuses to run."""


class Pin(ABC):
    """One line driven by the node: a GPIO output (`write` takes the level 0 or 1) or a PWM output (the duty cycle
    0.0 to 1.0).

    `cause` is the id of the command behind the change (None for the safe
    state at start and stop): simulated pins record it, hardware ignores it.
    A write that fails raises PinError.
    """

    def __init__(self, number: int) -> None:
        self.number = number

    @abstractmethod
    def write(self, level: float, cause: str | None = None) -> None: ...


class InputPin(ABC):
    """One GPIO line read by the node (a button, a contact), with its pull resistor set."""

    def __init__(self, number: int) -> None:
        self.number = number

    @abstractmethod
    def read(self) -> int:
        """The electrical level now, 0 or 1; PinError when it cannot be read."""

    @abstractmethod
    def watch(self, on_edge: Callable[[], None]) -> bool:
        """Call `on_edge()` (from a thread of the backend) after every edge; False when the line has no interrupts,
        and then the caller polls `read()`."""

    def close(self) -> None:  # noqa: B027 - optional: most pins hold nothing
        """Stop watching."""


class PinFactory(ABC):
    @abstractmethod
    def pin(self, number: int) -> Pin:
        """Set `number` up as a GPIO output, or raise PinError saying why not."""

    @abstractmethod
    def pwm(self, number: int, period: float) -> Pin:
        """Set `number` up as a PWM output with `period` seconds, or raise PinError."""

    @abstractmethod
    def input(self, number: int, pull: str) -> InputPin:
        """Set `number` up as an input with its pull resistor `up`, `down` or `none`, or raise PinError."""

    def close(self) -> None:  # noqa: B027 - optional: most factories hold nothing
        """Release what the factory holds (files, handles)."""


def make_factory(backend: str, **sim_options: Any) -> PinFactory:
    """The factory for `--pins BACKEND`; `sim_options` go to SimFactory."""
    from node.pins.sim import SimFactory

    if backend == "sim":
        return SimFactory(**sim_options)
    from node.pins.mraa import MraaFactory, mraa_available

    if backend == "mraa":
        return MraaFactory()
    if backend == "auto":
        if mraa_available():
            return MraaFactory()
        log.warning("mraa is not importable: using simulated pins (--pins sim); no hardware will change")
        return SimFactory(**sim_options)
    raise PinError(f"unknown pin backend {backend!r} (expected one of {', '.join(BACKENDS)})")
