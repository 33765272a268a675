"""The fault harness: commands through a real broker to the real node while something goes wrong, counted.

Each fault publishes commands with ids to a running `edison-node` (simulated
pins), does its damage (a publisher that leaves at once, a broker SIGKILL,
restarts, churn, a login flood, ...) and then counts, per command id: sent,
acknowledged by the broker (PUBACK), carried out by the node, lost
(acknowledged, never carried out) and doubled (carried out more than once).
A bystander client measures its own round trip through the broker meanwhile.
The tests run the quick cases and assert nothing is lost or doubled;
bench/faults.py runs the whole matrix on every broker and prints the table.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from testkit.brokers import export_for, run_mosquitto
from testkit.cluster import NatsCluster
from testkit.mqtt import Broker
from testkit.node import NodeRunner
from testkit.procs import TIMEOUT, Proc, free_port, read_trace
from testkit.rawmqtt import Raw
from testkit.users import USERS, edison_broker, start_secured_embedded

DEVICE = "edison-t"
SET = f"edison/{DEVICE}/led/set"
BYSTANDER_TOPIC = "edison/edison-u/led/set"  # a device that is not running: nothing but the bystander reads it
SETTLE = 30.0  # seconds to wait for acknowledged commands to be carried out before calling the rest lost


class BrokerUnderTest:
    """A broker process that a fault may kill or stop and start again, on the same port and data folder.

    Kinds: "embedded" (the embedded broker), "mosquitto" (the exported configuration) and "nats" (the exported
    3-member cluster, where the faults strike member 1, which every client but the node uses; the node is
    given every member and fails over).
    """

    def __init__(self, kind: str, workdir: Path, user_files: tuple[Path, Path], mosquitto_bin: str | None = None,
                 extra: tuple[str, ...] = (), persistent: bool = True) -> None:
        self.kind = kind
        self.workdir = workdir
        self.user_files = user_files
        self.data = workdir / f"{kind}-data" if persistent else None
        self.extra = extra
        self.starts = 0
        self._conf: Path | None = None
        self.cluster = NatsCluster(workdir, user_files) if kind == "nats" else None
        self.port = self.cluster.port(1) if self.cluster else free_port()
        if kind == "mosquitto":
            assert mosquitto_bin, "mosquitto is needed"
            self._binary = mosquitto_bin
            self._conf = self._export()
        self.broker = self._start()

    def _export(self) -> Path:
        topics, passwd = self.user_files
        out = self.workdir / "mosquitto"
        data = ("--data", str(self.data)) if self.data else ()
        done = edison_broker("mosquitto-config", "--config", str(topics), "--passwd", str(passwd),
                             "--bind", f"127.0.0.1:{self.port}", *data, "--out", str(out), *export_for(self._binary),
                             *self.extra)
        assert done.returncode == 0, done.stderr
        conf = out / "mosquitto.conf"
        if os.geteuid() == 0:  # as root Mosquitto would switch to its own user, which cannot read the test's files
            conf.write_text(conf.read_text() + "user root\n")
        return conf

    def _start(self) -> Broker:
        self.starts += 1
        if self.cluster:
            if 1 not in self.cluster.procs:
                self.cluster.start(1)
            return self.cluster.broker(1)
        if self.kind == "embedded":
            data = ("--data", str(self.data)) if self.data else ()
            return start_secured_embedded(self.workdir, self.user_files, *data, *self.extra, port=self.port).broker
        assert self._conf is not None
        log = self.workdir / f"mosquitto-{self.starts}.log"
        return Broker("mosquitto", self.port, run_mosquitto(self._binary, self._conf, log, self.port))

    @property
    def url(self) -> str:
        return self.broker.url

    @property
    def urls(self) -> list[str]:
        """What the node is given: every member of a cluster."""
        return self.cluster.urls if self.cluster else [self.url]

    def kill(self) -> None:
        self.broker.proc.signal(signal.SIGKILL)
        self.broker.proc.wait()
        self.broker.proc.stop()
        if self.cluster:
            self.cluster.procs.pop(1)

    def terminate(self, timeout: float = TIMEOUT) -> tuple[int | None, float]:
        """SIGTERM; the exit status (None if it had to be killed) and the seconds it took."""
        start = time.monotonic()
        self.broker.proc.signal(signal.SIGTERM)
        try:
            code: int | None = self.broker.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - start
        self.broker.proc.stop()
        if self.cluster:
            self.cluster.procs.pop(1)
        return code, took

    def start(self) -> None:
        self.broker = self._start()

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob(f"{self.kind}*.log")))

    def close(self) -> None:
        if self.cluster:
            self.cluster.close()
        elif self.broker.proc.popen.poll() is None:
            self.terminate()


def close_socket(c: paho.Client) -> None:
    """Drop the connection without a DISCONNECT, as a process that dies would."""
    sock = c.socket()
    if sock is not None:
        sock.close()


class Client:
    """A paho client logged in as one of the test users, reconnecting by itself, that counts its acknowledgements."""

    def __init__(self, broker: BrokerUnderTest, user: str, client_id: str = "", clean: bool = True,
                 mqtt5: bool = False) -> None:
        version = paho.MQTTv5 if mqtt5 else paho.MQTTv311
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
                                  clean_session=None if mqtt5 else clean)
        self.client.username_pw_set(user, USERS[user])
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # paho takes seconds as floats
        self.client.max_inflight_messages_set(100)
        self.connected = threading.Event()
        self._lock = threading.Condition()
        self._ids: dict[int, str] = {}
        self._early: dict[int, bool] = {}  # PUBACKs that came before publish() returned the mid: refused?
        self.acked: list[str] = []
        self.refused: list[str] = []  # MQTT 5: answered with a failure reason code
        self.refusals: Counter[str] = Counter()  # by reason
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()
        self.client.on_publish = self._on_publish
        if mqtt5:  # a session that is not clean lives on for an hour (MQTT 5 ends it with the connection by default)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if clean else 3600
            self.client.connect_async("127.0.0.1", broker.port, keepalive=10, clean_start=clean, properties=props)
        else:
            self.client.connect_async("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), f"{user} could not connect"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            self.connected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        """PUBACK or PUBCOMP; on MQTT 5 a failure reason code is a refusal, not an acknowledgement."""
        with self._lock:
            command_id = self._ids.pop(mid, None)
            if command_id is None:
                self._early[mid] = reason_code.is_failure
            else:
                (self.refused if reason_code.is_failure else self.acked).append(command_id)
            if reason_code.is_failure:
                self.refusals[str(reason_code)] += 1
            self._lock.notify_all()

    def publish(self, topic: str, payload: str, command_id: str, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        with self._lock:
            if info.mid in self._early:
                (self.refused if self._early.pop(info.mid) else self.acked).append(command_id)
            else:
                self._ids[info.mid] = command_id

    def wait_acked(self, count: int, timeout: float = TIMEOUT) -> bool:
        """Until `count` publishes were answered, acknowledged or refused."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.acked) + len(self.refused) >= count, timeout)

    def close(self, clean: bool = True) -> None:
        if clean:
            self.client.disconnect()
        self.client.loop_stop()
        if not clean:
            close_socket(self.client)


