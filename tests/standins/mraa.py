"""Stand-in for libmraa's Python module (SWIG binding), following its documented API.

Only what the node uses, with mraa's own behaviour: `Gpio(pin)` raises
ValueError("Invalid GPIO pin specified") when the pin cannot be initialised
(the C++ constructor throws std::invalid_argument, which SWIG maps to
ValueError); `dir()` and `write()` return an mraa Result code, SUCCESS (0) or
an error such as ERROR_INVALID_PARAMETER, instead of raising.
Pins usable here: EDISON_GPIO_PINS. Writes are recorded in `writes`.
"""

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

DIR_OUT = 0
DIR_IN = 1
DIR_OUT_HIGH = 2
DIR_OUT_LOW = 3

# mraa pin numbers on the Edison Arduino/mini breakout that can be GPIO (20 is the reference LED).
EDISON_GPIO_PINS = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 20, 21, 31, 32, 33, 36, 37, 38,
                              45, 46, 47, 48})

writes: list[tuple[int, int]] = []


class Gpio:
    def __init__(self, pin: int, owner: bool = True, raw: bool = False) -> None:
        if pin not in EDISON_GPIO_PINS:
            raise ValueError("Invalid GPIO pin specified")
        self._pin = pin
        self._dir = DIR_IN

    def dir(self, direction: int) -> int:
        if direction not in (DIR_OUT, DIR_IN, DIR_OUT_HIGH, DIR_OUT_LOW):
            return ERROR_INVALID_PARAMETER
        self._dir = direction
        return SUCCESS

    def write(self, value: int) -> int:
        if self._dir == DIR_IN:
            return ERROR_INVALID_RESOURCE
        writes.append((self._pin, value))
        return SUCCESS

    def getPin(self, raw: bool = False) -> int:  # noqa: N802 - mraa's name
        return self._pin
