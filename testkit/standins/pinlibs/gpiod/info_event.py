from dataclasses import dataclass
from enum import Enum

from .line_info import LineInfo

__all__ = ["InfoEvent"]


@dataclass(frozen=True, init=False, repr=False)
class InfoEvent:
    class Type(Enum):
        LINE_REQUESTED = 1
        LINE_RELEASED = 2
        LINE_CONFIG_CHANGED = 3

    event_type: Type
    timestamp_ns: int
    line_info: LineInfo

    def __init__(self, event_type: int, timestamp_ns: int, line_info: LineInfo):
        object.__setattr__(self, "event_type", InfoEvent.Type(event_type))
        object.__setattr__(self, "timestamp_ns", timestamp_ns)
        object.__setattr__(self, "line_info", line_info)