class Bystander:
    """Round trips of an unrelated client through the broker (publish, receive its own message) while a fault runs."""

    def __init__(self, broker: BrokerUnderTest) -> None:
        self.samples: list[float] = []
        self.missed = 0
        self._stop = threading.Event()
        self._got = threading.Condition()
        self._last: bytes | None = None
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        self._client.username_pw_set("watcher", USERS["watcher"])
        self._client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # paho takes seconds as floats
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(BYSTANDER_TOPIC, qos=1)
        self._client.on_message = self._on_message
        self._client.connect_async("127.0.0.1", broker.port, keepalive=10)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._got:
            self._last = msg.payload
            self._got.notify_all()

    def _run(self) -> None:
        for n in itertools.count():
            if self._stop.wait(0.05):
                return
            if not self._client.is_connected():
                continue
            payload = f"rtt-{n}".encode()
            start = time.perf_counter()
            self._client.publish(BYSTANDER_TOPIC, payload, qos=1)
            def echoed(expected: bytes = payload) -> bool:
                return self._last == expected

            with self._got:
                if self._got.wait_for(echoed, 5.0):
                    self.samples.append(time.perf_counter() - start)
                else:
                    self.missed += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self._client.disconnect()
        self._client.loop_stop()

    def pct(self, q: float) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] * 1000


