"""The `/set` payload grammar: plain ON/OFF/TOGGLE/BLINK or a JSON object.

Parsing is pure (bytes in, Command or CommandError out) so every kind of bad
input can be tested without a broker, and the node can answer each one with a
clear error instead of dropping it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from node.config import BLINK_COUNT, BLINK_SECONDS, BlinkPattern

MAX_PAYLOAD = 4096
PLAIN = ("ON", "OFF", "TOGGLE", "BLINK")

State = Literal["ON", "OFF", "TOGGLE"]


class CommandError(ValueError):
    """The payload is not a command; the message says why, for the result and the log.

    `id` carries the command's own id when it could be read, so the error result
    still correlates with the request.
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


class _JsonCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: State | None = None
    effect: Literal["blink"] | None = None
    count: int | None = Field(None, ge=BLINK_COUNT[0], le=BLINK_COUNT[1], strict=True)
    on_time: float | None = Field(None, ge=BLINK_SECONDS[0], le=BLINK_SECONDS[1])
    off_time: float | None = Field(None, ge=BLINK_SECONDS[0], le=BLINK_SECONDS[1])
    id: str | None = Field(None, min_length=1, max_length=128)
    expires: float | None = None
    source: dict[str, Any] | None = None

    @field_validator("state", "effect", mode="before")
    @classmethod
    def _fold_case(cls, value: object, info) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip()
        return value.upper() if info.field_name == "state" else value.lower()

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

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
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError("payload is not UTF-8 text") from None
    if not text:
        raise CommandError(f"empty payload (expected {', '.join(PLAIN)} or a JSON object)")
    if text.startswith(("{", "[")):
        return _parse_json(text, default_blink)
    if not text.isprintable():
        raise CommandError(f"payload has control characters (expected {', '.join(PLAIN)} or a JSON object)")
    word = text.upper()
    if word not in PLAIN:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise CommandError(f"unknown command {shown!r} (expected {', '.join(PLAIN)} or a JSON object)")
    return Command(blink=default_blink) if word == "BLINK" else Command(state=word)  # type: ignore[arg-type]


def _parse_json(text: str, default_blink: BlinkPattern) -> Command:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError("a JSON command must be an object")
    raw_id = data.get("id")
    command_id = str(raw_id) if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else None
    try:
        body = _JsonCommand.model_validate(data)
    except ValidationError as exc:
        raise CommandError(_describe(exc), command_id) from None
    blink = None
    if body.effect == "blink":
        overrides = {k: getattr(body, k) for k in ("count", "on_time", "off_time") if getattr(body, k) is not None}
        blink = default_blink.model_copy(update=overrides)
    return Command(state=body.state, blink=blink, id=body.id, expires=body.expires, source=body.source)
