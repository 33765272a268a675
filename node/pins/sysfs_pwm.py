"""One channel of the kernel's PWM class in sysfs (`/sys/class/pwm/pwmchipN/pwmM`), as the kernel documents it.

The protocol is a handful of writes: the channel number to `export` (the
kernel makes `pwmM/`), `period` before `enable`, `duty_cycle` never above
`period` (both in nanoseconds; the kernel refuses anything else with EINVAL),
and `unexport` to give the channel back. python-periphery's PWM class speaks
it too, but always reads /sys/class/pwm (no other root for `--pwm-sysfs`),
unexports on close and garbage collection even a channel it did not export,
and writes a duty beyond a shortened period as it is: these few lines do
what the node needs instead.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path

from node.pins import PinError

UDEV_WAIT = 2.0  # seconds udev may take to hand a newly exported channel to the gpio group
UDEV_STEP = 0.05


def _write(path: Path, value: int) -> None:
    with open(path, "w") as attribute:
        attribute.write(f"{value}\n")


def _read(path: Path) -> int:
    with open(path) as attribute:
        return int(attribute.read().strip() or 0)


class SysfsPwm:
    """Exports the channel if no one has, sets the period and enables it at duty 0; `close` unexports it if we
    exported it."""

    def __init__(self, root: Path, chip: int, channel: int, period: float) -> None:
        self.name = f"{root}/pwmchip{chip}/pwm{channel}"
        chip_dir = root / f"pwmchip{chip}"
        self._chip_dir, self._channel = chip_dir, channel
        self._dir = chip_dir / f"pwm{channel}"
        self.exported = False
        if not chip_dir.is_dir():
            raise PinError(f"no PWM chip {chip_dir} (is the PWM enabled in the device tree? On a Raspberry Pi: "
                           "dtoverlay=pwm-2chan in config.txt)")
        try:
            count = _read(chip_dir / "npwm")
            if not 0 <= channel < count:
                raise PinError(f"{chip_dir} has {count} channel(s): pwm_channel {channel} is not one of them")
            if not self._dir.is_dir():
                _write(chip_dir / "export", channel)
                self.exported = True
            self._wait_until_writable()
            self.period_ns = max(1, round(period * 1e9))
            if _read(self._dir / "duty_cycle") > self.period_ns:
                _write(self._dir / "duty_cycle", 0)  # within the period we are about to set
            _write(self._dir / "period", self.period_ns)
            _write(self._dir / "duty_cycle", 0)
            _write(self._dir / "enable", 1)
        except OSError as exc:
            problem = f"{self.name}: {self._explain(exc)}"
            try:
                self.close()  # what we exported goes back
            except PinError as also:
                problem += f"; {also}"
            raise PinError(problem) from None

    def _wait_until_writable(self) -> None:
        """udev gives a new channel's files to the gpio group shortly after the export: wait for that, bounded."""
        deadline = time.monotonic() + UDEV_WAIT
        while True:
            try:
                with open(self._dir / "period", "a"):
                    return
            except PermissionError:
                if not self.exported or time.monotonic() > deadline:
                    raise
                time.sleep(UDEV_STEP)

    def _explain(self, exc: OSError) -> str:
        if exc.errno == errno.EBUSY:
            return f"the channel is held by a kernel driver ({exc.strerror})"
        if isinstance(exc, PermissionError):
            return f"{exc.strerror}: add the user to the gpio group (udev gives it /sys/class/pwm)"
        return f"{exc.strerror or exc} ({exc.filename or self.name})"

    def write(self, duty: float) -> None:
        """Set the duty cycle, 0.0 to 1.0 of the period."""
        try:
            _write(self._dir / "duty_cycle", min(self.period_ns, max(0, round(duty * self.period_ns))))
        except OSError as exc:
            raise PinError(f"{self.name}: writing duty {duty:.3f} failed: {self._explain(exc)}") from None

    def close(self) -> None:
        """Give the channel back if we exported it (the kernel then stops driving it)."""
        if self.exported:
            self.exported = False
            try:
                _write(self._chip_dir / "unexport", self._channel)
            except OSError as exc:
                raise PinError(f"{self.name}: unexport failed: {self._explain(exc)}") from None