class LoginProbe:
    """A newcomer logging in again and again while a fault runs: CONNECT -> CONNACK, each on a new connection."""

    def __init__(self, broker: BrokerUnderTest, user: str = "stranger") -> None:
        self.port = broker.port
        self.user = user
        self.seconds: list[float] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """After one login that is not counted: the password's first check (argon2) is not what is measured."""
        self._login("warm-up")
        self._thread.start()

    def _login(self, client_id: str) -> int:
        try:
            raw = Raw(self.port, timeout=30.0)
            code = raw.login(f"{self.user}-{client_id}", self.user, USERS[self.user])
            raw.close()
        except OSError:
            code = -1
        return code

    def _run(self) -> None:
        for n in itertools.count():
            if self._stop.wait(0.2):
                return
            start = time.perf_counter()
            if self._login(str(n)) == 0:
                self.seconds.append(time.perf_counter() - start)
            else:
                self.refused += 1

    def stop(self, at_least: int = 20, timeout: float = 60.0) -> None:
        """Once `at_least` logins were tried (or `timeout` passed), so a short fault still gives figures."""
        deadline = time.monotonic() + timeout
        while len(self.seconds) + self.refused < at_least and time.monotonic() < deadline:
            time.sleep(0.1)
        self._stop.set()
        self._thread.join(60)

    def summary(self) -> str:
        if not self.seconds:
            return f"no login of {self.refused} tried went through"
        ordered = sorted(self.seconds)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)]
        return (f"a newcomer's login p50 / p99 {ordered[len(ordered) // 2] * 1000:.0f} / {p99 * 1000:.0f} ms "
                f"({len(ordered)} logins" + (f", {self.refused} refused or cut" if self.refused else "") + ")")


@dataclass
class Tally:
    """What became of the commands of one fault."""

    fault: str
    broker: str
    sent: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    carried: Counter[str] = field(default_factory=Counter)
    broker_exit: str = "-"
    bystander: str = "-"
    note: str = ""

    @property
    def lost(self) -> int:
        return len(self.acked - set(self.carried))

    @property
    def doubled(self) -> int:
        return sum(1 for n in self.carried.values() if n > 1)

    def row(self) -> list[str]:
        return [self.fault, self.broker, str(len(self.sent)), str(len(self.acked)), str(len(self.carried)),
                str(self.lost), str(self.doubled), self.broker_exit, self.bystander, self.note]

    def __str__(self) -> str:
        return (f"{self.fault} on {self.broker}: sent {len(self.sent)}, acknowledged {len(self.acked)}, "
                f"carried out {len(self.carried)}, lost {self.lost}, doubled {self.doubled}")


class Device:
    """The real edison-node as device edison-t; what it carried out, by command id, over all its runs."""

    def __init__(self, broker: BrokerUnderTest, workdir: Path, topics: Path) -> None:
        self.broker = broker
        self.runner = NodeRunner(broker.broker, workdir, topics)
        self.env = {"MQTT_PASSWORD": USERS[DEVICE]}
        self._online = threading.Condition()
        self._onlines = 0
        self._watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id="monitor", protocol=paho.MQTTv311)
        self._watcher.username_pw_set("monitor", USERS["monitor"])
        self._watcher.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # paho takes seconds as floats
        self._watcher.on_connect = lambda c, u, f, rc, p: c.subscribe(f"edison/{DEVICE}/status", qos=1)
        self._watcher.on_message = self._on_status
        self._watcher.connect_async("127.0.0.1", broker.port, keepalive=10)
        self._watcher.loop_start()

    def _on_status(self, client, userdata, msg) -> None:
        if msg.payload == b"online" and not msg.retain:
            with self._online:
                self._onlines += 1
                self._online.notify_all()

    def start(self) -> Proc:
        """Start the node and wait for its `online`: it is subscribed then (it announces only after subscribing)."""
        with self._online:
            before = self._onlines
        self.runner.broker = self.broker.broker
        proc = self.runner.start("--keepalive", "5", env=self.env, device=DEVICE, brokers=self.broker.urls)
        with self._online:
            assert self._online.wait_for(lambda: self._onlines > before, TIMEOUT), f"no online:\n{proc.output}"
        return proc

    def kill(self) -> None:
        proc = self.runner.procs[-1]
        proc.signal(signal.SIGKILL)
        proc.wait()
        proc.stop()

    def carried(self) -> Counter[str]:
        """Command id -> level changes it caused, from the pin trace (a TOGGLE causes exactly one)."""
        return Counter(c["id"] for c in read_trace(self.runner.trace) if c.get("id"))

    def wait_carried(self, ids: set[str], timeout: float = SETTLE) -> Counter[str]:
        """What was carried out once `ids` all were, or after `timeout` (each command logs a line: wake on those)."""
        found = self.carried()
        if ids <= set(found) or not self.runner.procs:
            return found
        self.runner.procs[-1].wait_until(lambda: ids <= set(self.carried()), timeout)
        return self.carried()

    def stop(self) -> None:
        self.runner.stop_all()
        self._watcher.disconnect()
        self._watcher.loop_stop()


