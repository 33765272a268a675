"""The topic layout, in one place: every topic and wildcard the node, the broker's rules, Home Assistant and
the bridge use is made here (see the topic table in the README)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """The topics of every device under one prefix: what controllers and bridges subscribe and publish to."""

    prefix: str = "edison"
    discovery_prefix: str = "homeassistant"

    def device(self, device_id: str) -> DeviceTopics:
        return DeviceTopics(self.prefix, device_id, self.discovery_prefix)

    @property
    def everything(self) -> str:
        return f"{self.prefix}/#"

    @property
    def every_set(self) -> str:
        return f"{self.prefix}/+/+/set"

    @property
    def every_result(self) -> str:
        return f"{self.prefix}/+/result"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth and will: `online` when it (re)starts."""
        return f"{self.discovery_prefix}/status"

    @property
    def ha_everything(self) -> str:
        return f"{self.discovery_prefix}/#"


@dataclass(frozen=True)
class DeviceTopics:
    prefix: str
    device: str
    discovery_prefix: str = "homeassistant"

    @property
    def layout(self) -> Layout:
        return Layout(self.prefix, self.discovery_prefix)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def everything(self) -> str:
        """All the device may publish under its prefix: status, state, results, MQTT 5 replies."""
        return f"{self.base}/#"

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

    @property
    def ha_status(self) -> str:
        return self.layout.ha_status

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """What the node subscribes to, and so what the broker must let it subscribe to."""
        return self.set_filter, self.ha_status

    def set(self, output: str) -> str:
        return f"{self.base}/{output}/set"

    def state(self, name: str) -> str:
        """An output's or an input's ON/OFF, retained."""
        return f"{self.base}/{name}/state"

    def brightness(self, output: str) -> str:
        """A PWM output's brightness (0..255, what ON shows), retained."""
        return f"{self.base}/{output}/brightness"

    def effect(self, output: str) -> str:
        """An output's running effect (`blink`, or `off`), retained."""
        return f"{self.base}/{output}/effect"

    def event(self, input_: str) -> str:
        """An input's press events, not retained."""
        return f"{self.base}/{input_}/event"

    def output_of_set(self, topic: str) -> str | None:
        """The output named by a `/set` topic of this device, else None."""
        head, sep, rest = topic.partition(self.base + "/")
        if head or not sep:
            return None
        output, sep, tail = rest.partition("/")
        return output if sep and tail == "set" and output else None

    def own(self, topic: str) -> bool:
        """Whether `topic` is one the device's own messages use (status, results, state, events, commands, discovery):
        an MQTT 5 reply must not go there, or whoever may command the device could make it say it is offline or that
        a button was pressed."""
        if topic in (self.status, self.result) or topic.startswith(f"{self.discovery_prefix}/"):
            return True
        head, sep, rest = topic.partition(self.base + "/")
        name, sep2, kind = rest.partition("/")
        return not head and bool(sep and sep2) and kind in ("state", "brightness", "effect", "event", "set")

    def discovery(self, component: str, object_id: str) -> str:
        """A Home Assistant discovery config topic of this device."""
        return f"{self.discovery_prefix}/{component}/{self.device}/{object_id}/config"

    @property
    def discovery_filter(self) -> str:
        """Every discovery config of this device, of any component."""
        return f"{self.discovery_prefix}/+/{self.device}/#"
