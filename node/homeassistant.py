"""Home Assistant MQTT discovery: the retained config messages that make a device appear by itself.

Pure functions (configuration in, messages out) so every payload can be checked
against Home Assistant's documented schema without a broker. Each output
becomes a `light` (or a `switch`, chosen per output in topics.yaml) and a
`button` that blinks it; each input a `binary_sensor` or an `event`; all of
them follow the device's `status` topic.
"""

from __future__ import annotations

import json
from typing import Any

from node import __version__
from node.config import EVENT_TYPES, DeviceConfig
from node.link import Message
from node.topics import DeviceTopics

COMPONENTS = ("light", "switch")  # what an output may be; the button comes with either
INPUT_COMPONENTS = ("binary_sensor", "event")
ORIGIN = {"name": "edison-mqtt", "sw_version": __version__}
BLINK_EFFECT = "blink"  # the node's /set parser reads it as BLINK (plain text is case-insensitive)


def device_block(device_id: str, device: DeviceConfig) -> dict[str, Any]:
    """What groups the entities into one device in Home Assistant."""
    return {
        "identifiers": [device_id],
        "name": device.name or device_id,
        "model": device.model,
        "manufacturer": device.manufacturer,
        "sw_version": __version__,
    }


def _common(topics: DeviceTopics, device: DeviceConfig, unique_id: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "unique_id": unique_id,
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,  # commands are QoS 1 on the node's persistent session
        "device": device_block(topics.device, device),
        "origin": ORIGIN,
    }


def _message(component: str, topics: DeviceTopics, object_id: str, payload: dict[str, Any]) -> Message:
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return Message(topics.discovery(component, object_id), text.encode(), retain=True)


def _output_name(device: DeviceConfig, output: str) -> str:
    return device.outputs[output].name or output


def light(topics: DeviceTopics, device: DeviceConfig, output: str) -> Message:
    """A light in the default schema: ON/OFF, state from `/state`, a `blink` effect reported on `/effect`, and on a
    PWM output the brightness, commanded as JSON on `/set` and reported on `/brightness`.

    Home Assistant sends a turn-on with an effect as two publishes to the same
    `/set`. With its default `on_command_type: last` the `ON` would come after
    `blink` and cancel it; with `first` it comes before, so the blink runs and
    the LED is ON when it ends. A dimmable light uses `brightness` instead: a
    turn-on is then a brightness command alone (the last brightness when none is
    chosen), so ON never flashes the old brightness before the new one.
    """
    payload = {
        **_common(topics, device, f"{topics.device}_{output}", _output_name(device, output)),
        "command_topic": topics.set(output),
        "state_topic": topics.state(output),
        "payload_on": "ON",
        "payload_off": "OFF",
        "on_command_type": "first",
        "effect_command_topic": topics.set(output),
        "effect_state_topic": topics.effect(output),
        "effect_list": [BLINK_EFFECT],
    }
    if device.outputs[output].pwm:
        payload.update({
            "on_command_type": "brightness",
            "brightness_command_topic": topics.set(output),
            "brightness_command_template": '{"brightness": {{ value }}}',
            "brightness_state_topic": topics.brightness(output),
            "brightness_scale": 255,
        })
    return _message("light", topics, output, payload)


def switch(topics: DeviceTopics, device: DeviceConfig, output: str) -> Message:
    """A switch: ON/OFF, state from `/state` (for a relay rather than a lamp)."""
    payload = {
        **_common(topics, device, f"{topics.device}_{output}", _output_name(device, output)),
        "command_topic": topics.set(output),
        "state_topic": topics.state(output),
        "payload_on": "ON",
        "payload_off": "OFF",
    }
    return _message("switch", topics, output, payload)


def button(topics: DeviceTopics, device: DeviceConfig, output: str) -> Message:
    """A button that blinks the output with its default pattern from topics.yaml."""
    # "Blink" is enough on a one-output device; with several, say which output.
    name = "Blink" if len(device.outputs) == 1 else f"Blink {_output_name(device, output)}"
    payload = {
        **_common(topics, device, f"{topics.device}_{output}_blink", name),
        "command_topic": topics.set(output),
        "payload_press": "BLINK",
    }
    return _message("button", topics, f"{output}_blink", payload)


def _input_name(device: DeviceConfig, input_: str) -> str:
    return device.inputs[input_].name or input_


def binary_sensor(topics: DeviceTopics, device: DeviceConfig, input_: str) -> Message:
    """An input as a binary sensor (a contact, a motion sensor): ON/OFF from its retained `/state`."""
    cfg = device.inputs[input_]
    payload = {
        **_common(topics, device, f"{topics.device}_{input_}", _input_name(device, input_)),
        "state_topic": topics.state(input_),
        "payload_on": "ON",
        "payload_off": "OFF",
    }
    if cfg.device_class:
        payload["device_class"] = cfg.device_class
    return _message("binary_sensor", topics, input_, payload)


def event(topics: DeviceTopics, device: DeviceConfig, input_: str) -> Message:
    """An input as an event entity (a button): press, double_press and long_press from `/event`."""
    cfg = device.inputs[input_]
    payload = {
        **_common(topics, device, f"{topics.device}_{input_}", _input_name(device, input_)),
        "state_topic": topics.event(input_),
        "event_types": list(EVENT_TYPES),
    }
    if cfg.device_class:
        payload["device_class"] = cfg.device_class
    return _message("event", topics, input_, payload)


_BUILDERS = {"light": light, "switch": switch, "binary_sensor": binary_sensor, "event": event}


def announce(topics: DeviceTopics, device: DeviceConfig) -> list[Message]:
    """Every entity of the device, plus an empty config for the component an output or input is *not*.

    The empty config removes the entity of the other component, so changing
    `component:` in topics.yaml does not leave a stale light, switch, binary sensor or event behind.
    """
    messages: list[Message] = []
    for output, cfg in device.outputs.items():
        messages.append(_BUILDERS[cfg.component](topics, device, output))
        messages.extend(_removal(topics, c, output) for c in COMPONENTS if c != cfg.component)
        messages.append(button(topics, device, output))
    for input_, icfg in device.inputs.items():
        messages.append(_BUILDERS[icfg.component](topics, device, input_))
        messages.extend(_removal(topics, c, input_) for c in INPUT_COMPONENTS if c != icfg.component)
    return messages


def forget(topics: DeviceTopics, device: DeviceConfig) -> list[Message]:
    """Empty retained configs for every entity the device may have announced: Home Assistant removes them."""
    messages: list[Message] = []
    for output in device.outputs:
        messages.extend(_removal(topics, c, output) for c in COMPONENTS)
        messages.append(_removal(topics, "button", f"{output}_blink"))
    for input_ in device.inputs:
        messages.extend(_removal(topics, c, input_) for c in INPUT_COMPONENTS)
    return messages


def _removal(topics: DeviceTopics, component: str, object_id: str) -> Message:
    return Message(topics.discovery(component, object_id), b"", retain=True)
