"""The real Node in memory: the fake MQTT link plays the broker, simulated pins record every level change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from node.config import parse
from node.journal import Journal
from node.pins import PinFactory
from node.pins.sim import Change, SimFactory
from node.service import Node
from testkit.fakelink import FakeLink

DEVICE = "edison-t"
TOPICS_YAML = f"""\
prefix: edison
devices:
  {DEVICE}:
    outputs:
      led: {{name: LED, pin: 20, blink: {{count: 2, on_time: 0.02, off_time: 0.02}}}}
      relay: {{pin: 21, active_low: true, max_age: 60}}
"""
CONFIG = parse(TOPICS_YAML)
TOPICS = CONFIG.topics(DEVICE)
# A dimmable LED and a button, for brightness and inputs.
DIMMER_YAML = f"""\
prefix: edison
devices:
  {DEVICE}:
    outputs:
      led: {{pin: 20, pwm: true, blink: {{count: 2, on_time: 0.02, off_time: 0.02}}}}
      relay: {{pin: 21}}
    inputs:
      button: {{pin: 36, component: event, double_press: 0, debounce: 0.01}}
      door: {{pin: 37, pull: down, active_low: false, debounce: 0.01}}
"""


class Rig:
    """A started Node on a FakeLink and pins (simulated unless given), its journal in `state`; connected unless told
    otherwise."""

    def __init__(self, state: Path, mqtt5: bool = True, connect: bool = True, topics_yaml: str = TOPICS_YAML,
                 pins: PinFactory | None = None) -> None:
        self.state = state
        self.factory = pins or SimFactory()
        self.closed = False
        self.link = FakeLink(mqtt5)
        self.journal = Journal(state)
        device = parse(topics_yaml).device(DEVICE)
        self.node = Node(TOPICS, device, self.factory, self.link, self.journal, announce_delay=(0, 0))
        self.node.start()
        if connect:
            self.link.connect()

    @property
    def pins(self) -> SimFactory:
        assert isinstance(self.factory, SimFactory), "the rig's pins are not simulated"
        return self.factory

    def send(self, payload: bytes | str, output: str = "led", **fields: Any) -> dict[str, Any]:
        """Deliver one `/set` message and return its result, checking it is the only one."""
        before = len(self.link.on(TOPICS.result))
        self.link.deliver(TOPICS.set(output), payload, **fields)
        results = self.link.on(TOPICS.result)[before:]
        assert len(results) == 1, f"{len(results)} results for one command: {results}"
        return json.loads(results[0].payload)

    def changes(self, pin: int = 20) -> list[Change]:
        return [c for c in self.pins.history if c.pin == pin]

    def levels(self, pin: int = 20) -> list[int]:
        return [c.value for c in self.changes(pin)]

    def states(self, output: str = "led") -> list[str]:
        return [m.payload.decode() for m in self.link.on(TOPICS.state(output))]

    def duties(self, pin: int = 20) -> list[float | None]:
        return [c.duty for c in self.changes(pin)]

    def close(self) -> None:
        """The node stops (safe state, `offline`), its pins and journal are released, as at the end of the process;
        once."""
        if self.closed:
            return
        self.closed = True
        self.node.stop()
        self.factory.close()
        self.journal.close()
