"""Property: every `/set` message gets exactly one result, and a refused one changes no pin (hypothesis).

The payloads mix what senders get wrong on purpose and by accident: random
bytes and text, JSON of every shape (deep, duplicate keys, NaN, booleans
where numbers go), and words that only look like commands.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import commands
from node.config import BlinkPattern
from tests.node.rig import TOPICS, Rig

KEYS = ["state", "effect", "count", "on_time", "off_time", "id", "expires", "source"]
WORDS = ["ON", "OFF", "TOGGLE", "BLINK", " on\n", "Blink", "o\ufb00", "bl\u0131nk", "\u212aON", "\uff2f\uff2e",
         "ON\u00a0", "toggle\x00", "BLINK!", "{", "[1]", "null"]

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
                | st.sampled_from(WORDS + ["blink"]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4),
                           max_leaves=12)
json_commands = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6).map(json.dumps)
duplicate_keys = st.builds(lambda key, a, b: f'{{"{key}": {json.dumps(a)}, "{key}": {json.dumps(b)}}}',
                           st.sampled_from(KEYS), json_scalars, json_scalars)
depths = st.integers(1, 12) | st.integers(900, 2000)  # json.loads recurses: about 1000 levels end it
deep = st.builds(lambda n, inner: "[" * n + inner + "]" * n, depths, st.sampled_from(["", '"ON"']))
deep_source = depths.map(lambda n: '{"state": "ON", "source": ' + "[" * n + "]" * n + "}")
payloads = st.one_of(
    st.binary(max_size=5000),
    st.text(max_size=60).map(str.encode),
    st.sampled_from(WORDS).map(str.encode),
    json_commands.map(str.encode),
    duplicate_keys.map(str.encode),
    deep.map(str.encode),
    deep_source.map(str.encode),
)


@settings(max_examples=400, deadline=None)
@given(payloads)
def test_parse_returns_a_command_or_a_command_error_and_nothing_else(payload):
    try:
        command = commands.parse(payload, BlinkPattern())
    except commands.CommandError as exc:
        assert str(exc)
    else:
        assert command.state is not None or command.blink is not None
        text = payload.decode("utf-8").strip()
        if not text.startswith("{"):
            assert text.isascii() and text.upper() in commands.PLAIN, text
            return
        pairs = json.loads(text, object_pairs_hook=lambda p: p, parse_constant=float)
        assert len({key for key, _ in pairs}) == len(pairs), "a key given twice was accepted"
        for key, value in pairs:
            if key in ("count", "on_time", "off_time", "expires"):
                assert type(value) in (int, float) and math.isfinite(value), (key, value)
            if key in ("state", "effect"):
                assert value.isascii(), (key, value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(payloads, st.sampled_from(["led", "relay", "lamp"]), st.booleans(), st.booleans()),
                min_size=1, max_size=4))
def test_every_message_gets_exactly_one_result_and_refusals_change_no_pin(messages):
    with tempfile.TemporaryDirectory() as state:
        rig = Rig(Path(state))
        accepted: set[str] = set()  # ids whose blinks may still be changing pins
        try:
            for n, (payload, output, retain, dup) in enumerate(messages, 1):
                before = len(rig.pins.history)
                rig.link.deliver(TOPICS.set(output), payload, retain=retain, dup=dup)
                results = rig.link.on(TOPICS.result)
                assert len(results) == n
                result = json.loads(results[-1].payload)
                assert result["output"] == output and isinstance(result["id"], str) and result["id"]
                assert "internal error" not in result.get("error", "")
                if result["ok"]:
                    accepted.add(result["id"])
                elif result["id"] not in accepted:  # every change carries the id of the command that made it
                    assert not [c for c in rig.pins.history[before:] if c.id == result["id"]], result
        finally:
            rig.close()
