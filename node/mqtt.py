"""One MQTT connection that stays up, on paho-mqtt: the node's link to its broker (the bridge uses it too).

paho does the protocol; this module adds what a device behind NAT needs and
paho leaves to the caller: a persistent session, birth and Last Will
messages, resubscribing on every connect, MQTT 5 with a fallback to 3.1.1,
TCP_NODELAY and TCP_QUICKACK, callbacks that can never kill the network thread, one log line
per failed attempt, and a flush of pending publishes before a clean
disconnect. It is the only module that imports paho: callers see node.link's
Message and Link.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from node.link import Acknowledged, Incoming, Message, Session
from node.secret import SecretError, secret

__all__ = ["PROTOCOLS", "BrokerAddress", "Credentials", "LinkError", "LinkSettings", "Message", "MqttLink"]

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "5", "3.1.1")
_UNSUPPORTED_PROTOCOL = 132  # CONNACK reason: Unsupported Protocol Version (paho maps 3.1.1's code 1 to it)
_EARLY_ACKS = 64  # PUBACKs kept for publish() calls that have not returned yet; one is waited for in microseconds
_REFUSED_LOGIN = (134, 135)  # Bad user name or password, Not authorized (paho maps 3.1.1's 4 and 5 to them)


class LinkError(Exception):
    """The connection settings are unusable; raised at start, never while running."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """`mqtt://host[:port]` or `mqtts://host[:port]`; credentials never come from the URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise LinkError(f"broker URL {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
        if parts.username or parts.password:
            raise LinkError("put broker credentials in MQTT_USERNAME / MQTT_PASSWORD, not in the URL")
        if not parts.hostname:
            raise LinkError(f"broker URL {url!r} has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise LinkError(f"broker URL {url!r}: MQTT has no paths; expected mqtt://host[:port]")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise LinkError(f"broker URL {url!r} has an invalid port") from None
        return cls(parts.hostname, port, parts.scheme == "mqtts")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Credentials:
        """MQTT_USERNAME with MQTT_PASSWORD, or MQTT_PASSWORD_FILE naming a file that holds it."""
        username = env.get("MQTT_USERNAME") or None
        try:
            password = secret("MQTT_PASSWORD", env)
        except SecretError as exc:
            raise LinkError(str(exc)) from None
        if password and not username:
            raise LinkError("a password is set but MQTT_USERNAME is not")
        return cls(username, password)


@dataclass(frozen=True)
class LinkSettings:
    address: BrokerAddress
    credentials: Credentials = Credentials()
    protocol: str = "auto"
    ca_file: str | None = None
    keepalive: int = 60
    session_expiry: int = 86400  # MQTT 5: how long the broker keeps the session while we are away

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise LinkError(f"protocol {self.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if self.ca_file and not Path(self.ca_file).is_file():
            raise LinkError(f"CA file {self.ca_file} does not exist")
        if self.ca_file and not self.address.tls:
            raise LinkError("a CA file is only used with an mqtts:// broker URL")


_Method = TypeVar("_Method", bound=Callable[..., None])


def _guarded(method: _Method) -> _Method:
    """paho ends its network thread silently when a callback raises: log instead and carry on."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            log.exception("error in MQTT callback %s (connection kept)", method.__name__)

    return wrapper  # type: ignore[return-value]


class _Client(paho.Client):
    """paho's client, remembering why the last connection attempt failed (its on_connect_fail does not say)."""

    last_error: OSError | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_error = exc
            raise


def _incoming(msg: paho.MQTTMessage) -> Incoming:
    props = msg.properties  # None on MQTT 3.1.1
    return Incoming(
        msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain),
        response_topic=getattr(props, "ResponseTopic", None) or None,
        correlation_data=getattr(props, "CorrelationData", None) or None,
        expiry=getattr(props, "MessageExpiryInterval", None),
        user_properties=tuple(tuple(p) for p in getattr(props, "UserProperty", ())),
        dup=bool(msg.dup),
    )


def _properties(message: Message) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if message.response_topic:
        props.ResponseTopic = message.response_topic
    if message.correlation_data:
        props.CorrelationData = message.correlation_data
    if message.expiry is not None:
        props.MessageExpiryInterval = message.expiry
    if message.user_properties:
        props.UserProperty = list(message.user_properties)
    return props


class MqttLink:
    """node.link.Link on paho-mqtt: connects, stays connected and resumes its session.

    `persistent=False` asks for a session that ends with the connection (for
    one-off clients such as `--forget`), on MQTT 5 and 3.1.1 alike.
    """

    def __init__(self, settings: LinkSettings, client_id: str, persistent: bool = True) -> None:
        self.settings = settings
        self.client_id = client_id
        self.persistent = persistent
        self._session = Session()
        self._version = paho.MQTTv311 if settings.protocol == "3.1.1" else paho.MQTTv5
        # mid -> topic and callback of QoS 1 publishes the broker has not acknowledged
        self._pending: dict[int, tuple[str, Acknowledged | None]] = {}
        self._acked_early: dict[int, ReasonCode] = {}  # PUBACKs that beat publish() back to its caller
        self._pending_changed = threading.Condition()
        self._offline_since: float | None = None
        self._backlog_age: float | None = None
        self._fence_mid: int | None = None
        self._up = False  # a connection was accepted and has not dropped since
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _client against a stop() racing the probe; never held calling paho
        self._client = self._new_client()

    @property
    def mqtt5(self) -> bool:
        return self._version == paho.MQTTv5

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def start(self, session: Session) -> None:
        """Connect in the background; with protocol auto, learn the broker's MQTT version first."""
        self._session = session
        self._client = self._new_client()  # the will is part of the client
        log.info("connecting to %s as %s", self.settings.address, self.client_id)
        if self.settings.protocol == "auto":
            threading.Thread(target=self._probe_then_connect, name="mqtt-probe", daemon=True).start()
        else:
            self._connect(self._client)

    def publish(self, message: Message, on_acknowledged: Acknowledged | None = None) -> int | None:
        # Never hold a lock of ours while calling paho: its network thread calls
        # on_publish while holding paho's own locks.
        props = _properties(message) if self.mqtt5 and message.has_properties else None
        try:
            info = self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain,
                                        properties=props)
        except ValueError as exc:  # e.g. a response topic with wildcards
            log.warning("publish to %r not queued: %s", message.topic, exc)
            return None
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("publish to %s not queued: %s", message.topic, paho.error_string(info.rc))
            return None
        if message.qos == 0:
            return None
        with self._pending_changed:
            early = self._acked_early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = (message.topic, on_acknowledged)
        if early is not None:
            self._acknowledged(message.topic, on_acknowledged, early)
        return info.mid

    def backlog_age(self) -> float | None:
        return self._backlog_age

    def stop(self, final: Sequence[Message] = (), timeout: float = 1.0) -> bool:
        if self.connected:  # otherwise the broker has published our will already
            for message in final:
                self.publish(message)
        with self._pending_changed:
            self._pending_changed.wait_for(lambda: not self._pending or not self.connected, timeout)
            flushed = not self._pending
        self._stopping.set()
        with self._lock:
            client = self._client
        client.disconnect()
        client.loop_stop()
        return flushed

    # -- paho plumbing -------------------------------------------------

    def _new_client(self) -> _Client:
        s = self.settings
        clean = None if self._version == paho.MQTTv5 else not self.persistent  # MQTT 5 asks at connect instead
        client = _Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=self._version,
                         clean_session=clean)
        if s.credentials.username:
            client.username_pw_set(s.credentials.username, s.credentials.password)
        if s.address.tls:
            client.tls_set(ca_certs=s.ca_file)
        will = self._session.will
        if will:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _connect(self, client: paho.Client) -> None:
        s = self.settings
        if self._version == paho.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry if self.persistent else 0
            client.connect_async(s.address.host, s.address.port, s.keepalive, clean_start=not self.persistent,
                                 properties=props)
        else:
            client.connect_async(s.address.host, s.address.port, s.keepalive)
        client.loop_start()

    def _probe_then_connect(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                mqtt5 = self._broker_speaks_mqtt5()
                break
            except OSError as exc:
                log.warning("cannot reach %s: %s (retrying in %.0f s)", self.settings.address, exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)
        else:
            return
        if not mqtt5:
            log.info("broker %s does not speak MQTT 5: using MQTT 3.1.1", self.settings.address)
            self._version = paho.MQTTv311
        client = self._new_client() if not mqtt5 else self._client
        with self._lock:
            if self._stopping.is_set():
                return
            self._client = client
        self._connect(client)
        if self._stopping.is_set():  # stop() ran meanwhile and may have missed this connect
            client.disconnect()
            client.loop_stop()

    def _broker_speaks_mqtt5(self, timeout: float = 5.0) -> bool:
        """Ask with a bare, throw-away MQTT 5 CONNECT: own client id, no will, no credentials.

        amqtt 0.12 never answers an MQTT 5 CONNECT that carries a will or a
        user name, so the refusal cannot be waited for on the real connection.
        A broker that wants credentials still answers in its own version.
        """
        s = self.settings
        answer: list[ReasonCode] = []
        probe = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.client_id}-probe", protocol=paho.MQTTv5)
        if s.address.tls:
            probe.tls_set(ca_certs=s.ca_file)
        probe.on_connect = lambda client, userdata, flags, reason_code, properties: answer.append(reason_code)
        probe.connect(s.address.host, s.address.port, keepalive=10)
        deadline = time.monotonic() + timeout
        try:
            while not answer and time.monotonic() < deadline:
                if probe.loop(timeout=0.5) != paho.MQTT_ERR_SUCCESS:
                    break  # the broker closed the connection without a CONNACK
        finally:
            probe.disconnect()  # also closes the socket
        if not answer:
            log.info("no answer to an MQTT 5 CONNECT within %.0f s", timeout)
            return False
        return answer[0].value != _UNSUPPORTED_PROTOCOL

    def _refusal_hint(self, reason_code: ReasonCode) -> str:
        if reason_code.value not in _REFUSED_LOGIN:
            return ""
        user = self.settings.credentials.username
        return f" as user {user!r}" if user else " (MQTT_USERNAME is not set)"

    def _acknowledged(self, topic: str, callback: Acknowledged | None, reason_code: ReasonCode) -> None:
        refusal = str(reason_code) if reason_code.is_failure else None
        if refusal:
            log.warning("the broker refused the publish to %s: %s", topic, refusal)
        if callback is not None:
            callback(refusal)

    @_guarded
    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: paho.SocketLike) -> None:
        # Several small packets go out per command (PUBACK, state, result):
        # with Nagle and delayed ACKs each burst would wait ~40 ms.
        if isinstance(sock, socket.socket):  # TCP, and TLS over it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _ack_at_once(sock)

    def _ack_at_once(self, client: paho.Client) -> None:
        """Acknowledge what the broker sent at once, not 40 ms later.

        A broker with Nagle on (Mosquitto's default) holds its next packet to us
        (the next command) until we acknowledge its last one (the PUBACK of our
        state publish); Linux delays that ACK when we have nothing to send.
        TCP_QUICKACK sends a pending ACK when set and does not stay on, so it is
        set again after every packet read.
        """
        _ack_at_once(client.socket())

    @_guarded
    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        reason = client.last_error if isinstance(client, _Client) else None
        log.warning("cannot reach %s: %s (retrying)", self.settings.address, reason or "connection failed")

    @_guarded
    def _on_connect(self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection%s: %s (retrying)", self.settings.address,
                      self._refusal_hint(reason_code), reason_code)
            return
        self._up = True
        now = time.time()
        resumed = flags.session_present
        self._backlog_age = now - self._offline_since if resumed and self._offline_since is not None else None
        log.info(
            "connected to %s (MQTT %s, %s)",
            self.settings.address,
            "5" if self.mqtt5 else "3.1.1",
            "session resumed" if resumed else "new session",
        )
        # Subscribe before announcing: the broker handles our packets in order,
        # so whoever sees `online` can send a command that will reach us.
        for topic in self._session.subscriptions:
            client.subscribe(topic, qos=1)
        if self._session.birth:
            self._fence_mid = self.publish(self._session.birth)
        self._session.on_connect(resumed)

    @_guarded
    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        if self._offline_since is None:
            self._offline_since = time.time()
        self._backlog_age = None
        with self._pending_changed:
            self._pending_changed.notify_all()
        was_up, self._up = self._up, False
        if was_up and reason_code.is_failure:  # a refused connect was logged by _on_connect already
            log.warning("disconnected from %s: %s (reconnecting)", self.settings.address, reason_code)

    @_guarded
    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        self._ack_at_once(client)
        if mid == self._fence_mid:
            self._backlog_age = None  # the broker has moved past what it queued for us
            self._offline_since = None
        with self._pending_changed:
            pending = self._pending.pop(mid, None)
            if pending is None:
                self._acked_early[mid] = reason_code
                if len(self._acked_early) > _EARLY_ACKS:  # QoS 0 publishes end up here too: keep the newest
                    del self._acked_early[next(iter(self._acked_early))]
            self._pending_changed.notify_all()
        if pending is not None:
            self._acknowledged(*pending, reason_code)

    @_guarded
    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      properties: Properties | None) -> None:
        for code in reason_codes:
            if code.is_failure:
                log.error("broker refused a subscription: %s", code)

    @_guarded
    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._ack_at_once(client)
        self._session.on_message(_incoming(msg))


def _ack_at_once(sock: object) -> None:
    if isinstance(sock, socket.socket) and hasattr(socket, "TCP_QUICKACK"):  # Linux only
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:  # the connection is closing
            pass
