"""Pins, in the manner of gpiozero's pin factories: what every backend offers the node's outputs and inputs.

Outputs and inputs hold pins made by a `PinFactory`; the factory is the only
thing that knows the hardware. The backends live beside this module (`sim`
records every level change for tests and the terminal, `mraa` drives an
Edison, `gpiod` any board with the Linux GPIO character device) and import it;
`node.pins.backends` chooses one for `--pins`. Pins speak electrical levels:
active-low is the outputs' and inputs' business, as in gpiozero.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

PULLS = ("up", "down", "none")

PinId = int | str  # a pin number or line offset, or a line name as the board names it (gpiod only)


@dataclass(frozen=True)
class PwmChannel:
    """A kernel PWM channel, `pwmchip<chip>/pwm<channel>` in sysfs (gpiod backend only)."""

    chip: int
    channel: int


class PinError(Exception):
    """A pin cannot be set up or driven; raised at start so the node refuses to run."""


class Pin(ABC):
    """One line driven by the node: a GPIO output (`write` takes the level 0 or 1) or a PWM output (the duty cycle
    0.0 to 1.0).

    `cause` is the id of the command behind the change (None for the safe
    state at start and stop): simulated pins record it, hardware ignores it.
    A write that fails raises PinError.
    """

    def __init__(self, number: PinId) -> None:
        self.number = number

    @abstractmethod
    def write(self, level: float, cause: str | None = None) -> None: ...


class InputPin(ABC):
    """One GPIO line read by the node (a button, a contact), with its pull resistor set."""

    def __init__(self, number: PinId) -> None:
        self.number = number

    @abstractmethod
    def read(self) -> int:
        """The electrical level now, 0 or 1; PinError when it cannot be read."""

    def fileno(self) -> int | None:
        """A file descriptor that becomes readable when edges are queued (a kernel line request), for the caller's
        event loop; None when the backend tells of edges through `watch` instead."""
        return None

    def edges(self) -> list[tuple[int, float]]:
        """The queued edges as (level, time.monotonic() of the edge); called when `fileno()` is readable."""
        raise NotImplementedError(f"{type(self).__name__} has no file descriptor for edges")

    def watch(self, on_edge: Callable[[], None]) -> bool:
        """Call `on_edge()` (from a thread of the backend) after every edge; False when the line has no interrupts,
        and then the caller polls `read()`. Not called when `fileno()` gives a descriptor."""
        return False

    def close(self) -> None:  # noqa: B027 - optional: most pins hold nothing
        """Stop watching."""


class PinFactory(ABC):
    """Makes the node's pins; raises PinError at start, naming the pin, for anything the backend cannot do.

    `active_low` and `debounce` are what topics.yaml says of the line: a
    backend that can tell the kernel (gpiod) does, the others leave them to the
    node. `channel` is the kernel PWM channel of a PWM output, for the backends
    that drive PWM through the kernel (gpiod); the others refuse one.
    """

    @abstractmethod
    def pin(self, number: PinId, active_low: bool = False) -> Pin:
        """Set `number` up as a GPIO output, or raise PinError saying why not."""

    @abstractmethod
    def pwm(self, number: PinId, period: float, channel: PwmChannel | None = None) -> Pin:
        """Set `number` up as a PWM output with `period` seconds, or raise PinError."""

    @abstractmethod
    def input(self, number: PinId, pull: str, active_low: bool = False, debounce: float = 0.0) -> InputPin:
        """Set `number` up as an input with its pull resistor `up`, `down` or `none`, or raise PinError."""

    def close(self) -> None:  # noqa: B027 - optional: most factories hold nothing
        """Release what the factory holds (line requests, exported PWM channels, files)."""


def numbered(number: PinId, backend: str) -> int:
    """`number` for a backend that knows pins by number only; PinError for a line name."""
    if isinstance(number, str):
        raise PinError(f"pin {number!r} is a line name: --pins {backend} knows pins by number (line names need "
                       "--pins gpiod)")
    return number


def without_channel(channel: PwmChannel | None, backend: str) -> None:
    """PinError when topics.yaml names a kernel PWM channel for a backend that does not use one."""
    if channel is not None:
        raise PinError(f"pwm_chip and pwm_channel are for --pins gpiod (kernel PWM); --pins {backend} does not use "
                       "them: remove them")