def toggles(prefix: str, count: int) -> Iterator[tuple[str, str]]:
    """(id, payload) of TOGGLE commands: each one carried out flips the LED once."""
    for n in range(count):
        command_id = f"{prefix}-{n}"
        yield command_id, json.dumps({"state": "TOGGLE", "id": command_id})


def send(sender: Client, tally: Tally, commands: Iterator[tuple[str, str]], topic: str = SET, qos: int = 1) -> None:
    for command_id, payload in commands:
        tally.sent.append(command_id)
        sender.publish(topic, payload, command_id, qos)


def settle(tally: Tally, sender: Client, device: Device, timeout: float = SETTLE) -> Tally:
    """Wait until every acknowledged command is carried out (or `timeout`), then record what happened."""
    sender.wait_acked(len(tally.sent), timeout)
    tally.acked = set(sender.acked)
    tally.carried = device.wait_carried(tally.acked, timeout)
    refused(tally, sender)
    return tally


def refused(tally: Tally, sender: Client) -> None:
    """Publishes the broker refused (MQTT 5 reason codes) are not acknowledged: the note says how many and why."""
    if sender.refusals:
        tally.note = "; ".join(filter(None, [tally.note, "refused by the broker: " + ", ".join(
            f"{n} {reason}" for reason, n in sender.refusals.most_common())]))


@contextmanager
def bystander(broker: BrokerUnderTest, tally: Tally) -> Iterator[Bystander]:
    b = Bystander(broker)
    try:
        yield b
    finally:
        b.stop()
        p50, p99 = b.pct(50), b.pct(99)
        tally.bystander = (f"{p50:.1f} / {p99:.1f} ms" if p50 is not None and p99 is not None else "none") + (
            f", {b.missed} missed" if b.missed else "")


# -- the faults -----------------------------------------------------------------

Fault = Callable[[BrokerUnderTest, Device, int], Tally]


def _version(mqtt5: bool, qos: int) -> str:
    return f" (MQTT 5, QoS {qos})" if mqtt5 else f" (QoS {qos})" if qos != 1 else ""


def publisher_leaves(broker: BrokerUnderTest, device: Device, count: int, mqtt5: bool = False, qos: int = 1) -> Tally:
    """A publisher sends a burst, gets every PUBACK and disconnects at once (what the bridge does at end of input)."""
    tally = Tally("publisher leaves after PUBACKs" + _version(mqtt5, qos), broker.kind)
    with bystander(broker, tally):
        sender = Client(broker, "laptop", mqtt5=mqtt5)
        send(sender, tally, toggles("leave", count), qos=qos)
        sender.wait_acked(count)
        sender.close()
        return settle(tally, sender, device)


def broker_killed_after_pubacks(broker: BrokerUnderTest, device: Device, count: int, mqtt5: bool = False,
                                qos: int = 1) -> Tally:
    """SIGKILL the broker right after the last PUBACK, start it again: every acknowledged command still runs once."""
    tally = Tally("broker SIGKILL after PUBACKs" + _version(mqtt5, qos), broker.kind)
    sender = Client(broker, "laptop", mqtt5=mqtt5)
    send(sender, tally, toggles("kill", count), qos=qos)
    sender.wait_acked(count)
    tally.acked = set(sender.acked)
    refused(tally, sender)
    broker.kill()
    sender.close(clean=False)
    broker.start()
    tally.carried = device.wait_carried(tally.acked)
    return tally


