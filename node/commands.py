"""The `/set` payload grammar: plain ON/OFF/TOGGLE/BLINK or a JSON object.

Parsing is pure (bytes in, Command or CommandError out) so every kind of bad
input can be tested without a broker, and the node can answer each one with a
clear error instead of dropping it. Commands are ASCII words and finite JSON
numbers: anything that only looks like them (`oﬀ` with a ligature, `blınk`
with a dotless i, `true` for a number, NaN, a key given twice) is refused, so
what the node does is what the sender wrote.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from node.config import BLINK_COUNT, BLINK_SECONDS, BlinkPattern

MAX_PAYLOAD = 4096
MAX_DEPTH = 8  # nesting of JSON objects and arrays; a command needs 2 (a `source` object)
PLAIN = ("ON", "OFF", "TOGGLE", "BLINK")
_EXPECTED = f"expected {', '.join(PLAIN)} or a JSON object"
_SPACE = " \t\r\n"  # JSON's white space, also what is trimmed from plain words

State = Literal["ON", "OFF", "TOGGLE"]


class CommandError(ValueError):
    """The payload is not a command; the message says why, for the result and the log.

    `command_id` carries the command's own id when it could be read, so the
    error result still correlates with the request.
    """

    def __init__(self, message: str, command_id: str | None = None) -> None:
        super().__init__(message)
        self.command_id = command_id


@dataclass(frozen=True)
class Command:
    state: State | None = None
    blink: BlinkPattern | None = None
    id: str | None = None
    expires: float | None = None  # unix time
    source: dict[str, Any] | None = None


def _seconds() -> Any:
    return Field(None, ge=BLINK_SECONDS[0], le=BLINK_SECONDS[1], strict=True, allow_inf_nan=False)


class _JsonCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: State | None = None
    effect: Literal["blink"] | None = None
    count: int | None = Field(None, ge=BLINK_COUNT[0], le=BLINK_COUNT[1], strict=True)
    on_time: float | None = _seconds()
    off_time: float | None = _seconds()
    id: str | None = Field(None, min_length=1, max_length=128)
    expires: float | None = Field(None, strict=True, allow_inf_nan=False)
    source: dict[str, Any] | None = None

    @field_validator("state", "effect", mode="before")
    @classmethod
    def _fold_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        if not value.isascii():
            raise ValueError(f"{value[:40]!r} is not an ASCII word")
        value = value.strip(_SPACE)
        return value.upper() if info.field_name == "state" else value.lower()

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and not value.isprintable():
            raise ValueError("has control characters")
        return value

    @model_validator(mode="after")
    def _meaningful(self) -> _JsonCommand:
        if self.state is None and self.effect is None:
            raise ValueError('needs "state" or "effect"')
        pattern = [k for k in ("count", "on_time", "off_time") if getattr(self, k) is not None]
        if pattern and self.effect is None:
            raise ValueError(f'{", ".join(pattern)} need "effect": "blink"')
        return self


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(p) for p in error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        if error["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        parts.append(f"{key}: {message}" if key else message)
    return "; ".join(parts)


def parse(payload: bytes, default_blink: BlinkPattern) -> Command:
    """Turn a `/set` payload into a Command, or raise CommandError."""
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte limit")
    try:
        text = payload.decode("utf-8").strip(_SPACE)
    except UnicodeDecodeError:
        raise CommandError("payload is not UTF-8 text") from None
    if not text:
        raise CommandError(f"empty payload ({_EXPECTED})")
    if text.startswith(("{", "[")):
        return _parse_json(text, default_blink)
    if text.isascii() and not text.isprintable():
        raise CommandError(f"payload has control characters ({_EXPECTED})")
    word = text.upper()
    if not text.isascii() or word not in PLAIN:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise CommandError(f"unknown command {shown!r} ({_EXPECTED}; commands are ASCII words)")
    return Command(blink=default_blink) if word == "BLINK" else Command(state=word)  # type: ignore[arg-type]


def _nesting(text: str) -> int:
    """How deeply objects and arrays nest, outside strings: checked before json.loads, which recurses."""
    if text.count("{") + text.count("[") <= MAX_DEPTH:
        return 0  # cannot be too deep: the common case costs two counts
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif in_string:
            escaped = char == "\\"
            in_string = char != '"'
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "}]":
            depth -= 1
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise CommandError(f"key {key[:40]!r} is given more than once")
        found[key] = value
    return found


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise CommandError(f"number {text[:40]} is out of range")
    return value


def _not_a_number(name: str) -> Any:
    raise CommandError(f"{name} is not a JSON number")


def _readable_id(value: object) -> str | None:
    """The id to answer a refused command with, when it is one the sender could have meant."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable() else None


def _parse_json(text: str, default_blink: BlinkPattern) -> Command:
    if _nesting(text) > MAX_DEPTH:
        raise CommandError(f"JSON nested more than {MAX_DEPTH} levels deep")
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_float=_finite, parse_constant=_not_a_number)
    except json.JSONDecodeError as exc:
        raise CommandError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError("a JSON command must be an object")
    try:
        body = _JsonCommand.model_validate(data)
    except ValidationError as exc:
        raise CommandError(_describe(exc), _readable_id(data.get("id"))) from None
    blink = None
    if body.effect == "blink":
        overrides = {k: getattr(body, k) for k in ("count", "on_time", "off_time") if getattr(body, k) is not None}
        blink = default_blink.model_copy(update=overrides)
    return Command(state=body.state, blink=blink, id=body.id, expires=body.expires, source=body.source)
