"""A test's MQTT view of a broker: where it listens, what arrives, and a client that waits for it."""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from testkit.procs import TIMEOUT, Proc


@dataclass(frozen=True)
class Broker:
    kind: str  # "embedded" or "mosquitto"
    port: int
    proc: Proc
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def mqtt5(self) -> bool:
        """The embedded broker and Mosquitto speak MQTT 5 (a probe uses it unless told otherwise); NATS and amqtt's
        own broker 3.1.1 only."""
        return self.kind not in ("nats", "stock-amqtt")


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: object | None

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")

    def json(self) -> dict:
        return json.loads(self.payload)


class Probe:
    """A test's own MQTT client: subscribe, publish, and wait for what arrives."""

    def __init__(self, broker: Broker, client_id: str = "", username: str | None = "probe",
                 password: str | None = None, mqtt5: bool | None = None, clean_session: bool | None = None,
                 port: int | None = None, tls_ca: Path | None = None,
                 transport: Literal["tcp", "websockets"] = "tcp") -> None:
        self.mqtt5 = broker.mqtt5 if mqtt5 is None else mqtt5
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, transport=transport,
            protocol=paho.MQTTv5 if self.mqtt5 else paho.MQTTv311, clean_session=clean_session,
        )
        if tls_ca:
            self.client.tls_set(ca_certs=str(tls_ca))
        if username:
            self.client.username_pw_set(username, password)
        self.seen: list[Received] = []
        self._arrived = threading.Condition()
        self._cursor: dict[str, int] = {}  # per topic: index of the last message wait_for returned
        self._floor = 0  # messages before this index were handed out by barrier()
        self._subscribed: queue.Queue[list] = queue.Queue()
        self._connected: queue.Queue = queue.Queue()
        self.session_present: bool | None = None
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda c, u, mid, codes, p: self._subscribed.put(codes)
        self.client.on_connect = self._on_connect
        self.client.connect(broker.host, port or broker.port)
        self.client.loop_start()
        rc = self._connected.get(timeout=TIMEOUT)
        if rc.is_failure:
            self.close()
            raise ConnectionRefusedError(f"probe could not connect: {rc}")

    def subscribe(self, *topics: str, check: bool = True) -> list:
        """Subscribe at QoS 1; with check=False a refusal is returned instead of failing."""
        codes: list = []
        for topic in topics:
            self.client.subscribe(topic, qos=1)
            codes += self._subscribed.get(timeout=TIMEOUT)
            assert not check or not any(c.is_failure for c in codes), f"subscribe {topic} refused: {codes}"
        return codes

    def barrier(self) -> list[Received]:
        """Everything the broker sent this client before now (a SUBSCRIBE round trip orders it), then forgets it."""
        self.subscribe("barrier/never-published", check=False)
        with self._arrived:
            got = self.seen[self._floor:]
            self._floor = len(self.seen)
        return got

    def publish(self, topic: str, payload: str | bytes, retain: bool = False, qos: int = 1, properties=None) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(TIMEOUT)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.session_present = flags.session_present
        self._connected.put(reason_code)

    def _on_message(self, client, userdata, m) -> None:
        with self._arrived:
            self.seen.append(Received(m.topic, m.payload, bool(m.retain), getattr(m, "properties", None)))
            self._arrived.notify_all()

    def wait_for(self, topic: str, payload: str | None = None, timeout: float = TIMEOUT, where=None) -> Received:
        """The first message on `topic` after the one last returned for it, with `payload` and satisfying `where`."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            start = max(self._cursor.get(topic, -1) + 1, self._floor)
            while True:
                for i in range(start, len(self.seen)):
                    msg = self.seen[i]
                    matches = payload is None or msg.text == payload
                    if msg.topic == topic and matches and (where is None or where(msg)):
                        self._cursor[topic] = i
                        return msg
                start = len(self.seen)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"nothing on {topic} {payload or ''} within {timeout} s; seen: "
                        f"{[(m.topic, m.text) for m in self.seen[-20:]]}"
                    )
                self._arrived.wait(remaining)

    def result(self, device: str, command_id: str, prefix: str = "edison", timeout: float = TIMEOUT) -> dict:
        msg = self.wait_for(f"{prefix}/{device}/result", where=lambda m: m.json().get("id") == command_id,
                            timeout=timeout)
        return msg.json()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
