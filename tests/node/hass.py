"""Home Assistant's side of MQTT as the tests play it: what its light publishes for a turn_on, and the discovery
configs it receives when it starts."""

from __future__ import annotations

import json


def ha_turn_on(payload: dict, effect: str) -> list[tuple[str, str]]:
    """The publishes of Home Assistant's default-schema light for turn_on(effect=...), in its order.

    (homeassistant/components/mqtt/light/schema_basic.py, async_turn_on: the
    on payload first when on_command_type is `first`, then the effect, then
    the on payload when it is `last`, the default.)
    """
    order = payload.get("on_command_type", "last")
    sent = [(payload["command_topic"], payload["payload_on"])] if order == "first" else []
    sent.append((payload["effect_command_topic"], effect))
    if order == "last":
        sent.append((payload["command_topic"], payload["payload_on"]))
    return sent


def retained_configs(probe_factory) -> dict[str, dict]:
    """The discovery configs a client subscribing now receives (what Home Assistant gets at its start)."""
    p = probe_factory()
    p.subscribe("homeassistant/#", "marker/ha")
    # The broker sends retained messages while handling the subscribe, before this client's next publish.
    p.publish("marker/ha", "end")
    p.wait_for("marker/ha", "end")
    return {m.topic: json.loads(m.payload) for m in p.seen if m.topic.startswith("homeassistant/") and m.payload}
