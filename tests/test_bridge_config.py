"""The `bridge:` section belongs to the bridge: it validates it, and a mistake there never stops the node."""

from __future__ import annotations

import pytest

from bridge.config import section
from node import config as node_config
from node.config import ConfigError
from tests.conftest import DEVICE, TOPICS_YAML
from tests.helpers import Proc, python_cmd

TRIGGER = f"[{{phrase: L Chika, device: {DEVICE}, output: led, command: BLINK}}]"


def bridge_section(text: str):
    return section(node_config.parse(TOPICS_YAML + text, "site.yaml"), "site.yaml")


def test_a_plain_allow_list_keeps_meaning_x_accounts():
    cfg = bridge_section(f"bridge:\n  allow: [k_yone, '2244994945']\n  triggers: {TRIGGER}\n")
    assert cfg.allow.x == ["k_yone", "2244994945"] and cfg.allow.bluesky == [] and cfg.allow.mastodon == []


def test_allow_lists_per_network():
    cfg = bridge_section("bridge:\n  allow:\n    bluesky: ['@KYone.bsky.social', 'did:plc:ewvi7nxzyoun6zhxrhs64oiz']\n"
                         f"    mastodon: ['@kyone@mastodon.social', bot]\n  triggers: {TRIGGER}\n")
    assert cfg.allow.x == []
    assert cfg.allow.bluesky == ["kyone.bsky.social", "did:plc:ewvi7nxzyoun6zhxrhs64oiz"]
    assert cfg.allow.mastodon == ["kyone@mastodon.social", "bot"]


@pytest.mark.parametrize("text, message", [
    (f"bridge:\n  allow: {{bluesky: [not a handle]}}\n  triggers: {TRIGGER}\n", "bridge.allow.bluesky.0: String should match"),
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


@pytest.mark.parametrize("broker", ["amqtt"], indirect=True)
def test_a_broken_bridge_section_stops_the_bridge_but_not_the_node(broker, probe, nodes, tmp_path):
    nodes.config.write_text(TOPICS_YAML + BROKEN)
    nodes.start(wait_online=probe)
    bridge = Proc(python_cmd("bridge", "--config", str(nodes.config), "--broker", broker.url, "--source", "stdin",
                             "--state", str(tmp_path / "state")), tmp_path / "bridge.log")
    assert bridge.wait() == 2
    assert f"{nodes.config}: " in bridge.output and "bridge.allow" in bridge.output
