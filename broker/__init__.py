"""The reachable host's broker: the embedded amqtt broker and its exports (Mosquitto)."""
