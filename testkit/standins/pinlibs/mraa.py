"""Stand-in for libmraa's Python module (SWIG binding), following its documented API (api/mraa/gpio.hpp, pwm.hpp).

Only what the node uses, with mraa's own behaviour: `Gpio(pin)` raises
ValueError("Invalid GPIO pin specified") and `Pwm(pin)` ValueError("Error
initialising PWM on pin") when the pin cannot be initialised (the C++
constructors throw std::invalid_argument, which SWIG maps to ValueError);
`dir()`, `mode()`, `isr()`, `write()` and `period()` return an mraa Result
code, SUCCESS (0) or an error such as ERROR_INVALID_PARAMETER, instead of
raising; `Gpio.read()` returns the level, or -1 on failure.

`isr(edge, func, args)` calls `func(args)` from a thread of mraa's own after
each matching edge (mraa polls the pin's sysfs value file on a thread per
pin). A platform without interrupts answers ERROR_FEATURE_NOT_IMPLEMENTED:
set INTERRUPTS to False for that. `drive(pin, level)` is the test's hand on
the wire: it moves an input's level as a switch would.

Pins usable here: EDISON_GPIO_PINS, and for PWM EDISON_PWM_PINS. Writes are
recorded in `writes` (GPIO) and `duties` (PWM), and each `listeners` function
called after one; `faults[pin]` is the Result code the pin's writes answer
instead (a failing bus).
"""

import threading
from collections.abc import Callable

SUCCESS = 0
ERROR_FEATURE_NOT_IMPLEMENTED = 1
ERROR_FEATURE_NOT_SUPPORTED = 2
ERROR_INVALID_VERBOSITY_LEVEL = 3
ERROR_INVALID_PARAMETER = 4
ERROR_INVALID_HANDLE = 5
ERROR_NO_RESOURCES = 6
ERROR_INVALID_RESOURCE = 7
ERROR_INVALID_QUEUE_TYPE = 8
ERROR_NO_DATA_AVAILABLE = 9
ERROR_INVALID_PLATFORM = 10
ERROR_PLATFORM_NOT_INITIALISED = 11
ERROR_UNSPECIFIED = 99

MODE_STRONG = 0
MODE_PULLUP = 1
MODE_PULLDOWN = 2
MODE_HIZ = 3

EDGE_NONE = 0
EDGE_BOTH = 1
EDGE_RISING = 2
EDGE_FALLING = 3

DIR_OUT = 0
DIR_IN = 1
DIR_OUT_HIGH = 2
DIR_OUT_LOW = 3

# mraa pin numbers on the Edison Arduino/mini breakout that can be GPIO (20 is the reference LED).
EDISON_GPIO_PINS = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 20, 21, 31, 32, 33, 36, 37, 38,
                              45, 46, 47, 48})

# mraa pin numbers with a PWM channel on the Edison mini breakout (20 is PWM0, the reference LED's pin).
EDISON_PWM_PINS = frozenset({0, 14, 20, 21})
PWM_PERIOD_US = (1, 218453)  # what mraa's Edison platform accepts

INTERRUPTS = True  # False: the platform has no GPIO interrupts (isr answers ERROR_FEATURE_NOT_IMPLEMENTED)

writes: list[tuple[int, int]] = []
duties: list[tuple[int, float]] = []
listeners: list[Callable[[], None]] = []
faults: dict[int, int] = {}
_inputs: dict[int, "Gpio"] = {}


def reset() -> None:
    global INTERRUPTS
    INTERRUPTS = True
    writes.clear()
    duties.clear()
    listeners.clear()
    faults.clear()
    _inputs.clear()