def broker_restarts(broker: BrokerUnderTest, device: Device, count: int, restarts: int = 10, mqtt5: bool = False,
                    qos: int = 1) -> Tally:
    """Clean restarts of the broker while commands keep coming; the publisher resends what was not acknowledged."""
    tally = Tally(f"{restarts} broker restarts" + _version(mqtt5, qos), broker.kind)
    sender = Client(broker, "laptop", client_id="laptop-restarts", clean=False, mqtt5=mqtt5)
    per_round = max(1, count // restarts)
    exits = []
    with bystander(broker, tally):
        for r in range(restarts):
            send(sender, tally, toggles(f"restart{r}", per_round), qos=qos)
            code, took = broker.terminate()
            exits.append((code, took))
            broker.start()
        tally = settle(tally, sender, device)
    sender.close()
    worst = max(exits, key=lambda e: e[1])
    tally.broker_exit = ", ".join(sorted({str(c) for c, _ in exits})) + f" (slowest {worst[1]:.1f} s)"
    return tally


def node_killed(broker: BrokerUnderTest, device: Device, count: int) -> Tally:
    """SIGKILL the node, send commands while it is gone, start it again: they are carried out once."""
    tally = Tally("node SIGKILL, commands queued", broker.kind)
    device.kill()
    sender = Client(broker, "laptop")
    send(sender, tally, toggles("queued", count))
    sender.wait_acked(count)
    device.start()
    settle(tally, sender, device)
    sender.close()
    return tally


def churn(broker: BrokerUnderTest, device: Device, count: int, clients: int = 20) -> Tally:
    """Clients connect, subscribe, unsubscribe and disconnect in a loop while a command stream runs."""
    tally = Tally(f"churn of {clients} clients", broker.kind)
    stop = threading.Event()

    def churner(n: int) -> None:
        while not stop.is_set():
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"churner-{n}", protocol=paho.MQTTv311)
            c.username_pw_set("churner", USERS["churner"])
            try:
                c.connect("127.0.0.1", broker.port, keepalive=10)
                c.loop_start()
                c.subscribe("edison/#", qos=1)
                c.unsubscribe("edison/#")
                c.subscribe(f"edison/{DEVICE}/+/state", qos=1)
                c.disconnect()
                c.loop_stop()
            except OSError:
                pass

    threads = [threading.Thread(target=churner, args=(n,), daemon=True) for n in range(clients)]
    logins = LoginProbe(broker)
    with bystander(broker, tally):
        for t in threads:
            t.start()
        logins.start()
        sender = Client(broker, "laptop")
        for chunk in range(10):
            send(sender, tally, toggles(f"churn{chunk}", count // 10))
            sender.wait_acked(len(tally.sent))
        settle(tally, sender, device)
        sender.close()
        logins.stop()
        tally.note = logins.summary()
        code, took = broker.terminate()  # under churn: the promise is exit 0 within 5 s
        stop.set()
        tally.broker_exit = f"{code} in {took:.1f} s"
    for t in threads:
        t.join(TIMEOUT)
    broker.start()
    return tally


def login_flood(broker: BrokerUnderTest, device: Device, count: int, attackers: int = 4) -> Tally:
    """Threads send wrong passwords as fast as the broker answers while a command stream runs."""
    tally = Tally(f"login flood ({attackers} threads)", broker.kind)
    stop = threading.Event()
    attempts = Counter[str]()

    def attacker(n: int) -> None:
        user = DEVICE if n % 2 else f"nobody-{n}"
        while not stop.is_set():
            c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
            c.username_pw_set(user, "wrong")
            try:
                c.connect("127.0.0.1", broker.port, keepalive=10)
                c.loop(timeout=5)
                attempts["sent"] += 1
            except OSError:
                attempts["refused at TCP"] += 1
            finally:
                close_socket(c)

    threads = [threading.Thread(target=attacker, args=(n,), daemon=True) for n in range(attackers)]
    with bystander(broker, tally):
        for t in threads:
            t.start()
        sender = Client(broker, "laptop")
        for chunk in range(10):
            send(sender, tally, toggles(f"flood{chunk}", count // 10))
            time.sleep(0.1)  # a stream spread over time, not one burst
        settle(tally, sender, device)
        sender.close()
        stop.set()
    for t in threads:
        t.join(TIMEOUT)
    return tally


def idle_sockets(broker: BrokerUnderTest, device: Device, count: int, sockets: int = 150) -> Tally:
    """TCP connections that never send CONNECT, beyond every limit, while commands flow; the broker closes them."""
    tally = Tally(f"{sockets} idle sockets", broker.kind)
    held = []
    with bystander(broker, tally):
        for _ in range(sockets):
            try:
                held.append(socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT))
            except OSError:
                break
        try:
            sender = Client(broker, "laptop")
        except AssertionError:
            tally.note = f"a real client could not log in while {len(held)} idle sockets were open; "
        else:
            send(sender, tally, toggles("idle", count))
            settle(tally, sender, device)
            sender.close()
    closed = sum(1 for s in held if _closed_by_peer(s, timeout=10.0))
    tally.note += f"{closed} of {len(held)} idle sockets closed by the broker"
    for s in held:
        s.close()
    return tally


def _closed_by_peer(s: socket.socket, timeout: float = TIMEOUT) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except OSError:
        return False


MALFORMED: list[tuple[str, bytes]] = [
    ("garbage", b"\x00\x01\x02\x03garbage"),
    ("HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("PUBLISH before CONNECT", b"\x30\x07\x00\x03a/bhi"),
    ("SUBSCRIBE before CONNECT", b"\x82\x08\x00\x01\x00\x03a/b\x01"),
    ("PINGREQ before CONNECT", b"\xc0\x00"),
    ("truncated CONNECT", b"\x10\x20\x00\x04MQTT\x04"),
    ("remaining length of 5 bytes", b"\x10\xff\xff\xff\xff\x7f"),
    ("huge remaining length", b"\x10\xff\xff\xff\x7f"),
    ("wrong protocol name", b"\x10\x0e\x00\x04MQTX\x04\x02\x00\x3c\x00\x02id"),
    ("protocol level 3 (MQTT 3.1)", b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02id"),
    ("MQTT 5 CONNECT with a PUBLISH property", b"\x10\x11\x00\x04MQTT\x05\x02\x00\x3c\x02\x01\x01\x00\x02id"),
    ("MQTT 5 CONNECT, properties past the end", b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x09\x11\x00\x02id"),
    ("protocol level 9", b"\x10\x0e\x00\x04MQTT\x09\x02\x00\x3c\x00\x02id"),
    ("reserved CONNECT flag", b"\x10\x0e\x00\x04MQTT\x04\x03\x00\x3c\x00\x02id"),
    ("will QoS 3", b"\x10\x18\x00\x04MQTT\x04\x1e\x00\x3c\x00\x02id\x00\x01t\x00\x01m"),
    ("will retain without will", b"\x10\x0e\x00\x04MQTT\x04\x22\x00\x3c\x00\x02id"),
    ("password without user name", b"\x10\x12\x00\x04MQTT\x04\x42\x00\x3c\x00\x02id\x00\x02pw"),
    ("client id not UTF-8", b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02\xff\xfe"),
    ("client id with NUL", b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02a\x00"),
    ("user name not UTF-8", b"\x10\x12\x00\x04MQTT\x04\x82\x00\x3c\x00\x02id\x00\x02\xc3\x28"),
    ("client id length past the end", b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x09id"),
    ("empty client id, clean session 0", b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x3c\x00\x00"),
    ("CONNECT with fixed-header flags", b"\x11\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02id"),
    ("reserved packet type 0", b"\x00\x00"),
    ("reserved packet type 15", b"\xf0\x00"),
    ("CONNACK from a client", b"\x20\x02\x00\x00"),
    ("two CONNECTs in a row", b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02id" * 2),
    ("zero-length CONNECT", b"\x10\x00"),
    ("user name flag, no user name", b"\x10\x0e\x00\x04MQTT\x04\x82\x00\x3c\x00\x02id"),
    ("will flag, no will topic", b"\x10\x0e\x00\x04MQTT\x04\x06\x00\x3c\x00\x02id"),
    ("trailing bytes after CONNECT", b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x02idzz"),
    ("a lone byte", b"\x10"),
    ("TLS ClientHello on the plain port", bytes.fromhex("16030100a5010000a10303") + b"\x00" * 32),
]


def send_raw(port: int, data: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send `data` on a new connection; everything the broker answers until it closes the connection.

    Raises TimeoutError if the broker keeps the connection open without closing it for `timeout` seconds.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        answer = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                return answer
            if not chunk:
                return answer
            answer += chunk


CONNACK = {code: bytes([0x20, 2, 0, code]) for code in (1, 2, 5)}
CONNACK5 = {code: bytes([0x20, 3, 0, code, 0]) for code in (0x81, 0x82)}  # MQTT 5: a reason code, no properties
# What MQTT 3.1.1 (and 5, for an MQTT 5 CONNECT) prescribes for each: CONNACK with this code then close; all others:
# close without an answer.
ANSWERS = {"protocol level 3 (MQTT 3.1)": CONNACK[1], "MQTT 5 CONNECT with a PUBLISH property": CONNACK5[0x82],
           "MQTT 5 CONNECT, properties past the end": CONNACK5[0x81],
           "protocol level 9": CONNACK[1], "empty client id, clean session 0": CONNACK[2],
           "two CONNECTs in a row": CONNACK[5]}


def misanswered(port: int, timeout: float = TIMEOUT) -> dict[str, bytes]:
    """Each malformed packet on its own connection; the ones answered otherwise than MQTT 3.1.1 prescribes."""
    wrong = {}
    for name, data in MALFORMED:
        try:
            answer = send_raw(port, data, timeout)
        except TimeoutError:
            answer = b"<connection kept open>"
        if answer != ANSWERS.get(name, b""):
            wrong[name] = answer
    return wrong


def malformed_packets(broker: BrokerUnderTest, device: Device, count: int) -> Tally:
    """Every malformed packet of MALFORMED, each on its own connection, while commands flow."""
    tally = Tally(f"{len(MALFORMED)} malformed packets", broker.kind)
    with bystander(broker, tally):
        sender = Client(broker, "laptop")
        send(sender, tally, toggles("malformed", count // 2))
        wrong = misanswered(broker.port, timeout=10.0)
        send(sender, tally, toggles("malformed-after", count - count // 2))
        settle(tally, sender, device)
        sender.close()
    tally.note = (f"{len(MALFORMED) - len(wrong)} of {len(MALFORMED)} answered as MQTT prescribes"
                  + (f"; not: {', '.join(wrong)}" if wrong else ""))
    return tally


def squatting(broker: BrokerUnderTest, device: Device, count: int) -> Tally:
    """Another user logs in again and again with the device's client id (a clean session) while commands flow."""
    tally = Tally("client id squatting", broker.kind)
    stop = threading.Event()
    admitted = Counter[str]()

    def squat() -> None:
        while not stop.wait(0.2):
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=paho.MQTTv311, clean_session=True)
            c.username_pw_set("stranger", USERS["stranger"])
            c.on_connect = lambda client, u, f, rc, p: admitted.update(["refused" if rc.is_failure else "admitted"])
            try:
                c.connect("127.0.0.1", broker.port, keepalive=10)
                c.loop(timeout=2)
            except OSError:
                pass
            finally:
                c.disconnect()
                close_socket(c)

    squatter = threading.Thread(target=squat, daemon=True)
    with bystander(broker, tally):
        squatter.start()
        sender = Client(broker, "laptop")
        for chunk in range(10):
            send(sender, tally, toggles(f"squat{chunk}", count // 10))
            time.sleep(0.2)  # a stream spread over the squatter's attempts
        settle(tally, sender, device)
        sender.close()
        stop.set()
    squatter.join(TIMEOUT)
    tally.note = f"squatter admitted {admitted['admitted']} time(s), refused {admitted['refused']}"
    return tally


def publisher_leaves_mqtt5_qos2(broker: BrokerUnderTest, device: Device, count: int) -> Tally:
    """publisher_leaves with an MQTT 5 publisher at QoS 2 (the exchange ends with PUBCOMP)."""
    return publisher_leaves(broker, device, count, mqtt5=True, qos=2)


def broker_killed_after_pubacks_mqtt5_qos2(broker: BrokerUnderTest, device: Device, count: int) -> Tally:
    """broker_killed_after_pubacks with an MQTT 5 publisher at QoS 2: killed right after the last PUBCOMP."""
    return broker_killed_after_pubacks(broker, device, count, mqtt5=True, qos=2)


def broker_restarts_mqtt5_qos2(broker: BrokerUnderTest, device: Device, count: int, restarts: int = 10) -> Tally:
    """broker_restarts with an MQTT 5 publisher at QoS 2 on a session that outlives its connection."""
    return broker_restarts(broker, device, count, restarts, mqtt5=True, qos=2)


MQTT5_FAULTS = {publisher_leaves_mqtt5_qos2, broker_killed_after_pubacks_mqtt5_qos2, broker_restarts_mqtt5_qos2}
MATRIX: list[tuple[Fault, int]] = [
    (publisher_leaves, 100), (broker_killed_after_pubacks, 20), (broker_restarts, 100), (node_killed, 20),
    (publisher_leaves_mqtt5_qos2, 100), (broker_killed_after_pubacks_mqtt5_qos2, 20),
    (broker_restarts_mqtt5_qos2, 100),
    (churn, 200), (login_flood, 100), (idle_sockets, 50), (malformed_packets, 50), (squatting, 50),
]
