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

import voluptuous as vol

from node.config import (BLINK_COUNT, BLINK_SECONDS, BRIGHTNESS, TRANSITION_SECONDS, BlinkPattern, describe, integer,
                         number)

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
    brightness: int | None = None  # 0..255; 0 turns the output off and keeps the brightness ON restores
    transition: float | None = None  # seconds to fade to the new level
    id: str | None = None
    expires: float | None = None  # unix time
    source: dict[str, Any] | None = None


def _word(*choices: str) -> Any:
    """An ASCII word among `choices`, trimmed and case-folded (look-alikes are refused, not folded)."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise vol.Invalid(f"expected one of {', '.join(choices)} (got {value!r})")
        if not value.isascii():
            raise vol.Invalid(f"{value[:40]!r} is not an ASCII word")
        word = value.strip(_SPACE)
        word = word.upper() if choices[0].isupper() else word.lower()
        if word not in choices:
            raise vol.Invalid(f"expected one of {', '.join(choices)} (got {value[:40]!r})")
        return word

    return check


def _command_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise vol.Invalid(f"expected a string of 1 to 128 characters (got {str(value)[:40]!r})")
    if not value.isprintable():
        raise vol.Invalid("has control characters")
    return value


def _source(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise vol.Invalid(f"expected an object (got {str(value)[:40]!r})")
    return value


_JSON_COMMAND = vol.Schema({
    vol.Optional("state"): _word("ON", "OFF", "TOGGLE"),
    vol.Optional("effect"): _word("blink"),
    vol.Optional("count"): integer(*BLINK_COUNT),
    vol.Optional("on_time"): number(*BLINK_SECONDS),
    vol.Optional("off_time"): number(*BLINK_SECONDS),
    vol.Optional("brightness"): integer(*BRIGHTNESS),
    vol.Optional("transition"): number(*TRANSITION_SECONDS),
    vol.Optional("id"): _command_id,
    vol.Optional("expires"): number(),
    vol.Optional("source"): _source,
})
_PATTERN = ("count", "on_time", "off_time")


def _meaning(body: dict[str, Any]) -> str | None:
    """What the schema cannot say about a JSON command: which keys need which."""
    if not {"state", "effect", "brightness"} & set(body):
        return 'needs "state", "effect" or "brightness"'
    pattern = [k for k in _PATTERN if k in body]
    if pattern and "effect" not in body:
        return f'{", ".join(pattern)} need "effect": "blink"'
    if "transition" in body and not {"state", "brightness"} & set(body):
        return 'transition needs "state" or "brightness" (what to fade to)'
    return None


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
        body = _JSON_COMMAND(data)
    except vol.MultipleInvalid as exc:
        problems = (describe(e) for e in exc.errors)
        message = "; ".join(f"{path}: {what}" if path else what for path, what in problems)
        raise CommandError(message, _readable_id(data.get("id"))) from None
    problem = _meaning(body)
    if problem:
        raise CommandError(problem, body.get("id"))
    blink = None
    if body.get("effect") == "blink":
        blink = default_blink.but(**{k: body[k] for k in _PATTERN if k in body})
    return Command(state=body.get("state"), blink=blink, brightness=body.get("brightness"),
                   transition=body.get("transition"), id=body.get("id"), expires=body.get("expires"),
                   source=body.get("source"))
