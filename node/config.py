"""topics.yaml: the contract between the device, the broker, the bridge and Home Assistant.

Loaded once at start and validated strictly (unknown keys are errors), so a typo
is refused with the file, the key path and what was expected instead of
surfacing later as a device that silently ignores its commands. Every problem
in the file is reported at once.

The node validates with voluptuous (pure Python, imported in a few
milliseconds, every problem with its key path) into frozen dataclasses; see the
README ("The device stays lean") for why not pydantic. The `bridge:` section is
kept as it is read: edison-bridge validates it, so a mistake there never stops
the node.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import voluptuous as vol
import yaml

from node.topics import DeviceTopics, Layout

# Topic levels and Home Assistant object ids allow only these characters.
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
TOPIC_PREFIX_PATTERN = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"  # several levels, no wildcards, no empty level

BLINK_COUNT = (1, 1000)
BLINK_SECONDS = (0.02, 60.0)
BRIGHTNESS = (0, 255)  # Home Assistant's scale
TRANSITION_SECONDS = (0.0, 3600.0)
PWM_PERIOD_SECONDS = (1e-5, 1.0)

Pull = Literal["up", "down", "none"]
InputComponent = Literal["binary_sensor", "event"]
EVENT_TYPES = ("press", "double_press", "long_press")


class ConfigError(Exception):
    """topics.yaml cannot be used; the message names the file, key path and expectation."""


# -- values: strict about types (YAML's `true` is no pin number) --------------------

def integer(lo: float | None = None, hi: float | None = None) -> Callable[[Any], int]:
    """An int (not a bool, not a float) within [lo, hi]."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise vol.Invalid(f"expected an integer (got {value!r})")
        _within(value, lo, hi)
        return value

    return check


def number(lo: float | None = None, hi: float | None = None, above: float | None = None) -> Callable[[Any], float]:
    """An int or float (not a bool, not NaN) within [lo, hi] and above `above`."""

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise vol.Invalid(f"expected a number (got {value!r})")
        if above is not None and not value > above:
            raise vol.Invalid(f"expected a number above {above:g} (got {value!r})")
        _within(value, lo, hi)
        return float(value)

    return check


