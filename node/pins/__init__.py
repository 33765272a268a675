"""Pin backends, in the manner of gpiozero's pin factories.

Outputs hold a `Pin` made by a `PinFactory`; the factory is the only thing that
knows the hardware. `sim` records every level change for tests and the
terminal, `mraa` drives an Edison, `auto` takes mraa where it imports.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

log = logging.getLogger(__name__)

BACKENDS = ("auto", "mraa", "sim")


class PinError(Exception):
    """A pin cannot be set up or driven; raised at start so the node refuses to run."""


class Pin(ABC):
    """One GPIO line configured as an output; `write` takes the electrical level 0 or 1.

    `cause` is the id of the command behind the change (None for the safe
    state at start and stop): simulated pins record it, hardware ignores it.
    A write that fails raises PinError.
    """

    def __init__(self, number: int) -> None:
        self.number = number

    @abstractmethod
    def write(self, level: int, cause: str | None = None) -> None: ...


class PinFactory(ABC):
    @abstractmethod
    def pin(self, number: int) -> Pin:
        """Set `number` up as an output, or raise PinError saying why not."""

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
