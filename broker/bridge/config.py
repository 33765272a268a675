"""The `bridge:` section of topics.yaml, validated by the bridge itself.

The node reads the section as opaque data, so a mistake here stops
edison-bridge at start (exit 2, naming the file and the key path) and never
edison-node. The rest of the file comes from node.config, so triggers are
checked against real outputs. pydantic is a dependency of the bridge (the
`bridge` extra), not of the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from node.config import BLINK_COUNT, BLINK_SECONDS, NAME_PATTERN, Config, ConfigError
from node.config import load as load_topics

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger(_Strict):
    """A phrase that, posted by an allowed account, becomes a command to one output."""

    phrase: str = Field(min_length=1)
    device: Name
    output: Name
    command: Literal["ON", "OFF", "TOGGLE", "BLINK"]
    count: int | None = Field(None, ge=BLINK_COUNT[0], le=BLINK_COUNT[1])
    on_time: float | None = Field(None, ge=BLINK_SECONDS[0], le=BLINK_SECONDS[1])
    off_time: float | None = Field(None, ge=BLINK_SECONDS[0], le=BLINK_SECONDS[1])

    @field_validator("command", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _blink_parameters_only_for_blink(self) -> Trigger:
        given = [k for k in ("count", "on_time", "off_time") if getattr(self, k) is not None]
        if given and self.command != "BLINK":
            raise ValueError(f"{', '.join(given)} only apply to command BLINK")
        return self


class BridgeConfig(_Strict):
    """Which posts on X become commands."""

    allow: list[Annotated[str, Field(pattern=r"^([A-Za-z0-9_]{1,15}|[0-9]{1,19})$")]] = Field(min_length=1)
    triggers: list[Trigger] = Field(min_length=1)
    expiry: float = Field(300.0, gt=0, description="seconds a command stays valid")
    rate_limit: int = Field(6, ge=1, description="commands per account per minute")
    include_replies: bool = False
    include_quotes: bool = False
    rule_max_length: int = Field(512, ge=64, le=2048, description="characters per stream rule (512 Basic, 1024 Pro)")
    stall_timeout: float = Field(30.0, gt=0, description="seconds without data or keep-alive before reconnecting")


def _describe(error: dict) -> str:
    path = ".".join(str(part) for part in ("bridge", *error["loc"]))
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] not in ("missing", "value_error"):
        message = f"{message} (got {error['input']!r})"
    return f"{path}: {message}"


def bridge_section(config: Config, source: str = "topics.yaml") -> BridgeConfig:
    """The validated `bridge:` section, its triggers checked against the devices' outputs."""
    if config.bridge is None:
        raise ConfigError(f"{source} has no `bridge` section")
    try:
        bridge = BridgeConfig.model_validate(config.bridge)
    except ValidationError as exc:
        lines = "\n".join(f"  {_describe(dict(e))}" for e in exc.errors(include_url=False))
        raise ConfigError(f"{source}: {exc.error_count()} problem(s):\n{lines}") from None
    for i, trigger in enumerate(bridge.triggers):
        device = config.devices.get(trigger.device)
        if device is None:
            raise ConfigError(f"{source}: bridge.triggers.{i}.device: no device {trigger.device!r}")
        if trigger.output not in device.outputs:
            raise ConfigError(f"{source}: bridge.triggers.{i}.output: device {trigger.device!r} has no output "
                              f"{trigger.output!r}")
    return bridge


def load(path: str | Path) -> tuple[Config, BridgeConfig]:
    """topics.yaml with its bridge section validated."""
    config = load_topics(path)
    return config, bridge_section(config, str(path))
