"""edison-bridge: the X filtered stream in, device commands over MQTT out (needs the `bridge` extra: httpx)."""
