"""Stand-in for the kernel's PWM class in sysfs (drivers/pwm/sysfs.c and the PWM core), for machines without PWM.

`PwmTree(root, {chip: npwm})` lays out `pwmchipN/` with `npwm`, `export` and
`unexport` as real files, and its `open` replaces the built-in in the module
that speaks to sysfs (node.pins.sysfs_pwm), so every read and write under
`root` goes through the kernel's rules: a write to `export` makes `pwmM/`
(ENODEV for a channel the chip has not, EBUSY if exported already), `unexport`
removes it (ENODEV if not exported), and every change is applied as
pwm_apply_might_sleep does: EINVAL while the period is 0 (so no duty cycle
and no `enable` before a period) and for a duty cycle above the period, which
then keeps its old value. Values are parsed as kstrtou64 does (EINVAL for
anything else). The files on disk follow the values, so they read as in sysfs.
`history` records (chip, channel, duty_cycle, period, enable) after every change,
and each `listeners` function is called after one.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class State:
    period: int = 0
    duty_cycle: int = 0
    enable: int = 0


def _refuse(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


def _number(text: str, path: Path) -> int:
    value = text.strip()
    if not value.isdigit():
        raise _refuse(errno.EINVAL, path)
    return int(value)


class PwmTree:
    def __init__(self, root: Path, chips: dict[int, int]) -> None:
        self.root = root
        self.npwm = dict(chips)
        self.channels: dict[tuple[int, int], State] = {}
        self.history: list[tuple[int, int, int, int, int]] = []
        self.listeners: list[Callable[[], None]] = []
        for chip, count in chips.items():
            directory = root / f"pwmchip{chip}"
            directory.mkdir(parents=True)
            (directory / "npwm").write_text(f"{count}\n")
            for name in ("export", "unexport"):
                (directory / name).write_text("")

    def duties(self, chip: int, channel: int) -> list[float]:
        """The duty cycle as a fraction of the period after each change while enabled, repeats left out."""
        shown: list[float] = []
        for c, ch, duty, period, enable in self.history:
            if (c, ch) == (chip, channel) and enable and period:
                fraction = round(duty / period, 4)
                if not shown or shown[-1] != fraction:
                    shown.append(fraction)
        return shown

    def open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        path = Path(file)
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return builtins.open(file, mode, *args, **kwargs)
        if not path.is_file():
            raise _refuse(errno.ENOENT, path)
        if "r" in mode:
            return io.StringIO(path.read_text())
        if not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return _Attribute(self, relative.parts)

    def store(self, parts: tuple[str, ...], text: str) -> None:
        chip = int(parts[0].removeprefix("pwmchip"))
        path = self.root.joinpath(*parts)
        if parts[1] in ("export", "unexport"):
            channel = _number(text, path)
            exported = (chip, channel) in self.channels
            if channel >= self.npwm[chip] or (parts[1] == "unexport" and not exported):
                raise _refuse(errno.ENODEV, path)
            if parts[1] == "export":
                if exported:
                    raise _refuse(errno.EBUSY, path)
                self.channels[chip, channel] = State()
                (path.parent / f"pwm{channel}").mkdir()
                self._show(chip, channel)
            else:
                del self.channels[chip, channel]
                shutil.rmtree(path.parent / f"pwm{channel}")
            return
        if len(parts) != 3 or parts[2] not in ("period", "duty_cycle", "enable"):
            raise _refuse(errno.EACCES, path)  # read-only attributes such as npwm
        channel = int(parts[1].removeprefix("pwm"))
        value = _number(text, path)
        if parts[2] == "enable" and value not in (0, 1):
            raise _refuse(errno.EINVAL, path)
        state = replace(self.channels[chip, channel], **{parts[2]: value})
        if state.period == 0 or state.duty_cycle > state.period:
            raise _refuse(errno.EINVAL, path)
        self.channels[chip, channel] = state
        self._show(chip, channel)

    def _show(self, chip: int, channel: int) -> None:
        state = self.channels[chip, channel]
        directory = self.root / f"pwmchip{chip}" / f"pwm{channel}"
        for name in ("period", "duty_cycle", "enable"):
            (directory / name).write_text(f"{getattr(state, name)}\n")
        (directory / "polarity").write_text("normal\n")
        self.history.append((chip, channel, state.duty_cycle, state.period, state.enable))
        for listener in self.listeners:
            listener()


class _Attribute(io.StringIO):
    """An open sysfs attribute: what is written is stored when it is flushed, as one write(2)."""

    def __init__(self, tree: PwmTree, parts: tuple[str, ...]) -> None:
        super().__init__()
        self._tree, self._parts = tree, parts

    def close(self) -> None:
        if not self.closed:
            text = self.getvalue()
            super().close()
            if text:
                self._tree.store(self._parts, text)
