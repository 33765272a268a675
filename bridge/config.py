"""The `bridge:` section of topics.yaml: which accounts, on which network, may post which trigger.

The bridge validates this section itself; the node reads it as opaque. So a
mistake here stops edison-bridge at start (exit 2, naming the file and the key
path) and never edison-node. The rest of the file (devices, outputs, prefix)
comes from the node's loader, so triggers are checked against real outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from node.config import BLINK_COUNT, BLINK_SECONDS, Config, ConfigError, Name, describe_error, Strict
from node.config import load as load_topics

NETWORKS = ("x", "bluesky", "mastodon")


def _without_at(value: object) -> object:
    """Profiles show `@name`; the leading @ is not part of the name."""
    return value.strip().removeprefix("@") if isinstance(value, str) else value


XAccount = Annotated[str, Field(pattern=r"^([A-Za-z0-9_]{1,15}|[0-9]{1,19})$")]  # username, or id (all digits)
BlueskyActor = Annotated[  # a handle (a domain name) or a DID; handles are case-insensitive
    str,
    BeforeValidator(lambda v: _without_at(v).lower() if isinstance(v, str) and not v.startswith("did:") else v),
    Field(pattern=r"^(did:(plc|web):[A-Za-z0-9._:%-]*[A-Za-z0-9._-]"
                  r"|([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?)$", max_length=253),
]
MastodonAcct = Annotated[  # `user` on the bot's own instance, `user@domain` elsewhere
    str, BeforeValidator(_without_at), Field(pattern=r"^[A-Za-z0-9_]{1,30}(@[A-Za-z0-9.-]+(:[0-9]{1,5})?)?$"),
]


class Allow(Strict):
    """Allowed accounts per network; everything is keyed on the network's stable id once resolved."""

    x: list[XAccount] = Field(default_factory=list)
    bluesky: list[BlueskyActor] = Field(default_factory=list)
    mastodon: list[MastodonAcct] = Field(default_factory=list)

    def of(self, network: str) -> list[str]:
        accounts: list[str] = getattr(self, network)
        return accounts


class Trigger(Strict):
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


class BridgeConfig(Strict):
    """Which posts become commands; shared by every network unless a key says otherwise."""

    allow: Allow
    triggers: list[Trigger] = Field(min_length=1)
    expiry: float = Field(300.0, gt=0, description="seconds a command stays valid")
    rate_limit: int = Field(6, ge=1, description="commands per account per network per minute")
    include_replies: bool = False
    include_quotes: bool = False
    rule_max_length: int = Field(512, ge=64, le=2048, description="X: characters per stream rule (512 Basic, 1024 Pro)")
    stall_timeout: float = Field(30.0, gt=0, description="seconds a connection may look dead before reconnecting")

    @field_validator("allow", mode="before")
    @classmethod
    def _plain_list_is_x(cls, value: object) -> object:
        """Files written before Bluesky and Mastodon: a plain list names X accounts."""
        return {"x": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _someone_allowed(self) -> BridgeConfig:
        if not any(self.allow.of(network) for network in NETWORKS):
            raise ValueError("allow: no account on any network")
        return self


def section(config: Config, source: str = "topics.yaml") -> BridgeConfig:
    """Validate the `bridge:` section of a loaded topics.yaml; ConfigError names the file and key path."""
    if config.bridge is None:
        raise ConfigError(f"{source} has no `bridge` section")
    try:
        bridge = BridgeConfig.model_validate(config.bridge)
    except ValidationError as exc:
        problems = [describe_error({**e, "loc": ("bridge", *e["loc"])}) for e in exc.errors(include_url=False)]
        raise ConfigError(_report(source, problems)) from None
    problems = []
    for i, trigger in enumerate(bridge.triggers):
        device = config.devices.get(trigger.device)
        if device is None:
            problems.append(f"bridge.triggers.{i}.device: no device {trigger.device!r}")
        elif trigger.output not in device.outputs:
            problems.append(f"bridge.triggers.{i}.output: device {trigger.device!r} has no output {trigger.output!r}")
    if problems:
        raise ConfigError(_report(source, problems))
    return bridge


def _report(source: str, problems: list[Any]) -> str:
    lines = "\n".join(f"  {p}" for p in problems)
    return f"{source}: {len(problems)} problem(s):\n{lines}"


def load(path: str | Path) -> tuple[Config, BridgeConfig]:
    config = load_topics(path)
    return config, section(config, str(path))
