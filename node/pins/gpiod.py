"""Pins on the Linux GPIO character device through the gpiod 2.x bindings, PWM through the kernel's sysfs class.

gpiod is imported only when this backend is chosen. Each line is requested
once, with the consumer `edison-node`, and held until `close`: an output at
its inactive level (the kernel knows it is active-low, so the line comes up
off, and `gpioinfo` shows it), an input with edge detection on both edges,
its bias and the kernel's debounce (software debounce where the chip has
none). An input's request has a file descriptor that becomes readable when
an edge is queued: the node's input loop waits on it, so no thread polls.
Pins speak electrical levels to the node, so the active-low the kernel knows
is turned back here.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from node.pins import InputPin, Pin, PinError, PinFactory, PinId, PwmChannel
from node.pins.sysfs_pwm import SysfsPwm

CONSUMER = "edison-node"
DEFAULT_CHIP = Path("/dev/gpiochip0")
DEFAULT_PWM_SYSFS = Path("/sys/class/pwm")


def gpiod_chip_available(chip: Path) -> bool:
    """The gpiod module imports and `chip` is a GPIO chip: what `--pins auto` needs to choose gpiod."""
    if importlib.util.find_spec("gpiod") is None:
        return False
    return bool(_import_gpiod().is_gpiochip_device(str(chip)))


def _import_gpiod() -> ModuleType:
    try:
        gpiod = importlib.import_module("gpiod")
    except ImportError as exc:
        raise PinError(f"--pins gpiod needs the gpiod module, 2.1 or newer (pip install 'edison-mqtt[gpiod]'): "
                       f"{exc}") from None
    if not hasattr(gpiod, "request_lines"):
        raise PinError(f"--pins gpiod needs gpiod 2.1 or newer; {getattr(gpiod, '__file__', 'gpiod')} is the older "
                       "1.x API (Debian's python3-libgpiod): pip install 'edison-mqtt[gpiod]'")
    return gpiod


class _Line:
    """One requested line: its request, offset and polarity, and how to name it in an error."""

    def __init__(self, request: Any, offset: int, active_low: bool, label: str, gpiod: ModuleType) -> None:
        self.request, self.offset, self.active_low, self.label = request, offset, active_low, label
        self._active, self._inactive = gpiod.line.Value.ACTIVE, gpiod.line.Value.INACTIVE

    def electrical(self, value: Any) -> int:
        return 1 if (value == self._active) != self.active_low else 0

    def logical(self, level: float) -> Any:
        return self._active if bool(level) != self.active_low else self._inactive

    def release(self) -> None:
        self.request.release()


class GpiodPin(Pin):
    def __init__(self, number: PinId, line: _Line) -> None:
        super().__init__(number)
        self._line = line

    def write(self, level: float, cause: str | None = None) -> None:
        try:
            self._line.request.set_value(self._line.offset, self._line.logical(level))
        except OSError as exc:
            raise PinError(f"could not write {int(bool(level))} to {self._line.label}: {exc}") from exc


class GpiodPwmPin(Pin):
    """A header pin driven by a kernel PWM channel; the pin itself is not requested as a GPIO line."""

    def __init__(self, number: PinId, pwm: SysfsPwm) -> None:
        super().__init__(number)
        self._pwm = pwm

    def write(self, level: float, cause: str | None = None) -> None:
        self._pwm.write(float(level))


class GpiodInputPin(InputPin):
    """An input line; edges are read from its request's file descriptor with the kernel's timestamps."""

    def __init__(self, number: PinId, line: _Line, debounce: float, gpiod: ModuleType) -> None:
        super().__init__(number)
        self._line = line
        self._debounce = debounce
        self._rising = gpiod.EdgeEvent.Type.RISING_EDGE

    def read(self) -> int:
        try:
            return self._line.electrical(self._line.request.get_value(self._line.offset))
        except OSError as exc:
            raise PinError(f"could not read {self._line.label}: {exc}") from exc

    def fileno(self) -> int:
        return int(self._line.request.fd)

    def edges(self) -> list[tuple[int, float]]:
        # An event's timestamp is CLOCK_MONOTONIC, time.monotonic()'s clock. The kernel reports a debounced edge
        # once the level has held for the debounce period: its level changed that much earlier.
        try:
            events = self._line.request.read_edge_events()
        except OSError as exc:
            raise PinError(f"could not read the edges of {self._line.label}: {exc}") from exc
        # The kernel reports edges as the line's logical level goes, so active-low turns them.
        return [(int((event.event_type == self._rising) != self._line.active_low),
                 event.timestamp_ns / 1e9 - self._debounce) for event in events]

    def close(self) -> None:
        self._line.release()


class GpiodFactory(PinFactory):
    """Lines on `chip` by offset, or on any chip beside it by name; PWM channels under `pwm_sysfs`."""

    def __init__(self, chip: Path = DEFAULT_CHIP, pwm_sysfs: Path = DEFAULT_PWM_SYSFS) -> None:
        self._gpiod = _import_gpiod()
        self._chip, self._pwm_sysfs = Path(chip), Path(pwm_sysfs)
        if not self._gpiod.is_gpiochip_device(str(self._chip)):
            raise PinError(f"--gpio-chip {self._chip}: not a GPIO chip (gpiodetect lists them)")
        self._lines: dict[tuple[Path, int], tuple[PinId, _Line]] = {}
        self._pwms: dict[tuple[int, int], tuple[PinId, SysfsPwm]] = {}

    def pin(self, number: PinId, active_low: bool = False) -> GpiodPin:
        line = self._request(number, active_low, self._gpiod.LineSettings(
            direction=self._gpiod.line.Direction.OUTPUT, active_low=active_low,
            output_value=self._gpiod.line.Value.INACTIVE))
        return GpiodPin(number, line)

    def pwm(self, number: PinId, period: float, channel: PwmChannel | None = None) -> GpiodPwmPin:
        if channel is None:
            raise PinError(f"pin {number!r}: a PWM output under --pins gpiod names its kernel PWM channel "
                           "(pwm_chip and pwm_channel in topics.yaml, as in pwmchip0/pwm1)")
        key = (channel.chip, channel.channel)
        if key in self._pwms:
            raise PinError(f"pwmchip{channel.chip}/pwm{channel.channel} is already used by pin "
                           f"{self._pwms[key][0]!r}")
        pwm = SysfsPwm(self._pwm_sysfs, channel.chip, channel.channel, period)
        self._pwms[key] = (number, pwm)
        return GpiodPwmPin(number, pwm)

    def input(self, number: PinId, pull: str, active_low: bool = False, debounce: float = 0.0) -> GpiodInputPin:
        line = self._gpiod.line
        bias = {"up": line.Bias.PULL_UP, "down": line.Bias.PULL_DOWN, "none": line.Bias.DISABLED}[pull]
        settings = self._gpiod.LineSettings(direction=line.Direction.INPUT, edge_detection=line.Edge.BOTH, bias=bias,
                                            active_low=active_low, debounce_period=timedelta(seconds=debounce))
        return GpiodInputPin(number, self._request(number, active_low, settings), debounce, self._gpiod)

    def close(self) -> None:
        """Release every line and unexport the PWM channels we exported; the first failure is raised at the end."""
        failures: list[str] = []
        for _, held in list(self._lines.values()):
            held.release()
        for _, pwm in list(self._pwms.values()):
            try:
                pwm.close()
            except PinError as exc:
                failures.append(str(exc))
        self._lines.clear()
        self._pwms.clear()
        if failures:
            raise PinError("; ".join(failures))

    def _request(self, number: PinId, active_low: bool, settings: Any) -> _Line:
        chip, offset, label = self._locate(number)
        if (chip, offset) in self._lines:
            raise PinError(f"{label} is already used by pin {self._lines[chip, offset][0]!r}")
        try:
            request = self._gpiod.request_lines(str(chip), consumer=CONSUMER, config={offset: settings})
        except OSError as exc:
            raise PinError(f"{label}: {self._refusal(chip, offset, exc)}") from None
        line = _Line(request, offset, active_low, label, self._gpiod)
        self._lines[chip, offset] = (number, line)
        return line

    def _refusal(self, chip: Path, offset: int, exc: OSError) -> str:
        if exc.errno == errno.EBUSY:
            with self._open(chip) as handle:
                holder = handle.get_line_info(offset).consumer or "another program"
            return f"the line is held by {holder!r}: stop it (gpioinfo shows who holds which line) or choose another"
        if isinstance(exc, PermissionError):
            return f"{exc.strerror}: add the user to the gpio group (udev gives it /dev/gpiochip*)"
        return f"the kernel refused the request: {exc}"

    def _locate(self, number: PinId) -> tuple[Path, int, str]:
        """(chip, offset, label): an offset on --gpio-chip, or the one line so named on the chips beside it."""
        if isinstance(number, int):
            with self._open(self._chip) as handle:
                count = handle.get_info().num_lines
            if number >= count:
                raise PinError(f"pin {number}: {self._chip} has lines 0 to {count - 1}")
            return self._chip, number, f"pin {number} (line {number} of {self._chip})"
        found = [(chip, info.offset) for chip in self._chips() for info in self._infos(chip) if info.name == number]
        if not found:
            raise PinError(f"pin {number!r}: no line of that name on {', '.join(map(str, self._chips()))} "
                           "(gpioinfo lists the names)")
        if len(found) > 1:
            where = ", ".join(f"line {offset} of {chip}" for chip, offset in found)
            raise PinError(f"pin {number!r}: several lines have that name ({where}): use the offset and --gpio-chip")
        chip, offset = found[0]
        return chip, offset, f"pin {number!r} (line {offset} of {chip})"

    def _chips(self) -> list[Path]:
        beside = sorted(self._chip.parent.glob("gpiochip*"), key=lambda p: (len(p.name), p.name))
        return [chip for chip in beside if self._gpiod.is_gpiochip_device(str(chip))]

    def _infos(self, chip: Path) -> list[Any]:
        with self._open(chip) as handle:
            return [handle.get_line_info(offset) for offset in range(handle.get_info().num_lines)]

    def _open(self, chip: Path) -> Any:
        try:
            return self._gpiod.Chip(str(chip))
        except OSError as exc:
            hint = ": add the user to the gpio group" if isinstance(exc, PermissionError) else ""
            raise PinError(f"cannot open {chip}: {exc.strerror or exc}{hint}") from None
