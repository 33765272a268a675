"""The `bridge:` section of topics.yaml: which accounts, on which network, may post which trigger.

The bridge validates this section itself; the node reads it as opaque. So a
mistake here stops edison-bridge at start (exit 2, naming the file and the key
path) and never edison-node. It is checked with the same building blocks as
the node's part (node.config, on voluptuous), and the rest of the file
(devices, outputs, prefix) comes from the node's loader, so triggers are
checked against real outputs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import voluptuous as vol

from node.config import (BLINK_COUNT, BLINK_SECONDS, Config, ConfigError, Problems, boolean, describe, integer, name,
                         number, one_of, problems_text, text)
from node.config import load as load_topics

NETWORKS = ("x", "bluesky", "mastodon")
Command = Literal["ON", "OFF", "TOGGLE", "BLINK"]

X_ACCOUNT = r"^([A-Za-z0-9_]{1,15}|[0-9]{1,19})$"  # username, or id (all digits)
BLUESKY_ACTOR = (r"^(did:(plc|web):[A-Za-z0-9._:%-]*[A-Za-z0-9._-]"  # a DID, or a handle (a domain name)
                 r"|([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?)$")
MASTODON_ACCT = r"^[A-Za-z0-9_]{1,30}(@[A-Za-z0-9.-]+(:[0-9]{1,5})?)?$"  # `user` on the bot's instance, or user@domain


def account(pattern: str, what: str, fold: bool = False) -> Callable[[Any], str]:
    """An account as a profile shows it: a leading @ is dropped; `fold`: handles are case-insensitive."""
    rx = re.compile(pattern)

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise vol.Invalid(f"expected {what} (got {value!r})")
        found = value.strip().removeprefix("@")
        if fold and not found.startswith("did:"):
            found = found.lower()
        if len(found) > 253 or not rx.match(found):
            raise vol.Invalid(f"expected {what} (got {value!r})")
        return found

    return check


@dataclass(frozen=True)
class Allow:
    """Allowed accounts per network; everything is keyed on the network's stable id once resolved."""

    x: tuple[str, ...] = ()
    bluesky: tuple[str, ...] = ()
    mastodon: tuple[str, ...] = ()

    def of(self, network: str) -> tuple[str, ...]:
        accounts: tuple[str, ...] = getattr(self, network)
        return accounts


@dataclass(frozen=True)
class Trigger:
    """A phrase that, posted by an allowed account, becomes a command to one output."""

    phrase: str
    device: str
    output: str
    command: Command
    count: int | None = None  # BLINK only: overrides of the output's blink pattern
    on_time: float | None = None
    off_time: float | None = None


@dataclass(frozen=True)
class BridgeConfig:
    """Which posts become commands; shared by every network unless a key says otherwise."""

    allow: Allow
    triggers: tuple[Trigger, ...]
    expiry: float = 300.0  # seconds a command stays valid
    rate_limit: int = 6  # commands per account per network per minute
    include_replies: bool = False
    include_quotes: bool = False
    rule_max_length: int = 512  # X: characters per stream rule (512 Basic, 1024 Pro)
    stall_timeout: float = 30.0  # seconds a connection may look dead before reconnecting

    @classmethod
    def of(cls, data: Any) -> BridgeConfig:
        """The section from its data as read; vol.MultipleInvalid or ValueError when it is wrong."""
        checked = _BRIDGE(data)
        problems = _problems(checked)
        if problems:
            raise ValueError("; ".join(f"{path}: {message}" for path, message in problems))
        return _build(checked)


def _plain_list_is_x(value: Any) -> Any:
    """Files written before Bluesky and Mastodon: a plain list names X accounts."""
    return {"x": value} if isinstance(value, list) else value


