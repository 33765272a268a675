"""topics.yaml: the contract between the device, the broker, the bridge and Home Assistant.

Loaded once at start and validated strictly (unknown keys are errors), so a typo
is refused with the file, the key path and what was expected instead of
surfacing later as a device that silently ignores its commands.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from node.topics import DeviceTopics, Layout

# Topic levels and Home Assistant object ids allow only these characters.
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
# A topic prefix may have several levels but no wildcards and no empty level.
TopicPrefix = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")]

BLINK_COUNT = (1, 1000)
BLINK_SECONDS = (0.02, 60.0)


class ConfigError(Exception):
    """topics.yaml cannot be used; the message names the file, key path and expectation."""


class Strict(BaseModel):
    """A section of topics.yaml: unknown keys are errors (shared with the bridge's own section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BlinkPattern(Strict):
    """How an output blinks: `count` times `on_time` seconds on, `off_time` seconds off."""

    count: int = Field(10, ge=BLINK_COUNT[0], le=BLINK_COUNT[1])
    on_time: float = Field(0.3, ge=BLINK_SECONDS[0], le=BLINK_SECONDS[1])
    off_time: float = Field(0.3, ge=BLINK_SECONDS[0], le=BLINK_SECONDS[1])


class OutputConfig(Strict):
    """One GPIO output of a device."""

    pin: int = Field(ge=0, description="mraa GPIO pin number")
    name: str | None = Field(None, min_length=1, description="human name; defaults to the key")
    active_low: bool = False
    safe_state: Literal["ON", "OFF"] = "OFF"
    blink: BlinkPattern = BlinkPattern()
    max_age: float | None = Field(
        300.0, gt=0, description="seconds a command may wait in the broker while the node is offline"
    )
    component: Literal["light", "switch"] = "light"

    @field_validator("safe_state", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value


class DeviceConfig(Strict):
    name: str | None = Field(None, min_length=1)
    model: str = "Intel Edison"
    manufacturer: str = "Intel"
    outputs: dict[Name, OutputConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _pins_unique(self) -> DeviceConfig:
        seen: dict[int, str] = {}
        for name, output in self.outputs.items():
            if output.pin in seen:
                raise ValueError(f"outputs {seen[output.pin]!r} and {name!r} both use pin {output.pin}")
            seen[output.pin] = name
        return self


class Config(Strict):
    prefix: TopicPrefix = "edison"
    discovery_prefix: TopicPrefix = "homeassistant"
    devices: dict[Name, DeviceConfig] = Field(min_length=1)
    access: dict[Name, Literal["controller", "bridge"]] = {}
    # edison-bridge validates its own section (bridge/config.py): a mistake there must never stop the node.
    bridge: Any = None

    @model_validator(mode="after")
    def _references(self) -> Config:
        clash = sorted(set(self.access) & set(self.devices))
        if clash:
            raise ValueError(f"access: {', '.join(clash)} is a device id; devices log in as themselves")
        return self

    @property
    def layout(self) -> Layout:
        return Layout(self.prefix, self.discovery_prefix)

    def topics(self, device_id: str) -> DeviceTopics:
        return self.layout.device(device_id)

    def device(self, device_id: str) -> DeviceConfig:
        try:
            return self.devices[device_id]
        except KeyError:
            known = ", ".join(sorted(self.devices))
            raise ConfigError(f"no device {device_id!r} in the configuration (known: {known})") from None


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so `OFF` and `on:` stay strings."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def describe_error(error: ErrorDetails) -> str:
    """One validation error as `key.path: what was expected (got ...)` (shared with the bridge's own section)."""
    path = ".".join(str(part) for part in error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] not in ("missing", "value_error"):
        message = f"{message} (got {error['input']!r})"
    return f"{path}: {message}" if path else message


def parse(text: str, source: str = "topics.yaml") -> Config:
    """Validate the text of a topics.yaml; ConfigError says what is wrong and where."""
    try:
        data = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = "\n".join(f"  {describe_error(e)}" for e in exc.errors(include_url=False))
        raise ConfigError(f"{source}: {exc.error_count()} problem(s):\n{lines}") from None


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse(text, str(path))
