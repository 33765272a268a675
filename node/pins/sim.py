"""Simulated pins: in memory, every level change recorded with its time.

Like gpiozero's MockFactory, the history is what tests assert on; listeners
let the node print the LED to a terminal or append a JSON-lines trace.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from node.pins import Pin, PinFactory


@dataclass(frozen=True)
class Change:
    t: float  # time.time() of the change
    pin: int
    value: int
    id: str | None = None  # the command that caused it

    def as_json(self) -> str:
        fields = {"t": self.t, "pin": self.pin, "value": self.value}
        return json.dumps(fields if self.id is None else {**fields, "id": self.id})


Listener = Callable[[Change], None]


class SimPin(Pin):
    """A simulated line; set `fault` to make its writes fail as broken hardware would."""

    def __init__(self, number: int, factory: SimFactory) -> None:
        super().__init__(number)
        self._factory = factory
        self.value = 0
        self.fault: Exception | None = None

    def write(self, level: int, cause: str | None = None) -> None:
        if self.fault is not None:
            raise self.fault
        level = 1 if level else 0
        if level != self.value:
            self.value = level
            self._factory._record(Change(time.time(), self.number, level, cause))


class SimFactory(PinFactory):
    def __init__(self, trace: TextIO | None = None, listeners: list[Listener] | None = None) -> None:
        self.history: list[Change] = []
        self._pins: dict[int, SimPin] = {}
        self._trace = trace
        self._listeners = list(listeners or [])
        self._lock = threading.Lock()

    def pin(self, number: int) -> SimPin:
        return self._pins.setdefault(number, SimPin(number, self))

    def _record(self, change: Change) -> None:
        with self._lock:
            self.history.append(change)
            if self._trace is not None:
                self._trace.write(change.as_json() + "\n")
                self._trace.flush()
        for listener in self._listeners:
            listener(change)

    def close(self) -> None:
        if self._trace is not None:
            self._trace.close()
