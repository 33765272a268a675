"""The real node with a real broker, seen from Home Assistant's side of MQTT: retained discovery, forgetting, and a
broker that restarts without persistence (what the node does on Home Assistant's birth is in test_decisions.py)."""

from __future__ import annotations

import signal

from testkit.brokers import start_embedded, start_mosquitto
from testkit.mqtt import Probe
from testkit.node import DEVICE
from testkit.procs import Proc, python_cmd
from tests.node.hass import retained_configs

LIGHT = f"homeassistant/light/{DEVICE}/led/config"
ENTITIES = [  # in the order the node announces them
    LIGHT,
    f"homeassistant/button/{DEVICE}/led_blink/config",
    f"homeassistant/light/{DEVICE}/relay/config",
    f"homeassistant/button/{DEVICE}/relay_blink/config",
]
LED_STATE = f"edison/{DEVICE}/led/state"
RELAY_STATE = f"edison/{DEVICE}/relay/state"


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
    probe.publish(f"edison/{DEVICE}/led/set", '{"state": "ON", "id": "1"}')
    assert probe.result(DEVICE, "1")["ok"]
    probe.close()
    broker.proc.stop()  # killed: a crash, or a restart without persistence
    if broker.kind == "embedded":
        again = start_embedded(tmp_path, port=broker.port)
    else:
        again = start_mosquitto(tmp_path, broker.proc.argv[0], port=broker.port)
    try:
        ha = Probe(again)
        ha.subscribe("homeassistant/#", f"edison/{DEVICE}/#")
        ha.wait_for(f"edison/{DEVICE}/status", "online")
        for topic in ENTITIES:
            assert ha.wait_for(topic).payload
        ha.wait_for(LED_STATE, "ON")
        ha.wait_for(RELAY_STATE, "OFF")
        ha.close()
    finally:
        nodes.stop_all()  # first: amqtt 0.12 can hang on SIGINT while a client is connected
        again.proc.signal(signal.SIGINT)
        again.proc.wait()
        again.proc.stop()
