"""The three pin backends as a test sees a board: a factory for the node, the levels and duties its outputs showed,
a hand on its inputs, and a way to make a pin's writes fail.

sim records its own changes; mraa runs on the stand-in mraa module; gpiod runs
on the stand-in gpiod 2.x bindings (testkit/standins/pinlibs/gpiod) with a chip laid out
as a Raspberry Pi 5's gpiochip0, and PWM on a stand-in sysfs PWM tree.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

import node.pins.sysfs_pwm
from node.pins import PinFactory
from node.pins.backends import make_factory
from node.pins.sim import SimFactory, SimInputPin, SimPin
from testkit.standins import PI5_LINES
from testkit.standins.sysfs_pwm import PwmTree

BACKENDS = ("sim", "mraa", "gpiod")


Loader = Callable[[str], ModuleType]


def _changes(values: list[float]) -> list[float]:
    """The values without repeats, from an output that starts at 0."""
    shown: list[float] = []
    for value in values:
        if value != (shown[-1] if shown else 0):
            shown.append(value)
    return shown


class Board:
    """One backend with its hardware (or stand-in) under a node; `wait` waits for what the outputs show."""

    name = ""
    pwm_keys = ""  # what a PWM output needs in topics.yaml on this backend

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.factory: PinFactory

    def _tell(self, *_: object) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait(self, what: Callable[[], bool], timeout: float = 10.0) -> None:
        with self._changed:
            assert self._changed.wait_for(what, timeout), "the pins did not get there"

    def levels(self, pin: int) -> list[float]:
        raise NotImplementedError

    def duties(self, pin: int) -> list[float]:
        raise NotImplementedError

    def drive(self, pin: int, level: int) -> None:
        raise NotImplementedError

    def fail(self, pin: int, failing: bool) -> None:
        raise NotImplementedError


class SimBoard(Board):
    name = "sim"

    def __init__(self) -> None:
        super().__init__()
        self.sim = SimFactory(listeners=[self._tell])
        self.factory = self.sim

    def levels(self, pin: int) -> list[float]:
        return _changes([c.value for c in self.sim.history if c.pin == pin])

    def duties(self, pin: int) -> list[float]:
        return _changes([c.duty for c in self.sim.history if c.pin == pin and c.duty is not None])

    def drive(self, pin: int, level: int) -> None:
        line = self.sim.input(pin, "up")
        assert isinstance(line, SimInputPin)
        line.drive(level)

    def fail(self, pin: int, failing: bool) -> None:
        output = self.sim._pins[pin]
        assert isinstance(output, SimPin)
        output.fault = OSError(errno.EIO, "Input/output error") if failing else None


class MraaBoard(Board):
    name = "mraa"

    def __init__(self, mraa: ModuleType) -> None:
        super().__init__()
        self.mraa = mraa
        mraa.reset()
        mraa.listeners.append(self._tell)
        self.factory = make_factory("mraa")

    def levels(self, pin: int) -> list[float]:
        return _changes([value for p, value in self.mraa.writes if p == pin])

    def duties(self, pin: int) -> list[float]:
        return _changes([round(duty, 4) for p, duty in self.mraa.duties if p == pin])

    def drive(self, pin: int, level: int) -> None:
        self.mraa.drive(pin, level)

    def fail(self, pin: int, failing: bool) -> None:
        if failing:
            self.mraa.faults[pin] = self.mraa.ERROR_INVALID_HANDLE
        else:
            self.mraa.faults.pop(pin, None)


class GpiodBoard(Board):
    """gpiochip0 as on a Raspberry Pi 5, and pwmchip0 with 4 channels; PWM outputs use channel 1."""

    name = "gpiod"
    pwm_keys = ", pwm_chip: 0, pwm_channel: 1"

    def __init__(self, gpiod: ModuleType, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.kernel = gpiod._kernel
        self.kernel.reset()
        self.kernel.listeners.append(self._tell)
        (root / "dev").mkdir()
        self.chip = self.kernel.make_chip(root / "dev" / "gpiochip0", "pinctrl-rp1", PI5_LINES)
        self.pwm = PwmTree(root / "pwm", {0: 4})
        self.pwm.listeners.append(self._tell)
        monkeypatch.setattr(node.pins.sysfs_pwm, "open", self.pwm.open, raising=False)
        self.factory = make_factory("gpiod", self.chip, self.pwm.root)

    def levels(self, pin: int) -> list[float]:
        return _changes([level for chip, offset, level, _ in self.kernel.history
                         if (chip, offset) == (str(self.chip), pin)])

    def duties(self, pin: int) -> list[float]:
        return _changes(self.pwm.duties(0, 1))

    def drive(self, pin: int, level: int) -> None:
        self.kernel.drive(self.chip, pin, level)

    def fail(self, pin: int, failing: bool) -> None:
        self.kernel.fail(self.chip, pin, OSError(errno.EIO, "Input/output error") if failing else None)
