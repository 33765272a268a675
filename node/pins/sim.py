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


Listener = Callable[[Change], None]


class SimPin(Pin):
    def __init__(self, number: int, factory: SimFactory) -> None:
        super().__init__(number)
        self._factory = factory
        self.value = 0

    def write(self, level: int) -> None:
        level = 1 if level else 0
        if level != self.value:
            self.value = level
            self._factory._record(Change(time.time(), self.number, level))


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
                self._trace.write(json.dumps({"t": change.t, "pin": change.pin, "value": change.value}) + "\n")
                self._trace.flush()
        for listener in self._listeners:
            listener(change)

    def close(self) -> None:
        if self._trace is not None:
            self._trace.close()
