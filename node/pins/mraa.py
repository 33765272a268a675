"""mraa pins for the Intel Edison; mraa is imported only when this backend is chosen."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from node.pins import Pin, PinError, PinFactory


def mraa_available() -> bool:
    return importlib.util.find_spec("mraa") is not None


def _import_mraa() -> ModuleType:
    try:
        return importlib.import_module("mraa")
    except ImportError as exc:
        raise PinError(f"--pins mraa needs the mraa Python module (part of the Edison image): {exc}") from None


class MraaPin(Pin):
    def __init__(self, number: int, mraa: ModuleType) -> None:
        super().__init__(number)
        self._mraa = mraa
        try:
            self._gpio = mraa.Gpio(number)
        except ValueError as exc:  # mraa raises ValueError when it cannot initialise the pin
            raise PinError(f"mraa refused GPIO pin {number}: {exc}") from None
        self._check(self._gpio.dir(mraa.DIR_OUT), "set it as an output")

    def _check(self, result: int, doing: str) -> None:
        if result != self._mraa.SUCCESS:
            raise PinError(f"mraa could not {doing} on GPIO pin {self.number} (mraa result {result})")

    def write(self, level: int, cause: str | None = None) -> None:
        try:
            result = self._gpio.write(1 if level else 0)
        except Exception as exc:  # the SWIG binding raises where the C library reports an error
            raise PinError(f"mraa could not write {level} on GPIO pin {self.number}: {exc}") from exc
        self._check(result, f"write {level}")


class MraaFactory(PinFactory):
    def __init__(self) -> None:
        self._mraa = _import_mraa()

    def pin(self, number: int) -> MraaPin:
        return MraaPin(number, self._mraa)
