"""The topic layout of one device, in one place (see the topic table in the README)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceTopics:
    prefix: str
    device: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def result(self) -> str:
        return f"{self.base}/result"

    @property
    def set_filter(self) -> str:
        """One subscription for every output's commands, known outputs or not."""
        return f"{self.base}/+/set"

    def set(self, output: str) -> str:
        return f"{self.base}/{output}/set"

    def state(self, output: str) -> str:
        return f"{self.base}/{output}/state"

    def output_of_set(self, topic: str) -> str | None:
        """The output named by a `/set` topic of this device, else None."""
        head, sep, rest = topic.partition(self.base + "/")
        if head or not sep:
            return None
        output, sep, tail = rest.partition("/")
        return output if sep and tail == "set" and output else None
