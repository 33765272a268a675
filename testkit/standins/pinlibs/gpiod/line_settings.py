from dataclasses import dataclass
from datetime import timedelta

from .line import Bias, Clock, Direction, Drive, Edge, Value

__all__ = ["LineSettings"]


@dataclass(repr=False)
class LineSettings:
    direction: Direction = Direction.AS_IS
    edge_detection: Edge = Edge.NONE
    bias: Bias = Bias.AS_IS
    drive: Drive = Drive.PUSH_PULL
    active_low: bool = False
    debounce_period: timedelta = timedelta()
    event_clock: Clock = Clock.MONOTONIC
    output_value: Value = Value.INACTIVE

    def __repr__(self) -> str:
        return (f"gpiod.LineSettings(direction=gpiod.line.{self.direction}, edge_detection=gpiod.line."
                f"{self.edge_detection}, bias=gpiod.line.{self.bias}, drive=gpiod.line.{self.drive}, active_low="
                f"{self.active_low}, debounce_period={self.debounce_period!r}, event_clock=gpiod.line."
                f"{self.event_clock}, output_value=gpiod.line.{self.output_value})")
