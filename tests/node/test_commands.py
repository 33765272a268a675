"""The payload grammar of /set: plain words and JSON, and the clear error every bad payload gets."""

from __future__ import annotations

import json

import pytest

from node import commands
from node.commands import CommandError
from node.config import BlinkPattern

DEFAULT = BlinkPattern(count=10, on_time=0.3, off_time=0.3)


@pytest.mark.parametrize("payload, state", [(b"ON", "ON"), (b" off\n", "OFF"), (b"Toggle", "TOGGLE")])
def test_plain_states_are_trimmed_and_case_insensitive(payload, state):
    assert commands.parse(payload, DEFAULT) == commands.Command(state=state)


def test_plain_blink_uses_the_outputs_default_pattern():
    assert commands.parse(b"blink", DEFAULT).blink == DEFAULT


def test_json_command_with_every_key():
    cmd = commands.parse(json.dumps({
        "state": "on", "effect": "BLINK", "count": 3, "on_time": 0.05, "id": 7, "expires": 2e9,
        "source": {"via": "x", "post": "1"}}).encode(), DEFAULT)
    assert cmd.state == "ON"
    assert cmd.blink == BlinkPattern(count=3, on_time=0.05, off_time=0.3)
    assert (cmd.id, cmd.expires, cmd.source) == ("7", 2e9, {"via": "x", "post": "1"})


@pytest.mark.parametrize("payload, error", [
    (b"", "empty payload"),
    (b"   ", "empty payload"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"\x00\x01\x02", "control characters"),
    (b"x" * 4097, "over the 4096-byte limit"),
    (b"DANCE", "unknown command 'DANCE'"),
    (b"{", "malformed JSON"),
    (b'{"state": "ON",}', "malformed JSON"),
    (b"[1, 2]", "must be an object"),
    (b"{}", 'needs "state", "effect" or "brightness"'),
    (b'{"state": "DIM"}', "state"),
    (b'{"effect": "strobe"}', "effect"),
    (b'{"effect": "blink", "count": 0}', "count"),
    (b'{"effect": "blink", "count": 1001}', "count"),
    (b'{"effect": "blink", "count": 2.5}', "count"),
    (b'{"effect": "blink", "on_time": 0.01}', "on_time"),
    (b'{"effect": "blink", "off_time": 61}', "off_time"),
    (b'{"state": "ON", "count": 3}', 'need "effect": "blink"'),
    (b'{"state": "ON", "colour": "red"}', "colour: unknown key"),
    (b'{"on": true}', "on: unknown key"),
    (b'{"state": "ON", "expires": "soon"}', "expires"),
    (b'{"state": "ON", "expires": NaN}', "NaN is not a JSON number"),
    (b'{"state": "ON", "expires": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"state": "ON", "expires": 1e999}', "number 1e999 is out of range"),
    (b'{"state": "ON", "expires": true}', "expires: expected a number"),
    (b'{"effect": "blink", "on_time": true}', "on_time: expected a number"),
    (b'{"effect": "blink", "count": true}', "count"),
    (b'{"state": "BAD", "state": "ON"}', "key 'state' is given more than once"),
    (b'{"state": "ON", "source": {"a": 1, "a": 2}}', "key 'a' is given more than once"),
    (b"[" * 999 + b"]" * 999, "JSON nested more than 8 levels deep"),
    (b'{"state": "ON", "source": ' + b"[" * 999 + b"]" * 999 + b"}", "nested more than"),
    ("o\ufb00".encode(), "unknown command 'oﬀ'"),  # a ligature: upper() makes it OFF
    ("bl\u0131nk".encode(), "ASCII words"),  # a dotless i: upper() makes it BLINK
    ("\u212aON".encode(), "ASCII words"),
    ('{"effect": "\u212a"}'.encode(), "effect: '\u212a' is not an ASCII word"),
    ('{"state": "o\ufb00"}'.encode(), "not an ASCII word"),
    (b'{"state": "ON", "id": "a\\u0000b"}', "id: has control characters"),
])
def test_bad_payloads_get_a_clear_error(payload, error):
    with pytest.raises(CommandError, match=error.replace("(", r"\(")):
        commands.parse(payload, DEFAULT)


def test_error_keeps_the_commands_id_for_the_result():
    with pytest.raises(CommandError) as info:
        commands.parse(b'{"id": "abc", "state": "MAYBE"}', DEFAULT)
    assert info.value.command_id == "abc"


def test_json_strings_do_not_count_towards_nesting():
    deep_text = json.dumps({"state": "ON", "id": "[{" * 60})
    assert commands.parse(deep_text.encode(), DEFAULT).id == "[{" * 60
