"""The real node with a real broker, seen from Home Assistant's side of MQTT."""

from __future__ import annotations

import json
import signal

from tests.conftest import DEVICE, start_amqtt, start_mosquitto
from tests.helpers import Probe, Proc, python_cmd, read_trace
from tests.test_homeassistant_discovery import ha_turn_on

LIGHT = f"homeassistant/light/{DEVICE}/led/config"
ENTITIES = [  # in the order the node announces them
    LIGHT,
    f"homeassistant/button/{DEVICE}/led_blink/config",
    f"homeassistant/light/{DEVICE}/relay/config",
    f"homeassistant/button/{DEVICE}/relay_blink/config",
]
LED_STATE = f"edison/{DEVICE}/led/state"
RELAY_STATE = f"edison/{DEVICE}/relay/state"


def retained_configs(probe_factory) -> dict[str, dict]:
    """The discovery configs a client subscribing now receives (what Home Assistant gets at its start)."""
    p = probe_factory()
    p.subscribe("homeassistant/#", "marker/ha")
    # The broker sends retained messages while handling the subscribe, before this client's next publish.
    p.publish("marker/ha", "end")
    p.wait_for("marker/ha", "end")
    return {m.topic: json.loads(m.payload) for m in p.seen if m.topic.startswith("homeassistant/") and m.payload}


def test_discovery_is_retained_and_follows_online(broker, probe_factory, nodes):
    watcher = probe_factory()
    watcher.subscribe(f"edison/{DEVICE}/status", "homeassistant/#")
    nodes.start(wait_online=watcher)
    watcher.wait_for(f"homeassistant/button/{DEVICE}/relay_blink/config")
    topics = [m.topic for m in watcher.seen]
    assert topics.index(f"edison/{DEVICE}/status") < min(topics.index(t) for t in ENTITIES)

    found = retained_configs(probe_factory)
    assert set(found) == set(ENTITIES)
    assert found[LIGHT]["state_topic"] == LED_STATE
    assert found[LIGHT]["availability_topic"] == f"edison/{DEVICE}/status"


def test_home_assistant_birth_brings_discovery_and_states_again(broker, probe_factory, nodes):
    ha = probe_factory()
    ha.subscribe("edison/#", "homeassistant/#")
    node = nodes.start(wait_online=ha)
    ha.wait_for(RELAY_STATE)  # the last thing a connect sends: all of it has arrived
    ha.publish(f"edison/{DEVICE}/led/set", "ON")
    ha.wait_for(LED_STATE, "ON")

    ha.publish("homeassistant/status", "online")
    node.wait_for_line(r"Home Assistant is online")
    ha.wait_for(f"edison/{DEVICE}/status", "online")
    for topic in ENTITIES:
        assert ha.wait_for(topic).payload
    assert ha.wait_for(LED_STATE).text == "ON"
    assert ha.wait_for(RELAY_STATE).text == "OFF"


def test_home_assistant_offline_changes_nothing(broker, probe_factory, nodes):
    ha = probe_factory()
    ha.subscribe("edison/#")
    node = nodes.start(wait_online=ha)
    ha.publish("homeassistant/status", "offline")
    node.wait_for_line(r"Home Assistant status 'offline'.*nothing to do")
    ha.publish(f"edison/{DEVICE}/led/set", "ON")
    assert ha.wait_for(LED_STATE, "ON")


def _pin20(nodes) -> list[int]:
    return [c["value"] for c in read_trace(nodes.trace) if c["pin"] == 20]


def test_light_effect_command_blink_blinks_the_pin(broker, probe, nodes):
    nodes.start(wait_online=probe)
    probe.wait_for(LED_STATE, "OFF")  # the state sent on connect
    probe.publish(f"edison/{DEVICE}/led/set", "blink")  # what HA sends on effect_command_topic
    for _ in range(3):  # topics.yaml: count 3
        probe.wait_for(LED_STATE, "OFF", where=lambda m: not m.retain)
    assert _pin20(nodes) == [1, 0, 1, 0, 1, 0]


def test_turn_on_with_blink_from_home_assistant_blinks_then_stays_on(broker, probe, probe_factory, nodes):
    nodes.start(wait_online=probe)
    probe.wait_for(LED_STATE, "OFF")  # the state sent on connect
    light = retained_configs(probe_factory)[LIGHT]
    for topic, payload in ha_turn_on(light, "blink"):
        probe.publish(topic, payload)
    for _ in range(3):
        probe.wait_for(LED_STATE, "OFF", where=lambda m: not m.retain)
    probe.wait_for(LED_STATE, "ON")
    assert _pin20(nodes) == [1, 0, 1, 0, 1, 0, 1]


def test_forget_removes_the_entities(broker, probe_factory, nodes, tmp_path):
    ha = probe_factory()
    ha.subscribe(f"edison/{DEVICE}/status", "homeassistant/#")
    nodes.start(wait_online=ha)
    # Announced after the node's subscribes: amqtt 0.12 drops a client that connects during another's subscribe.
    ha.wait_for(ENTITIES[-1])
    assert set(retained_configs(probe_factory)) == set(ENTITIES)

    forget = Proc(python_cmd("node", "--config", str(nodes.config), "--device", DEVICE, "--broker", broker.url,
                             "--forget"), tmp_path / "forget.log", env={"MQTT_USERNAME": DEVICE})
    assert forget.wait() == 0, forget.output
    for topic in ENTITIES:
        assert ha.wait_for(topic, "")  # Home Assistant removes an entity on an empty config
    assert retained_configs(probe_factory) == {}


def test_a_restarted_broker_gets_discovery_and_state_again(broker, probe, nodes, tmp_path):
    """A broker without persistence forgets every retained message: the node's reconnect puts them back."""
    nodes.start(wait_online=probe)
    probe.close()
    broker.proc.stop()  # killed: a crash, or a restart without persistence
    if broker.kind == "amqtt":
        again = start_amqtt(tmp_path, port=broker.port)
    else:
        again = start_mosquitto(tmp_path, broker.proc.argv[0], port=broker.port)
    try:
        ha = Probe(again)
        ha.subscribe("homeassistant/#", f"edison/{DEVICE}/#")
        ha.wait_for(f"edison/{DEVICE}/status", "online")
        for topic in ENTITIES:
            assert ha.wait_for(topic).payload
        ha.wait_for(LED_STATE, "OFF")
        ha.close()
    finally:
        nodes.stop_all()  # first: amqtt 0.12 can hang on SIGINT while a client is connected
        again.proc.signal(signal.SIGINT)
        again.proc.wait()
        again.proc.stop()
