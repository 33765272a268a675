"""Discovery payloads, checked key by key against Home Assistant's documented MQTT discovery schema.

The option tables below are from the Home Assistant documentation
(integrations/mqtt, light.mqtt "default schema", switch.mqtt, button.mqtt):
only options listed there may appear, the required ones must, and every
payload Home Assistant will send must be one the node's own parser accepts.
"""

from __future__ import annotations

import json
import re

import pytest

from node import __version__, commands, homeassistant
from node.config import BlinkPattern, Config, parse
from node.topics import DeviceTopics
from tests.node.hass import ha_turn_on

# Options every MQTT entity may carry (availability, device, origin, identity).
COMMON = {
    "name", "unique_id", "availability_topic", "payload_available", "payload_not_available", "availability",
    "availability_mode", "device", "origin", "qos", "retain", "object_id", "default_entity_id", "icon",
    "enabled_by_default", "entity_category", "encoding", "json_attributes_topic", "json_attributes_template",
}
DOCUMENTED = {
    "light": COMMON | {
        "command_topic", "state_topic", "state_value_template", "payload_on", "payload_off", "optimistic",
        "on_command_type", "effect_command_topic", "effect_command_template", "effect_list", "effect_state_topic",
        "effect_value_template", "brightness_command_topic", "brightness_state_topic", "schema",
        "brightness_command_template", "brightness_scale", "brightness_value_template",
    },
    "binary_sensor": COMMON | {
        "state_topic", "payload_on", "payload_off", "device_class", "value_template", "expire_after", "force_update",
        "off_delay",
    },
    "event": COMMON | {"state_topic", "event_types", "device_class", "value_template"},
    "switch": COMMON | {
        "command_topic", "command_template", "state_topic", "value_template", "payload_on", "payload_off",
        "state_on", "state_off", "optimistic", "device_class",
    },
    "button": COMMON | {"command_topic", "command_template", "payload_press", "device_class"},
}
REQUIRED = {
    "light": {"command_topic"},
    "switch": {"command_topic"},
    "button": {"command_topic"},
    "binary_sensor": {"state_topic"},
    "event": {"state_topic", "event_types"},
}
ON_COMMAND_TYPES = {"first", "last", "brightness"}
DEVICE_KEYS = {
    "identifiers", "connections", "name", "model", "model_id", "manufacturer", "sw_version", "hw_version",
    "serial_number", "suggested_area", "via_device", "configuration_url",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
CONFIG_TOPIC = re.compile(
    r"^homeassistant/(light|switch|button|binary_sensor|event)/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)/config$")

FLEET = """\
prefix: edison
discovery_prefix: homeassistant
devices:
  edison-1:
    name: Edison
    outputs:
      led: {name: LED, pin: 20}
      relay: {pin: 21, component: switch}
  edison-2:
    outputs:
      led: {name: LED, pin: 20}
      fan: {pin: 14, component: switch}
"""


def configs(config: Config | None = None) -> list[tuple[str, str, str, DeviceTopics, dict]]:
    """(component, device, object, topics, payload) of every non-empty config a topics.yaml announces."""
    config = config or parse(FLEET)
    found = []
    for device_id, device in config.devices.items():
        topics = config.topics(device_id)
        for message in homeassistant.announce(topics, device):
            assert message.retain, message.topic
            match = CONFIG_TOPIC.match(message.topic)
            assert match, f"not a discovery config topic: {message.topic}"
            if message.payload:
                component, node_id, object_id = match.groups()
                found.append((component, node_id, object_id, topics, json.loads(message.payload)))
    return found


def parsed(payload: str) -> commands.Command:
    return commands.parse(payload.encode(), BlinkPattern())


@pytest.mark.parametrize("component,device_id,object_id,topics,payload", configs(),
                         ids=[f"{c[1]}-{c[0]}-{c[2]}" for c in configs()])
def test_every_config_follows_the_documented_schema(component, device_id, object_id, topics, payload):
    assert set(payload) <= DOCUMENTED[component], f"undocumented keys: {set(payload) - DOCUMENTED[component]}"
    assert REQUIRED[component] <= set(payload)
    assert device_id == topics.device
    output = topics.output_of_set(payload["command_topic"])
    assert output is not None and object_id in (output, f"{output}_blink")
    assert payload["availability_topic"] == topics.status
    assert (payload["payload_available"], payload["payload_not_available"]) == ("online", "offline")
    assert payload["qos"] in (0, 1, 2)
    assert set(payload["device"]) <= DEVICE_KEYS
    assert payload["device"]["identifiers"] == [device_id]
    assert payload["device"]["sw_version"] == __version__
    assert payload["device"]["name"] and payload["device"]["model"] and payload["device"]["manufacturer"]
    assert set(payload["origin"]) <= ORIGIN_KEYS and payload["origin"]["name"]
    assert payload["name"]


@pytest.mark.parametrize("component", ["light", "switch"])
def test_on_off_entities_use_the_contract_topics_and_payloads_the_node_accepts(component):
    for kind, device_id, object_id, topics, payload in configs():
        if kind != component:
            continue
        assert payload["command_topic"] == topics.set(object_id)
        assert payload["state_topic"] == topics.state(object_id)
        assert payload["unique_id"] == f"{device_id}_{object_id}"
        assert parsed(payload["payload_on"]) == commands.Command(state="ON")
        assert parsed(payload["payload_off"]) == commands.Command(state="OFF")
        # state_on/state_off default to the payloads: they must be what the node puts on /state.
        assert {payload.get("state_on", payload["payload_on"]), payload.get("state_off", payload["payload_off"])} == {
            "ON", "OFF"}


def test_light_offers_blink_as_an_effect_on_the_set_topic():
    lights = [c for c in configs() if c[0] == "light"]
    assert len(lights) == 2
    for _, _, object_id, topics, payload in lights:
        assert payload["effect_command_topic"] == topics.set(object_id)
        assert payload["effect_list"] == ["blink"]
        assert all(parsed(effect).blink == BlinkPattern() for effect in payload["effect_list"])
        assert payload["on_command_type"] in ON_COMMAND_TYPES


def test_a_blink_chosen_in_home_assistant_is_not_cancelled_by_its_on_command():
    _, _, object_id, topics, payload = next(c for c in configs() if c[0] == "light")
    sent = ha_turn_on(payload, "blink")
    assert all(topic == topics.set(object_id) for topic, _ in sent)
    # Every command cancels the pattern running on the output: the last one decides.
    assert parsed(sent[-1][1]).blink is not None


def test_button_blinks_its_output_with_the_default_pattern():
    buttons = [c for c in configs() if c[0] == "button"]
    assert {(c[1], c[2]) for c in buttons} == {
        ("edison-1", "led_blink"), ("edison-1", "relay_blink"), ("edison-2", "led_blink"), ("edison-2", "fan_blink")}
    for _, device_id, object_id, topics, payload in buttons:
        output = object_id.removesuffix("_blink")
        assert payload["command_topic"] == topics.set(output)
        assert parsed(payload["payload_press"]) == commands.Command(blink=BlinkPattern())
        assert payload["unique_id"] == f"{device_id}_{output}_blink"
        assert "state_topic" not in payload


def test_unique_ids_and_topics_are_unique_across_a_fleet():
    found = configs()
    unique_ids = [c[4]["unique_id"] for c in found]
    assert len(unique_ids) == len(set(unique_ids)) == 8
    assert len({(c[0], c[1], c[2]) for c in found}) == len(found)


def test_component_is_chosen_per_output_and_the_other_one_is_removed():
    config = parse(FLEET)
    topics = DeviceTopics("edison", "edison-1")
    by_topic = {m.topic: m.payload for m in homeassistant.announce(topics, config.devices["edison-1"])}
    assert by_topic["homeassistant/light/edison-1/led/config"]
    assert by_topic["homeassistant/switch/edison-1/led/config"] == b""
    assert by_topic["homeassistant/switch/edison-1/relay/config"]
    assert by_topic["homeassistant/light/edison-1/relay/config"] == b""


def test_names_read_well_in_home_assistant():
    one = parse("devices:\n  edison-1:\n    name: Edison\n    outputs:\n      led: {name: LED, pin: 20}\n")
    names = {c[2]: c[4]["name"] for c in configs(one)}
    assert names == {"led": "LED", "led_blink": "Blink"}
    # With several outputs the button says which one it blinks; an output without a name uses its key.
    fleet = {(c[1], c[2]): c[4]["name"] for c in configs()}
    assert fleet[("edison-1", "relay_blink")] == "Blink relay"
    assert fleet[("edison-1", "led_blink")] == "Blink LED"


def test_discovery_prefix_comes_from_topics_yaml():
    config = parse("discovery_prefix: ha/disc\ndevices:\n  d:\n    outputs:\n      led: {pin: 20}\n")
    messages = homeassistant.announce(config.topics("d"), config.devices["d"])
    assert {m.topic for m in messages} == {
        "ha/disc/light/d/led/config", "ha/disc/switch/d/led/config", "ha/disc/button/d/led_blink/config"}


def test_forget_empties_every_config_announce_can_publish():
    config = parse(FLEET)
    for device_id, device in config.devices.items():
        topics = config.topics(device_id)
        announced = {m.topic for m in homeassistant.announce(topics, device)}
        removals = homeassistant.forget(topics, device)
        assert {m.topic for m in removals} == announced
        assert all(m.payload == b"" and m.retain for m in removals)


BOARD = """\
devices:
  edison-1:
    outputs:
      led: {name: LED, pin: 20, pwm: true}
    inputs:
      button: {name: Button, pin: 36, component: event, device_class: button}
      door: {pin: 37, device_class: door}
"""


def test_inputs_and_a_dimmable_light_follow_the_documented_schema():
    found = {(c[0], c[2]): (c[3], c[4]) for c in configs(parse(BOARD))}
    assert set(found) == {("light", "led"), ("button", "led_blink"), ("event", "button"), ("binary_sensor", "door")}
    for (component, object_id), (topics, payload) in found.items():
        assert set(payload) <= DOCUMENTED[component], f"undocumented keys: {set(payload) - DOCUMENTED[component]}"
        assert REQUIRED[component] <= set(payload)
        assert payload["availability_topic"] == topics.status and payload["unique_id"] == f"edison-1_{object_id}"
    topics, event = found[("event", "button")]
    assert (event["state_topic"], event["event_types"], event["device_class"]) == (
        topics.event("button"), ["press", "double_press", "long_press"], "button")
    topics, door = found[("binary_sensor", "door")]
    assert (door["state_topic"], door["payload_on"], door["payload_off"]) == (topics.state("door"), "ON", "OFF")
    topics, light = found[("light", "led")]
    assert light["brightness_state_topic"] == topics.brightness("led")
    assert light["effect_state_topic"] == topics.effect("led")
    # Home Assistant renders the template with the brightness as `value` and publishes it to /set.
    rendered = light["brightness_command_template"].replace("{{ value }}", "77")
    assert parsed(rendered) == commands.Command(brightness=77)


def test_forget_also_empties_the_inputs_configs():
    config = parse(BOARD)
    topics = config.topics("edison-1")
    announced = {m.topic for m in homeassistant.announce(topics, config.devices["edison-1"])}
    assert {m.topic for m in homeassistant.forget(topics, config.devices["edison-1"])} == announced
    assert "homeassistant/binary_sensor/edison-1/button/config" in announced  # the other component, emptied