_ALLOW = vol.All(_plain_list_is_x, vol.Schema({
    vol.Optional("x"): [account(X_ACCOUNT, "an X username or numeric id")],
    vol.Optional("bluesky"): [account(BLUESKY_ACTOR, "a Bluesky handle or DID", fold=True)],
    vol.Optional("mastodon"): [account(MASTODON_ACCT, "a Mastodon account, user or user@domain")],
}))
_TRIGGER = vol.Schema({
    vol.Required("phrase"): text(max_length=280),
    vol.Required("device"): name,
    vol.Required("output"): name,
    vol.Required("command"): one_of("ON", "OFF", "TOGGLE", "BLINK", fold=True),
    vol.Optional("count"): integer(*BLINK_COUNT),
    vol.Optional("on_time"): number(*BLINK_SECONDS),
    vol.Optional("off_time"): number(*BLINK_SECONDS),
})
_BRIDGE = vol.Schema({
    vol.Required("allow"): _ALLOW,
    vol.Required("triggers"): vol.All([_TRIGGER], vol.Length(min=1, msg="expected at least one trigger")),
    vol.Optional("expiry"): number(above=0),
    vol.Optional("rate_limit"): integer(1),
    vol.Optional("include_replies"): boolean,
    vol.Optional("include_quotes"): boolean,
    vol.Optional("rule_max_length"): integer(64, 2048),
    vol.Optional("stall_timeout"): number(above=0),
})


def _problems(data: Any, config: Config | None = None, known: Sequence[tuple[str, str]] = ()) -> Problems:
    """What the schema cannot say: someone must be allowed, blink parameters only for BLINK, and (with `config`)
    triggers aimed at devices and outputs that exist. Read from the section as written, so these come in the same
    pass as the schema's own problems; a key the schema already faulted (`known`) is not faulted twice."""
    faulted = {path for path, _ in known}
    section = data if isinstance(data, Mapping) else {}
    problems: Problems = []
    allow = _plain_list_is_x(section.get("allow"))
    if isinstance(allow, Mapping) and "bridge.allow" not in faulted and not any(allow.get(n) for n in NETWORKS):
        problems.append(("bridge.allow", "no account on any network"))
    triggers = section.get("triggers")
    for i, trigger in enumerate(triggers if isinstance(triggers, list) else []):
        if not isinstance(trigger, Mapping):
            continue
        at = f"bridge.triggers.{i}"
        given = [k for k in ("count", "on_time", "off_time") if k in trigger]
        command = trigger.get("command")
        if given and isinstance(command, str) and command.strip().upper() != "BLINK":
            problems.append((at, f"{', '.join(given)} only apply to command BLINK"))
        device_id, output = trigger.get("device"), trigger.get("output")
        if config is None or not isinstance(device_id, str) or f"{at}.device" in faulted:
            continue
        device = config.devices.get(device_id)
        if device is None:
            problems.append((f"{at}.device", f"no device {device_id!r}"))
        elif isinstance(output, str) and f"{at}.output" not in faulted and output not in device.outputs:
            problems.append((f"{at}.output", f"device {device_id!r} has no output {output!r}"))
    return problems


def _build(checked: Mapping[str, Any]) -> BridgeConfig:
    allow = Allow(**{network: tuple(accounts) for network, accounts in checked["allow"].items()})
    triggers = tuple(Trigger(**t) for t in checked["triggers"])
    return BridgeConfig(**{**checked, "allow": allow, "triggers": triggers})


def section(config: Config, source: str = "topics.yaml") -> BridgeConfig:
    """Validate the `bridge:` section of a loaded topics.yaml; ConfigError names the file and key path."""
    if config.bridge is None:
        raise ConfigError(f"{source} has no `bridge` section")
    problems: Problems = []
    try:
        checked = _BRIDGE(config.bridge)
    except vol.MultipleInvalid as exc:
        problems = [describe(e, "bridge") for e in exc.errors]
    problems += _problems(config.bridge, config, problems)
    if problems:
        raise ConfigError(problems_text(source, problems))
    return _build(checked)


def load(path: str | Path) -> tuple[Config, BridgeConfig]:
    config = load_topics(path)
    return config, section(config, str(path))