def drive(pin: int, level: int) -> None:
    """Move the level on an input pin, as a switch or a sensor would; its isr runs on a thread of its own."""
    gpio = _inputs[pin]
    before, gpio._level = gpio._level, 1 if level else 0
    handler = gpio._isr
    if handler is None or before == gpio._level:
        return
    edge, func, args = handler
    if edge == EDGE_BOTH or (edge == EDGE_RISING) == bool(gpio._level):
        thread = threading.Thread(target=func, args=(args,), daemon=True)
        thread.start()
        thread.join()  # mraa's isr thread handles one edge at a time


def _tell() -> None:
    for listener in listeners:
        listener()


class Gpio:
    def __init__(self, pin: int, owner: bool = True, raw: bool = False) -> None:
        if pin not in EDISON_GPIO_PINS:
            raise ValueError("Invalid GPIO pin specified")
        self._pin = pin
        self._dir = DIR_IN
        self._mode = MODE_STRONG
        self._level = 0
        self._isr: tuple | None = None

    def dir(self, direction: int) -> int:
        if direction not in (DIR_OUT, DIR_IN, DIR_OUT_HIGH, DIR_OUT_LOW):
            return ERROR_INVALID_PARAMETER
        self._dir = direction
        if direction == DIR_IN:
            _inputs[self._pin] = self
        return SUCCESS

    def mode(self, mode: int) -> int:
        if mode not in (MODE_STRONG, MODE_PULLUP, MODE_PULLDOWN, MODE_HIZ):
            return ERROR_INVALID_PARAMETER
        self._mode = mode
        self._level = 1 if mode == MODE_PULLUP else 0  # an open switch reads what the pull gives
        return SUCCESS

    def read(self) -> int:
        return self._level

    def edge(self, mode: int) -> int:
        if mode not in (EDGE_NONE, EDGE_BOTH, EDGE_RISING, EDGE_FALLING):
            return ERROR_INVALID_PARAMETER
        return SUCCESS if INTERRUPTS or mode == EDGE_NONE else ERROR_FEATURE_NOT_IMPLEMENTED

    def isr(self, mode: int, func, args) -> int:
        if not INTERRUPTS:
            return ERROR_FEATURE_NOT_IMPLEMENTED
        if self._dir != DIR_IN or mode not in (EDGE_BOTH, EDGE_RISING, EDGE_FALLING):
            return ERROR_INVALID_PARAMETER
        self._isr = (mode, func, args)
        return SUCCESS

    def isrExit(self) -> int:  # noqa: N802 - mraa's name
        self._isr = None
        return SUCCESS

    def write(self, value: int) -> int:
        if self._dir == DIR_IN:
            return ERROR_INVALID_RESOURCE
        if self._pin in faults:
            return faults[self._pin]
        writes.append((self._pin, value))
        _tell()
        return SUCCESS

    def getPin(self, raw: bool = False) -> int:  # noqa: N802 - mraa's name
        return self._pin


class Pwm:
    def __init__(self, pin: int, owner: bool = True, chipid: int = -1) -> None:
        if pin not in EDISON_PWM_PINS:
            raise ValueError("Error initialising PWM on pin")
        self._pin = pin
        self._duty = 0.0
        self._period_us = 0
        self.enabled = False

    def period(self, period: float) -> int:
        return self.period_us(int(period * 1_000_000))

    def period_ms(self, ms: int) -> int:
        return self.period_us(ms * 1000)

    def period_us(self, us: int) -> int:
        if not PWM_PERIOD_US[0] <= us <= PWM_PERIOD_US[1]:
            return ERROR_INVALID_PARAMETER
        self._period_us = us
        return SUCCESS

    def write(self, percentage: float) -> int:
        self._duty = min(1.0, max(0.0, percentage))  # mraa clamps to 0.0..1.0
        duties.append((self._pin, self._duty))
        _tell()
        return SUCCESS

    def read(self) -> float:
        return self._duty

    def enable(self, enable: bool) -> int:
        self.enabled = bool(enable)
        return SUCCESS

    def max_period(self) -> int:
        return PWM_PERIOD_US[1]

    def min_period(self) -> int:
        return PWM_PERIOD_US[0]