def _within(value: float, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"from {lo:g} to {hi:g}" if lo is not None and hi is not None else (
            f"at least {lo:g}" if lo is not None else f"at most {hi:g}")
        raise vol.Invalid(f"expected {bounds} (got {value!r})")


def text(pattern: str | None = None, max_length: int = 256) -> Callable[[Any], str]:
    rx = re.compile(pattern) if pattern else None

    def check(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise vol.Invalid(f"expected a non-empty string (got {value!r})")
        if len(value) > max_length:
            raise vol.Invalid(f"expected at most {max_length} characters (got {len(value)})")
        if rx is not None and not rx.match(value):
            raise vol.Invalid(f"expected letters, digits, '_' or '-' only (got {value!r})")
        return value

    return check


def pin_id(value: Any) -> int | str:
    """A pin number (a line offset under gpiod) or a line name as the board names it (`GPIO17`)."""
    if isinstance(value, str):
        if not value.strip() or not value.isprintable() or len(value) > 64:
            raise vol.Invalid(f"expected a pin number or a line name of at most 64 printable characters "
                              f"(got {value!r})")
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise vol.Invalid(f"expected a pin number (0 or more) or a line name (got {value!r})")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise vol.Invalid(f"expected true or false (got {value!r})")
    return value


def one_of(*choices: str, fold: bool = False) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        word = value.strip().upper() if fold and isinstance(value, str) else value
        if word not in choices:
            raise vol.Invalid(f"expected one of {', '.join(choices)} (got {value!r})")
        return str(word)

    return check


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


name = text(NAME_PATTERN, 64)


# -- the device's part ------------------------------------------------------------

@dataclass(frozen=True)
class BlinkPattern:
    """How an output blinks: `count` times `on_time` seconds on, `off_time` seconds off."""

    count: int = 10
    on_time: float = 0.3
    off_time: float = 0.3

    def but(self, **changes: Any) -> BlinkPattern:
        return replace(self, **changes)


@dataclass(frozen=True)
class OutputConfig:
    """One output of a device: a GPIO line, or with `pwm` a PWM line that dims (on a kernel PWM channel under
    gpiod: `pwm_chip` and `pwm_channel`)."""

    pin: int | str
    name: str | None = None
    active_low: bool = False
    safe_state: Literal["ON", "OFF"] = "OFF"
    blink: BlinkPattern = BlinkPattern()
    max_age: float | None = 300.0  # seconds a command may wait in the broker while the node is offline
    component: Literal["light", "switch"] = "light"
    pwm: bool = False
    pwm_period: float = 0.001  # seconds
    pwm_chip: int | None = None
    pwm_channel: int | None = None


@dataclass(frozen=True)
class InputConfig:
    """One input of a device: a button, a contact or a motion sensor on a GPIO line."""

    pin: int | str
    name: str | None = None
    pull: Pull = "up"
    active_low: bool = True  # with pull up, a button to ground reads low when pressed
    debounce: float = 0.05  # seconds a level must hold before it counts
    component: InputComponent = "binary_sensor"
    device_class: str | None = None
    double_press: float = 0.4  # seconds from a release to the next press that make a double press (0: none)
    long_press: float = 1.0  # seconds held that make a long press


@dataclass(frozen=True)
class DeviceConfig:
    name: str | None = None
    model: str = "Intel Edison"
    manufacturer: str = "Intel"
    outputs: Mapping[str, OutputConfig] = field(default_factory=dict)
    inputs: Mapping[str, InputConfig] = field(default_factory=dict)


_BLINK = vol.Schema({
    vol.Optional("count"): integer(*BLINK_COUNT),
    vol.Optional("on_time"): number(*BLINK_SECONDS),
    vol.Optional("off_time"): number(*BLINK_SECONDS),
})
_OUTPUT = vol.Schema({
    vol.Required("pin"): pin_id,
    vol.Optional("name"): optional(text()),
    vol.Optional("active_low"): boolean,
    vol.Optional("safe_state"): one_of("ON", "OFF", fold=True),
    vol.Optional("blink"): _BLINK,
    vol.Optional("max_age"): optional(number(above=0)),
    vol.Optional("component"): one_of("light", "switch"),
    vol.Optional("pwm"): boolean,
    vol.Optional("pwm_period"): number(*PWM_PERIOD_SECONDS),
    vol.Optional("pwm_chip"): integer(0),
    vol.Optional("pwm_channel"): integer(0),
})
_INPUT = vol.Schema({
    vol.Required("pin"): pin_id,
    vol.Optional("name"): optional(text()),
    vol.Optional("pull"): one_of("up", "down", "none"),
    vol.Optional("active_low"): boolean,
    vol.Optional("debounce"): number(0, 1),
    vol.Optional("component"): one_of("binary_sensor", "event"),
    vol.Optional("device_class"): optional(text(r"^[a-z_]+$", 64)),
    vol.Optional("double_press"): number(0, 5),
    vol.Optional("long_press"): number(0.1, 60),
})
_DEVICE = vol.Schema({
    vol.Optional("name"): optional(text()),
    vol.Optional("model"): text(),
    vol.Optional("manufacturer"): text(),
    vol.Optional("outputs"): {name: _OUTPUT},
    vol.Optional("inputs"): {name: _INPUT},
})
_CONFIG = vol.Schema({
    vol.Optional("prefix"): text(TOPIC_PREFIX_PATTERN),
    vol.Optional("discovery_prefix"): text(TOPIC_PREFIX_PATTERN),
    vol.Required("devices"): {name: _DEVICE},
    vol.Optional("access"): {name: one_of("controller", "viewer", "bridge")},
    vol.Optional("bridge"): object,  # edison-bridge's own section: it validates it
})

Problems = list[tuple[str, str]]  # (key path, what is wrong)


def _output(data: dict[str, Any]) -> OutputConfig:
    blink = BlinkPattern(**data.pop("blink", {}))
    return OutputConfig(blink=blink, **data)


def _device_problems(device_id: str, data: dict[str, Any]) -> Problems:
    """What one schema cannot say: pins and names shared, keys that apply only with another key."""
    path = f"devices.{device_id}"
    outputs, inputs = data.get("outputs", {}), data.get("inputs", {})
    problems: Problems = []
    if not outputs and not inputs:
        problems.append((path, "a device needs at least one output or input"))
    users: dict[int | str, str] = {}
    for kind, items in (("output", outputs), ("input", inputs)):
        for key, item in items.items():
            who, pin = f"{kind} {key!r}", item["pin"]
            if pin in users:
                problems.append((f"{path}.{kind}s.{key}.pin", f"{users[pin]} and {who} both use pin {pin}"))
            users.setdefault(pin, who)
    for key in sorted(set(outputs) & set(inputs)):
        problems.append((f"{path}.inputs.{key}", f"output and input {key!r} would share the topic {key}/state"))
    for key, output in outputs.items():
        for option in ("pwm_period", "pwm_chip", "pwm_channel"):
            if option in output and not output.get("pwm"):
                problems.append((f"{path}.outputs.{key}.{option}", "applies only with pwm: true"))
        given = [k for k in ("pwm_chip", "pwm_channel") if k in output]
        if len(given) == 1:
            other = "pwm_channel" if given == ["pwm_chip"] else "pwm_chip"
            problems.append((f"{path}.outputs.{key}.{other}", f"missing: {given[0]} and {other} go together"))
    for key, item in inputs.items():
        given = [k for k in ("double_press", "long_press") if k in item]
        if given and item.get("component", "binary_sensor") != "event":
            problems.append((f"{path}.inputs.{key}.{given[0]}", "applies only with component: event"))
    return problems


@dataclass(frozen=True)
class Config:
    prefix: str = "edison"
    discovery_prefix: str = "homeassistant"
    devices: Mapping[str, DeviceConfig] = field(default_factory=dict)
    access: Mapping[str, Literal["controller", "viewer", "bridge"]] = field(default_factory=dict)
    bridge: Any = None  # as read; edison-bridge validates it

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


def describe(error: vol.Invalid, under: str = "") -> tuple[str, str]:
    """(key path, message) of one voluptuous error, in the words the README shows; `under` prefixes the path."""
    path = ".".join(str(part) for part in ([under] if under else []) + list(error.path))
    message = error.msg
    if message == "extra keys not allowed":
        message = "unknown key"
    elif message == "required key not provided":
        message = "missing"
    elif message.startswith("expected dict"):
        message = "expected a mapping"
    return path, message


def problems_text(source: str, problems: Problems) -> str:
    """The message of a ConfigError: the file, then each problem with its key path."""
    lines = "\n".join(f"  {path}: {message}" if path else f"  {message}" for path, message in problems)
    return f"{source}: {len(problems)} problem(s):\n{lines}"


def validate(data: Any, source: str = "topics.yaml") -> Config:
    """The Config of already-parsed YAML data; ConfigError lists every problem with its key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        checked = _CONFIG(data)
    except vol.MultipleInvalid as exc:
        raise ConfigError(problems_text(source, [describe(e) for e in exc.errors])) from None
    problems: Problems = []
    if not checked["devices"]:
        problems.append(("devices", "expected at least one device"))
    for device_id, device in checked["devices"].items():
        problems += _device_problems(device_id, device)
    problems += [(f"access.{user}", "is a device id; devices log in as themselves")
                 for user in sorted(set(checked.get("access", {})) & set(checked["devices"]))]
    if problems:
        raise ConfigError(problems_text(source, problems))
    devices = {
        device_id: DeviceConfig(
            **{k: v for k, v in device.items() if k not in ("outputs", "inputs")},
            outputs={k: _output(dict(v)) for k, v in device.get("outputs", {}).items()},
            inputs={k: InputConfig(**v) for k, v in device.get("inputs", {}).items()},
        )
        for device_id, device in checked["devices"].items()
    }
    return Config(**{**checked, "devices": devices})


def parse(text: str, source: str = "topics.yaml") -> Config:
    """Validate the text of a topics.yaml; ConfigError says what is wrong and where."""
    try:
        data = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    return validate(data, source)


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse(text, str(path))
