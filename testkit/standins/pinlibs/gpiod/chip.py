from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from types import TracebackType

from . import _kernel
from ._internal import poll_fd
from .chip_info import ChipInfo
from .exception import ChipClosedError
from .info_event import InfoEvent
from .line import Value
from .line_info import LineInfo
from .line_request import LineRequest, config_items
from .line_settings import LineSettings

__all__ = ["Chip"]


class Chip:
    def __init__(self, path: str):
        self._chip: _kernel.SimHandle | None = _kernel.SimHandle(_kernel.open_chip(path))
        self._path = path
        self._info: ChipInfo | None = None

    def __bool__(self) -> bool:
        return self._chip is not None

    def __enter__(self) -> Chip:
        self._check_closed()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc_value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _check_closed(self) -> _kernel.SimHandle:
        if self._chip is None:
            raise ChipClosedError()
        return self._chip

    def close(self) -> None:
        if self._chip is not None:
            self._chip.close()
            self._chip = None

    def get_info(self) -> ChipInfo:
        chip = self._check_closed().chip
        if not self._info:
            self._info = ChipInfo(chip.name, chip.label, len(chip.lines))
        return self._info

    def line_offset_from_id(self, id: str | int) -> int:
        handle = self._check_closed()
        if not isinstance(id, int):
            try:
                return handle.chip.offset_of(id)
            except OSError as ex:  # not a name: perhaps an offset written as a string
                try:
                    offset = int(id)
                except ValueError:
                    raise ex from None
        else:
            offset = id
        if offset >= self.get_info().num_lines:
            raise ValueError("line offset of out range")
        return offset

    def get_line_info(self, line: int | str) -> LineInfo:
        handle = self._check_closed()
        return handle.chip.lines[self.line_offset_from_id(line)].info()

    def watch_line_info(self, line: int | str) -> LineInfo:
        handle = self._check_closed()
        return handle.watch(self.line_offset_from_id(line))

    def unwatch_line_info(self, line: int | str) -> None:
        handle = self._check_closed()
        handle.unwatch(self.line_offset_from_id(line))

    def wait_info_event(self, timeout: timedelta | float | None = None) -> bool:
        self._check_closed()
        return poll_fd(self.fd, timeout)

    def read_info_event(self) -> InfoEvent:
        event_type, timestamp_ns, info = self._check_closed().read_event()
        return InfoEvent(event_type, timestamp_ns, info)

    def request_lines(self, config: dict[Iterable[int | str] | int | str, LineSettings | None],
                      consumer: str | None = None, event_buffer_size: int | None = None,
                      output_values: dict[int | str, Value] | None = None) -> LineRequest:
        handle = self._check_closed()
        mapped = {self.line_offset_from_id(line): value for line, value in (output_values or {}).items()}
        name_map: dict[str, int] = {}
        requested: list[int | str] = []
        settings_of: list[tuple[int, LineSettings]] = []
        seen: set[int] = set()
        for line, settings in config_items(config):
            offset = self.line_offset_from_id(line)
            if offset in seen:
                raise ValueError(f"line must be configured exactly once - offset {offset} repeats")
            seen.add(offset)
            requested.append(line)
            if isinstance(line, str):
                name_map[line] = offset
            elif handle.chip.lines[offset].name and handle.chip.lines[offset].name not in name_map:
                name_map[handle.chip.lines[offset].name] = offset
            settings_of.append((offset, settings or LineSettings()))
        values = [mapped.get(offset, Value.INACTIVE) for offset, _ in settings_of] if mapped else None
        request = LineRequest(handle.chip.request(settings_of, values, consumer, event_buffer_size))
        request._chip_name = handle.chip.name
        request._offsets = [offset for offset, _ in settings_of]
        request._name_map = name_map
        request._lines = requested
        return request

    def fileno(self) -> int:
        return self.fd

    def __repr__(self) -> str:
        if not self._chip:
            return "<Chip CLOSED>"
        return f'gpiod.Chip("{self.path}")'

    def __str__(self) -> str:
        if not self._chip:
            return "<Chip CLOSED>"
        return f'<Chip path="{self.path}" fd={self.fd} info={self.get_info()}>'

    @property
    def path(self) -> str:
        self._check_closed()
        return self._path

    @property
    def fd(self) -> int:
        return self._check_closed().fd
