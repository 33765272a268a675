"""The backend `--pins` names: sim, mraa, gpiod, or auto (mraa where it imports, else gpiod where a chip exists)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from node.pins import PinError, PinFactory
from node.pins.gpiod import DEFAULT_CHIP, DEFAULT_PWM_SYSFS, GpiodFactory, gpiod_chip_available
from node.pins.mraa import MraaFactory, mraa_available
from node.pins.sim import SimFactory

log = logging.getLogger(__name__)

BACKENDS = ("auto", "gpiod", "mraa", "sim")


def make_factory(backend: str, gpio_chip: Path = DEFAULT_CHIP, pwm_sysfs: Path = DEFAULT_PWM_SYSFS,
                 **sim_options: Any) -> PinFactory:
    """The factory for `--pins BACKEND`; `sim_options` go to SimFactory."""
    if backend == "auto":
        backend = choose(gpio_chip)
        log.info("--pins auto: using %s", backend)
    if backend == "sim":
        return SimFactory(**sim_options)
    if backend == "mraa":
        return MraaFactory()
    if backend == "gpiod":
        return GpiodFactory(gpio_chip, pwm_sysfs)
    raise PinError(f"unknown pin backend {backend!r} (expected one of {', '.join(BACKENDS)})")


def choose(gpio_chip: Path) -> str:
    """mraa where it imports (the Edison image), else gpiod where `gpio_chip` is a GPIO chip, else PinError."""
    if mraa_available():
        return "mraa"
    if gpiod_chip_available(gpio_chip):
        return "gpiod"
    raise PinError(f"--pins auto found neither mraa nor a GPIO chip at {gpio_chip} (with the gpiod module): "
                   "choose --gpio-chip, or --pins sim for simulated pins")
