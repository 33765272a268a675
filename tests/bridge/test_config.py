"""The `bridge:` section belongs to the bridge: it validates it, and a mistake there never stops the node."""

from __future__ import annotations

import pytest

from bridge.config import section
from node import config as node_config
from node.config import ConfigError
from node.secret import SecretError, secret
from testkit.node import DEVICE, TOPICS_YAML
from testkit.procs import Proc, python_cmd

TRIGGER = f"[{{phrase: L Chika, device: {DEVICE}, output: led, command: BLINK}}]"


def bridge_section(text: str):
    return section(node_config.parse(TOPICS_YAML + text, "site.yaml"), "site.yaml")


def test_a_plain_allow_list_keeps_meaning_x_accounts():
    cfg = bridge_section(f"bridge:\n  allow: [k_yone, '2244994945']\n  triggers: {TRIGGER}\n")
    assert cfg.allow.x == ("k_yone", "2244994945") and cfg.allow.bluesky == () and cfg.allow.mastodon == ()


def test_allow_lists_per_network():
    cfg = bridge_section("bridge:\n  allow:\n    bluesky: ['@KYone.bsky.social', 'did:plc:ewvi7nxzyoun6zhxrhs64oiz']\n"
                         f"    mastodon: ['@kyone@mastodon.social', bot]\n  triggers: {TRIGGER}\n")
    assert cfg.allow.x == ()
    assert cfg.allow.bluesky == ("kyone.bsky.social", "did:plc:ewvi7nxzyoun6zhxrhs64oiz")
    assert cfg.allow.mastodon == ("kyone@mastodon.social", "bot")


@pytest.mark.parametrize("text, message", [
    (f"bridge:\n  allow: {{bluesky: [not a handle]}}\n  triggers: {TRIGGER}\n",
     "bridge.allow.bluesky.0: expected a Bluesky handle or DID"),
    (f"bridge:\n  allow: {{mastodon: ['a@b@c']}}\n  triggers: {TRIGGER}\n", "bridge.allow.mastodon.0"),
    (f"bridge:\n  allow: {{threads: [a]}}\n  triggers: {TRIGGER}\n", "bridge.allow.threads: unknown key"),
    (f"bridge:\n  allow: {{x: []}}\n  triggers: {TRIGGER}\n", "no account on any network"),
    ("bridge:\n  allow: [a]\n  triggers: [{phrase: p, device: nope, output: led, command: ON}]\n",
     "bridge.triggers.0.device: no device 'nope'"),
    (f"bridge:\n  allow: [a]\n  triggers: [{{phrase: p, device: {DEVICE}, output: fan, command: ON}}]\n",
     f"bridge.triggers.0.output: device '{DEVICE}' has no output 'fan'"),
    ("bridge:\n  allow: [a]\n  triggers: [{phrase: p, device: d, output: o, command: ON, count: 2}]\n",
     "only apply to command BLINK"),
    (f"bridge:\n  allow: [a]\n  triggers: {TRIGGER}\n  expiry: -1\n", "bridge.expiry"),
])
def test_bad_bridge_section_names_file_and_key_path(text, message):
    with pytest.raises(ConfigError) as info:
        bridge_section(text)
    assert str(info.value).startswith("site.yaml: ") and message in str(info.value)


BROKEN = "bridge:\n  allow: 5\n  nonsense: true\n  triggers: [{phrase: p, device: nope}]\n"


def test_the_nodes_loader_treats_the_bridge_section_as_opaque():
    assert node_config.parse(TOPICS_YAML + BROKEN).devices[DEVICE].outputs["led"].pin == 20


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_a_broken_bridge_section_stops_the_bridge_but_not_the_node(broker, probe, nodes, tmp_path):
    nodes.config.write_text(TOPICS_YAML + BROKEN)
    nodes.start(wait_online=probe)
    bridge = Proc(python_cmd("bridge", "--config", str(nodes.config), "--broker", broker.url, "--source", "stdin",
                             "--state", str(tmp_path / "state")), tmp_path / "bridge.log")
    assert bridge.wait() == 2
    assert f"{nodes.config}: " in bridge.output and "bridge.allow" in bridge.output


@pytest.mark.parametrize("extra, env, message", [
    (["--source", "mastodon"], {}, "--source mastodon needs --mastodon-url"),
    (["--source", "mastodon", "--mastodon-url", "https://m.example"], {},
     "no Mastodon access token: set MASTODON_ACCESS_TOKEN or MASTODON_ACCESS_TOKEN_FILE"),
    (["--source", "stdin", "--source", "x"], {}, "--source stdin reads posts from stdin alone"),
    (["--source", "bluesky"], {}, "--source bluesky: bridge.allow.bluesky in "),
    (["--source", "x"], {"X_BEARER_TOKEN": "a", "X_BEARER_TOKEN_FILE": "/nonexistent"},
     "set X_BEARER_TOKEN or X_BEARER_TOKEN_FILE, not both"),
])
def test_a_source_without_what_it_needs_stops_the_start(tmp_path, extra, env, message):
    config = tmp_path / "topics.yaml"
    config.write_text(TOPICS_YAML + f"bridge:\n  allow: {{x: [k_yone], mastodon: [kyone]}}\n  triggers: {TRIGGER}\n")
    bridge = Proc(python_cmd("bridge", "--config", str(config), "--state", str(tmp_path / "state"), *extra),
                  tmp_path / "bridge.log", env={"X_BEARER_TOKEN": "", "MASTODON_ACCESS_TOKEN": "", **env})
    assert bridge.wait() == 2
    assert message in bridge.output


def test_a_secret_comes_from_its_variable_or_the_file_it_names(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    assert secret("MASTODON_ACCESS_TOKEN", {"MASTODON_ACCESS_TOKEN": "abc"}) == "abc"
    assert secret("MASTODON_ACCESS_TOKEN", {"MASTODON_ACCESS_TOKEN_FILE": str(token)}) == "s3cret-token"
    assert secret("MASTODON_ACCESS_TOKEN", {"MASTODON_ACCESS_TOKEN": ""}) is None
    with pytest.raises(SecretError, match="not both"):
        secret("X", {"X": "a", "X_FILE": str(token)})
    with pytest.raises(SecretError, match=r"X_FILE: cannot read .*nope") as info:
        secret("X", {"X_FILE": str(tmp_path / "nope")})
    assert "s3cret" not in str(info.value)


def test_every_problem_of_the_section_is_told_in_one_pass():
    """An unknown key, a bad value and a trigger aimed at a missing output: all three at once, not one per start."""
    with pytest.raises(ConfigError) as caught:
        bridge_section("bridge:\n  allow: [k_yone]\n  expiry: -1\n  colour: red\n"
                       f"  triggers: [{{phrase: p, device: {DEVICE}, output: nope, command: ON}}]\n")
    text = str(caught.value)
    assert "3 problem(s)" in text, text
    for told in ("bridge.colour: unknown key", "bridge.expiry:", f"bridge.triggers.0.output: device '{DEVICE}' has no "
                 "output 'nope'"):
        assert told in text, text
