"""topics.yaml: the shipped file, YAML 1.1 traps, errors that name the file, key and expectation, a device's topics."""

from __future__ import annotations

import pytest
from paho.mqtt.client import topic_matches_sub as topic_matches

from node import config
from node.config import BlinkPattern, ConfigError
from node.topics import DeviceTopics, Layout
from testkit.procs import ROOT


def test_shipped_topics_yaml_describes_the_reference_device():
    cfg = config.load(ROOT / "topics.yaml")
    led = cfg.device("edison-1").outputs["led"]
    assert (led.pin, led.active_low, led.safe_state) == (20, False, "OFF")
    assert led.blink == BlinkPattern(count=10, on_time=0.3, off_time=0.3)


def test_yaml_1_1_booleans_stay_words():
    cfg = config.parse("devices:\n  d:\n    outputs:\n      led: {pin: 1, safe_state: ON}\n")
    assert cfg.devices["d"].outputs["led"].safe_state == "ON"


@pytest.mark.parametrize("text, message", [
    ("devices:\n  d:\n    outputs:\n      led: {pin: 1, colour: red}\n", "devices.d.outputs.led.colour: unknown key"),
    ("devices:\n  d:\n    outputs:\n      led: {pin: -1}\n",
     "devices.d.outputs.led.pin: expected a pin number (0 or more) or a line name (got -1)"),
    ("devices:\n  d:\n    outputs:\n      led: {pin: 1, blink: {count: 0}}\n", "devices.d.outputs.led.blink.count"),
    ("devices:\n  d:\n    outputs:\n      led: {pin: 1, safe_state: DIM}\n", "devices.d.outputs.led.safe_state"),
    ("devices:\n  d:\n    outputs:\n      a: {pin: 1}\n      b: {pin: 1}\n", "both use pin 1"),
    ("devices:\n  d/x:\n    outputs:\n      a: {pin: 1}\n", "devices.d/x"),
    ("devices: {}\n", "devices"),
    ("prefix: a/#\ndevices:\n  d:\n    outputs:\n      a: {pin: 1}\n", "prefix"),
    ("devices:\n  d:\n    outputs: {a: {pin: 1}}\naccess: {d: controller}\n", "is a device id"),
    ("devices: [\n", "not valid YAML"),
    ("- a\n", "expected a mapping"),
])
def test_bad_config_names_file_key_path_and_expectation(text, message):
    with pytest.raises(ConfigError) as info:
        config.parse(text, "site.yaml")
    assert str(info.value).startswith("site.yaml: ")
    assert message in str(info.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.yaml")


def test_topics_of_a_device():
    t = DeviceTopics("edison", "edison-1")
    assert t.set("led") == "edison/edison-1/led/set"
    assert t.output_of_set("edison/edison-1/led/set") == "led"
    for other in ("edison/edison-1/led/state", "edison/edison-2/led/set", "x/edison/edison-1/led/set",
                  "edison/edison-1//set", "edison/edison-1/led/set/x"):
        assert t.output_of_set(other) is None


def test_every_topic_the_device_uses_falls_under_its_own_rules():
    """The node's subscriptions and publishes, and the broker's rules for it, come from the same layout."""
    layout = Layout("site/a", "ha")
    t = layout.device("d1")
    assert t.subscriptions == ("site/a/d1/+/set", "ha/status")
    published = [t.status, t.result, t.state("led"), t.discovery("light", "led"), t.discovery("button", "led_blink")]
    assert all(topic_matches(t.everything, p) or topic_matches(t.discovery_filter, p) for p in published)
    assert topic_matches(layout.every_set, t.set("led")) and topic_matches(layout.every_result, t.result)
    assert not topic_matches(t.everything, layout.device("d2").status)
