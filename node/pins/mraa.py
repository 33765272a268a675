"""mraa pins for the Intel Edison; mraa is imported only when this backend is chosen.

mraa reports most failures as a Result code instead of raising: every code is
checked, so a pin that cannot do what topics.yaml asks stops the node at start.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from types import ModuleType
from typing import Any

from node.pins import InputPin, Pin, PinError, PinFactory, PinId, PwmChannel, numbered, without_channel


def mraa_available() -> bool:
    return importlib.util.find_spec("mraa") is not None


def _import_mraa() -> ModuleType:
    try:
        return importlib.import_module("mraa")
    except ImportError as exc:
        raise PinError(f"--pins mraa needs the mraa Python module (part of the Edison image): {exc}") from None


class _Checked:
    number: PinId
    _mraa: ModuleType

    def _check(self, result: int, doing: str) -> None:
        if result != self._mraa.SUCCESS:
            raise PinError(f"mraa could not {doing} on pin {self.number} (mraa result {result})")

    def _call(self, method: Callable[..., int], doing: str, *args: Any) -> None:
        try:
            result = method(*args)
        except Exception as exc:  # the SWIG binding raises where the C library reports an error
            raise PinError(f"mraa could not {doing} on pin {self.number}: {exc}") from exc
        self._check(result, doing)


def _gpio(mraa: ModuleType, number: int) -> Any:
    try:
        return mraa.Gpio(number)
    except ValueError as exc:  # mraa raises ValueError when it cannot initialise the pin
        raise PinError(f"mraa refused GPIO pin {number}: {exc}") from None


class MraaPin(_Checked, Pin):
    def __init__(self, number: int, mraa: ModuleType) -> None:
        super().__init__(number)
        self._mraa = mraa
        self._gpio = _gpio(mraa, number)
        self._check(self._gpio.dir(mraa.DIR_OUT), "set it as an output")

    def write(self, level: float, cause: str | None = None) -> None:
        self._call(self._gpio.write, f"write {int(level)}", 1 if level else 0)


class MraaPwmPin(_Checked, Pin):
    """mraa's Pwm: period in seconds, then `write` of the duty cycle (0.0 to 1.0), enabled once."""

    def __init__(self, number: int, period: float, mraa: ModuleType) -> None:
        super().__init__(number)
        self._mraa = mraa
        try:
            self._pwm = mraa.Pwm(number)
        except ValueError as exc:
            raise PinError(f"mraa refused PWM on pin {number}: {exc}") from None
        self._call(self._pwm.period, f"set the PWM period to {period:g} s", period)
        self._call(self._pwm.write, "write duty 0", 0.0)
        self._call(self._pwm.enable, "enable PWM", True)

    def write(self, level: float, cause: str | None = None) -> None:
        self._call(self._pwm.write, f"write duty {level:.3f}", float(level))


class MraaInputPin(_Checked, InputPin):
    """mraa's Gpio as an input with its pull mode, and `isr` on both edges where the platform has interrupts."""

    def __init__(self, number: int, pull: str, mraa: ModuleType) -> None:
        super().__init__(number)
        self._mraa = mraa
        self._gpio = _gpio(mraa, number)
        self._watching = False
        self._check(self._gpio.dir(mraa.DIR_IN), "set it as an input")
        mode = {"up": mraa.MODE_PULLUP, "down": mraa.MODE_PULLDOWN, "none": mraa.MODE_HIZ}[pull]
        result = self._gpio.mode(mode)
        unsupported = (mraa.ERROR_FEATURE_NOT_IMPLEMENTED, mraa.ERROR_FEATURE_NOT_SUPPORTED)
        if pull == "none" and result in unsupported:
            return  # nothing to switch off on a platform without pull resistors
        if result in unsupported:
            raise PinError(f"mraa cannot set pull {pull} on pin {number} (mraa result {result}): "
                           "wire a resistor and set pull: none")
        self._check(result, f"set pull {pull}")

    def read(self) -> int:
        try:
            value = self._gpio.read()
        except Exception as exc:
            raise PinError(f"mraa could not read pin {self.number}: {exc}") from exc
        if value not in (0, 1):  # mraa returns -1 on failure
            raise PinError(f"mraa could not read pin {self.number} (got {value})")
        return int(value)

    def watch(self, on_edge: Callable[[], None]) -> bool:
        # mraa calls the function from a thread of its own with `args` (here the callable itself).
        result = self._gpio.isr(self._mraa.EDGE_BOTH, _call_edge, on_edge)
        self._watching = result == self._mraa.SUCCESS
        return self._watching

    def close(self) -> None:
        if self._watching:
            self._gpio.isrExit()
            self._watching = False


def _call_edge(on_edge: Callable[[], None]) -> None:
    on_edge()


class MraaFactory(PinFactory):
    def __init__(self) -> None:
        self._mraa = _import_mraa()

    def pin(self, number: PinId, active_low: bool = False) -> MraaPin:
        return MraaPin(numbered(number, "mraa"), self._mraa)

    def pwm(self, number: PinId, period: float, channel: PwmChannel | None = None) -> MraaPwmPin:
        without_channel(channel, "mraa")
        return MraaPwmPin(numbered(number, "mraa"), period, self._mraa)

    def input(self, number: PinId, pull: str, active_low: bool = False, debounce: float = 0.0) -> MraaInputPin:
        return MraaInputPin(numbered(number, "mraa"), pull, self._mraa)
