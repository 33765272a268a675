from __future__ import annotations

import errno
import warnings
from collections.abc import Iterable
from datetime import timedelta
from types import TracebackType
from typing import Any

from . import _kernel
from ._internal import poll_fd
from .edge_event import EdgeEvent
from .exception import RequestReleasedError
from .line import Value
from .line_settings import LineSettings

__all__ = ["LineRequest"]


def config_items(config: dict[Any, LineSettings | None]) -> Iterable[tuple[int | str, LineSettings | None]]:
    """Keys may be a line or an iterable of lines (not a string), as in the bindings' config_iter."""
    for key, settings in config.items():
        if isinstance(key, (int, str)):
            yield key, settings
        else:
            for line in key:
                yield line, settings


class LineRequest:
    def __init__(self, req: _kernel.SimRequest):
        self._req: _kernel.SimRequest | None = req
        self._chip_name: str
        self._offsets: list[int]
        self._name_map: dict[str, int]
        self._lines: list[int | str]

    def __bool__(self) -> bool:
        return self._req is not None

    def __enter__(self) -> LineRequest:
        self._check_released()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc_value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()

    def _check_released(self) -> _kernel.SimRequest:
        if self._req is None:
            raise RequestReleasedError()
        return self._req

    def release(self) -> None:
        if self._req is not None:
            self._req.release()
            self._req = None

    def get_value(self, line: int | str) -> Value:
        return self.get_values([line])[0]

    def _line_to_offset(self, line: int | str) -> int:
        if isinstance(line, int):
            return line
        if (offset := self._name_map.get(line)) is None:
            raise ValueError(f"unknown line name: {line}")
        return offset

    def get_values(self, lines: Iterable[int | str] | None = None) -> list[Value]:
        req = self._check_released()
        lines = lines or self._lines
        return [req.line(self._line_to_offset(line)).logical() for line in lines]

    def set_value(self, line: int | str, value: Value) -> None:
        self.set_values({line: value})

    def set_values(self, values: dict[int | str, Value]) -> None:
        req = self._check_released()
        targets = [(req.line(self._line_to_offset(line)), value) for line, value in values.items()]
        for target, _ in targets:
            if target.settings.direction.name != "OUTPUT":
                raise _kernel._error(errno.EPERM)  # the kernel sets only lines requested as outputs
        for target, value in targets:
            target.set(value)

    def reconfigure_lines(self, config: dict[Iterable[int | str] | int | str, LineSettings | None]) -> None:
        req = self._check_released()
        settings_of: dict[int, LineSettings] = {}
        for line, settings in config_items(config):
            try:
                offset = self._line_to_offset(line)
            except ValueError:
                warnings.warn(f"Line name '{line}' was not included in original request.", stacklevel=2)
                continue
            if offset in self.offsets:
                settings_of[offset] = settings or LineSettings()
            else:
                warnings.warn(f"Line offset '{offset}' was not included in original request.", stacklevel=2)
        req.reconfigure({offset: settings_of.get(offset) or LineSettings() for offset in self.offsets})

    def wait_edge_events(self, timeout: timedelta | float | None = None) -> bool:
        self._check_released()
        return poll_fd(self.fd, timeout)

    def read_edge_events(self, max_events: int | None = None) -> list[EdgeEvent]:
        return [EdgeEvent(*event) for event in self._check_released().read_events(max_events)]

    def fileno(self) -> int:
        return self.fd

    def __str__(self) -> str:
        if not self._req:
            return "<LineRequest RELEASED>"
        return (f'<LineRequest chip="{self.chip_name}" num_lines={self.num_lines} offsets={self.offsets} '
                f'fd={self.fd}>')

    @property
    def chip_name(self) -> str:
        self._check_released()
        return self._chip_name

    @property
    def num_lines(self) -> int:
        self._check_released()
        return len(self._offsets)

    @property
    def offsets(self) -> list[int]:
        self._check_released()
        return self._offsets

    @property
    def lines(self) -> list[int | str]:
        self._check_released()
        return self._lines

    @property
    def fd(self) -> int:
        return self._check_released().fd
