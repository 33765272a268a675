"""How the choice of broker grows with the fleet: N simulated devices on each broker, in one run.

Each device is a light asyncio MQTT 3.1.1 client (broker/wire.py's codec), so
thousands fit in one process: a persistent session (clean session 0)
subscribed to its own `/set` on every connect, answering each command as the
node does, with a retained QoS 1 state and a QoS 1 result. A device that is
refused (its login or its subscription) tries again with the node's own
reconnect policy (1 s doubling to 30 s, with jitter). A controller
sends the commands and reads the results. For the embedded broker (with
--data), Mosquitto (persistence as the export sets it) and a 3-member NATS
cluster (the export's member configs; devices spread over the members):

- connect storm: every device connects and subscribes at once; again after the
  broker (every member) restarts, when the sessions must still be there;
- fan-out: one command to every device, publish -> result p50/p99, and how many
  results never came;
- steady: commands at a fixed rate to random devices, p50/p99;
- the broker's RSS after the storm and at the end, and its CPU per phase (all members).

The embedded broker and Mosquitto run without users (trial mode), so their
storms measure the broker, not the password hash; the cluster cannot (its auth
callout is part of every login), so there each device is a user of its own with
an argon2 hash of the lowest cost. What a real hash costs per login is printed
apart, and so is each login's CONNECT -> CONNACK time.

    python bench/fleet.py                          # 100 and 1,000 devices, every broker
    python bench/fleet.py --devices 100,1000,5000  # as far as the machine allows
    python bench/fleet.py --quick                  # smoke run: 20 devices
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from broker import wire  # noqa: E402
from node.reconnect import ReconnectPolicy  # noqa: E402
from testkit.cluster import NatsCluster  # noqa: E402
from testkit.brokers import start_embedded  # noqa: E402
from testkit.brokers import BROKER_KINDS, bench_brokers, run_mosquitto  # noqa: E402
from testkit.procs import free_port  # noqa: E402

PREFIX = "fleet"
KEEPALIVE = 600  # no pings needed within a run
MAX_PACKET = 1 << 20
ANSWER_WAIT = 60.0  # seconds a fan-out waits for the last result
STORM_LIMIT = 600.0  # seconds a connect storm may take before the broker's run is called failed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Connection:
    """One MQTT 3.1.1 connection: write packets, read them with a handler, acknowledge QoS 1."""

    def __init__(self, client_id: str, clean: bool, login: tuple[str, str] | None = None) -> None:
        self.client_id = client_id
        self.clean = clean
        self.login = login
        self.login_seconds: float | None = None  # CONNECT -> CONNACK of the last accepted login
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 0
        self._suback: asyncio.Future[wire.Suback] | None = None
        self.on_publish: Callable[[wire.Publish], None] = lambda p: None

    def packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def connect(self, port: int, subscriptions: list[str]) -> bool:
        """CONNECT, SUBSCRIBE; whether the session was present. Raises OSError/ConnectionError when refused."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        user, password = self.login or (None, None)
        writer.write(wire.connect(self.client_id, self.clean, KEEPALIVE, user,
                                  password.encode() if password is not None else None))
        began = time.perf_counter()
        try:
            connack = wire.parse_from_broker(*await wire.read_packet(reader.readexactly, MAX_PACKET))
        except (asyncio.IncompleteReadError, wire.Malformed) as exc:
            writer.close()
            raise ConnectionError(f"no CONNACK: {exc}") from None
        if not isinstance(connack, wire.Connack) or connack.code != wire.ACCEPTED:
            writer.close()
            raise ConnectionError(f"refused: {connack}")
        self.login_seconds = time.perf_counter() - began
        self._writer = writer
        self._suback = asyncio.get_running_loop().create_future()
        asyncio.create_task(self._read(reader))
        writer.write(wire.subscribe(self.packet_id(), [(s, 1) for s in subscriptions]))
        suback = await asyncio.wait_for(self._suback, 60)
        if wire.SUBSCRIBE_FAILURE in suback.codes:  # as the node does: leave, and try again
            writer.close()
            raise ConnectionError("subscription refused")
        return connack.session_present

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(wire.publish(topic, payload, 1, retain, self.packet_id()))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                packet = wire.parse_from_broker(*await wire.read_packet(reader.readexactly, MAX_PACKET))
                if isinstance(packet, wire.Suback) and self._suback and not self._suback.done():
                    self._suback.set_result(packet)
                elif isinstance(packet, wire.Publish):
                    if packet.qos and packet.packet_id is not None and self._writer:
                        self._writer.write(wire.ack(wire.PUBACK, packet.packet_id))
                    self.on_publish(packet)
        except (asyncio.IncompleteReadError, ConnectionError, wire.Malformed):
            pass
        finally:
            if self._suback and not self._suback.done():
                self._suback.set_exception(ConnectionError("closed before SUBACK"))
            if self._writer:
                self._writer.close()

    def close(self) -> None:
        if self._writer:
            self._writer.close()


class Device(Connection):
    """A simulated node: its /set in, a retained state and a result out."""

    def __init__(self, n: int, login: tuple[str, str] | None) -> None:
        super().__init__(f"dev-{n}", clean=False, login=login)
        self.base = f"{PREFIX}/dev-{n}"
        self.state = False
        self.on_publish = self._on_set

    def _on_set(self, packet: wire.Publish) -> None:
        command = json.loads(packet.payload)
        self.state = not self.state
        state = b"ON" if self.state else b"OFF"
        self.publish(f"{self.base}/led/state", state, retain=True)
        self.publish(f"{self.base}/result", json.dumps({"id": command["id"], "ok": True,
                                                          "state": state.decode()}).encode())

    async def connect_retrying(self, port: int, tally: StormTally) -> None:
        """Until connected and subscribed, backing off as the node does (its reconnect policy)."""
        policy = ReconnectPolicy(1)
        while True:
            try:
                present = await self.connect(port, [f"{self.base}/+/set"])
                tally.resumed += present
                return
            except (OSError, ConnectionError, asyncio.TimeoutError):
                tally.retries += 1
                policy.failed(0)
                await asyncio.sleep(policy.next()[1])


@dataclass
class StormTally:
    seconds: float = 0.0
    retries: int = 0
    resumed: int = 0


async def storm(devices: list[Device], ports: list[int]) -> StormTally:
    """All devices connect and subscribe at once (each to a member in turn)."""
    tally = StormTally()
    start = time.perf_counter()
    connecting = asyncio.gather(*(d.connect_retrying(ports[i % len(ports)], tally) for i, d in enumerate(devices)))
    try:
        await asyncio.wait_for(connecting, STORM_LIMIT)
    except asyncio.TimeoutError:
        raise TimeoutError(f"the storm of {len(devices)} did not end within {STORM_LIMIT:.0f} s "
                           f"({tally.retries} retries)") from None
    tally.seconds = time.perf_counter() - start
    return tally


class Controller(Connection):
    """Sends commands with ids and times each until its result."""

    def __init__(self, login: tuple[str, str] | None) -> None:
        super().__init__(f"controller-{os.getpid()}", clean=True, login=login)
        self.sent: dict[str, float] = {}
        self.latency: dict[str, float] = {}
        self._all_in: asyncio.Event | None = None
        self._expected = 0
        self.on_publish = self._on_result

    def _on_result(self, packet: wire.Publish) -> None:
        command_id = json.loads(packet.payload)["id"]
        sent = self.sent.get(command_id)
        if sent is not None and command_id not in self.latency:
            self.latency[command_id] = time.perf_counter() - sent
            if len(self.latency) >= self._expected and self._all_in:
                self._all_in.set()

    async def start(self, port: int) -> None:
        """Subscribed to every result; tried again (for a minute) while the broker refuses, as a device would."""
        deadline = time.monotonic() + 60
        while True:
            try:
                await self.connect(port, [f"{PREFIX}/+/result"])
                return
            except (OSError, ConnectionError, asyncio.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)

    def send(self, device: int, command_id: str) -> None:
        self.sent[command_id] = time.perf_counter()
        self.publish(f"{PREFIX}/dev-{device}/led/set", json.dumps({"state": "TOGGLE", "id": command_id}).encode())

    async def wait_all(self, timeout: float) -> None:
        self._expected = len(self.sent)
        self._all_in = asyncio.Event()
        if len(self.latency) < self._expected:
            try:
                await asyncio.wait_for(self._all_in.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def figures(self, ids: list[str]) -> tuple[float, float, int]:
        """p50, p99 (ms) of `ids`' latencies, and how many never got a result."""
        got = [self.latency[i] * 1000 for i in ids if i in self.latency]
        missing = len(ids) - len(got)
        if not got:
            return float("nan"), float("nan"), missing
        return statistics.median(got), percentile(got, 99), missing


# -- brokers --------------------------------------------------------------------

class Fleet:
    """A broker under the fleet: its MQTT ports, its processes (for RSS and CPU), a restart."""

    kind = ""

    def __init__(self, workdir: Path, devices: int) -> None:
        self.workdir = workdir
        self.devices = devices

    ports: list[int]

    def device_login(self, n: int) -> tuple[str, str] | None:
        """User and password of device n; None: the broker runs without users."""
        return None

    def controller_login(self) -> tuple[str, str] | None:
        return None

    def pids(self) -> list[int]:
        raise NotImplementedError

    def restart(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def rss_mib(self) -> float:
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024

    def cpu_seconds(self) -> float:
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        return total


class Embedded(Fleet):
    kind = "embedded"

    def __init__(self, workdir: Path, devices: int) -> None:
        super().__init__(workdir, devices)
        self.port = free_port()
        self.ports = [self.port]
        self._start()

    def _start(self) -> None:
        # Limits raised as a fleet's owner would: connections for every device, logins pending at once for a
        # storm from one address (an eighth of --max-pending may wait per address), and persistent sessions for
        # every device (without users they all count as one user's, capped at 20 by default).
        self.broker = start_embedded(self.workdir, "--allow-anonymous", "--data", str(self.workdir / "embedded-data"),
                                  "--max-connections", str(self.devices + 10),
                                  "--max-pending", str(max(64, 4 * self.devices)),
                                  "--max-sessions-per-user", str(self.devices + 10), port=self.port)

    def pids(self) -> list[int]:
        return [self.broker.proc.popen.pid]

    def restart(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        self.broker.proc.signal(signal.SIGTERM)
        self.broker.proc.wait(60)
        self.broker.proc.stop()


class Mosquitto(Fleet):
    kind = "mosquitto"

    def __init__(self, workdir: Path, devices: int, binary: str) -> None:
        super().__init__(workdir, devices)
        self.port = free_port()
        self.ports = [self.port]
        self.binary = binary
        data = workdir / "mosquitto-data"
        data.mkdir()
        self.conf = workdir / "mosquitto.conf"
        # What the export sets for durability and queues, without users.
        self.conf.write_text(textwrap.dedent(f"""\
            per_listener_settings false
            allow_anonymous true
            max_queued_messages 10000
            max_inflight_messages 256
            set_tcp_nodelay true
            persistence true
            persistence_location {data}/
            autosave_on_changes true
            autosave_interval 1
            log_dest stderr
            log_type error
            log_type warning
            log_type notice
            log_type information
            listener {self.port} 127.0.0.1
            max_connections -1
            """) + ("user root\n" if os.geteuid() == 0 else ""))  # as root it would switch to a user of its own
        self._start()

    def _start(self) -> None:
        self.proc = run_mosquitto(self.binary, self.conf, self.workdir / "mosquitto.log", self.port)

    def pids(self) -> list[int]:
        return [self.proc.popen.pid]

    def restart(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        self.proc.signal(signal.SIGTERM)
        self.proc.wait(60)
        self.proc.stop()


class Nats(Fleet):
    """The exported cluster with its auth callouts: every device a user of its own, as in production. Their
    hashes are argon2 at its lowest cost, so the storm measures the callout, not the hash (whose cost per
    login is printed apart)."""

    kind = "nats"

    def __init__(self, workdir: Path, devices: int) -> None:
        super().__init__(workdir, devices)
        self.cluster = NatsCluster(workdir, fleet_users(workdir, devices), fleet=devices,
                                   login=("controller", "pw-controller"))
        self.ports = [self.cluster.port(n) for n in self.cluster.numbers]

    def device_login(self, n: int) -> tuple[str, str] | None:
        return f"dev-{n}", f"pw-dev-{n}"

    def controller_login(self) -> tuple[str, str] | None:
        return "controller", "pw-controller"

    def pids(self) -> list[int]:
        return [p.popen.pid for p in [*self.cluster.procs.values(), *self.cluster.callouts.values()]]

    def restart(self) -> None:
        """Every member and every callout, as after a power cut of the whole site; waits until each member takes
        a login (JetStream recovers every session's consumers first)."""
        self.cluster.close()
        for n in self.cluster.numbers:
            self.cluster.start_callout(n)
            self.cluster.start(n, wait=False)
        for n in self.cluster.numbers:
            self.cluster.wait_ready(n, timeout=STORM_LIMIT)

    def close(self) -> None:
        self.cluster.close()


def fleet_users(workdir: Path, devices: int) -> tuple[Path, Path]:
    """topics.yaml with the fleet's devices and a controller, and their password file (argon2, lowest cost)."""
    from pwdlib.hashers.argon2 import Argon2Hasher

    from broker import passwords

    topics = workdir / "topics.yaml"
    topics.write_text(f"prefix: {PREFIX}\ndevices:\n"
                      + "".join(f"  dev-{n}: {{outputs: {{led: {{pin: 20}}}}}}\n" for n in range(devices))
                      + "access:\n  controller: controller\n")
    cheap = Argon2Hasher(time_cost=1, memory_cost=8, parallelism=1)
    users = {f"dev-{n}": f"pw-dev-{n}" for n in range(devices)} | {"controller": "pw-controller"}
    passwd = workdir / "passwd"
    passwords.write(passwd, {name: cheap.hash(password) for name, password in users.items()})
    return topics, passwd


# -- one broker, one fleet size ---------------------------------------------------

@dataclass
class Row:
    broker: str
    devices: int
    figures: dict[str, str] = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)


async def run_fleet(fleet: Fleet, row: Row, rate: float, steady_seconds: float) -> None:
    """Fills `row` phase by phase, so a phase that fails leaves the figures of those before it."""
    count = row.devices
    cpu0 = fleet.cpu_seconds()
    devices = [Device(n, fleet.device_login(n)) for n in range(count)]
    first = await storm(devices, fleet.ports)
    row.numbers["storm"] = first.seconds
    row.figures["connect storm"] = f"{first.seconds:.2f} s" + (f" ({first.retries} retries)" if first.retries else "")
    logins = [d.login_seconds * 1000 for d in devices if d.login_seconds is not None]
    row.figures["login p50 / p99"] = f"{statistics.median(logins):.0f} / {percentile(logins, 99):.0f} ms"
    row.figures["RSS after storm"] = f"{fleet.rss_mib():.0f} MiB"
    row.figures["CPU storm"] = f"{fleet.cpu_seconds() - cpu0:.1f} s"

    controller = Controller(fleet.controller_login())
    await controller.start(fleet.ports[0])
    cpu1 = fleet.cpu_seconds()
    ids = [f"fan-{n}" for n in range(count)]
    start = time.perf_counter()
    for n, command_id in enumerate(ids):
        controller.send(n, command_id)
        if n % 200 == 199:
            await asyncio.sleep(0)  # let results come in while sending
    await controller.wait_all(ANSWER_WAIT)
    p50, p99, missing = controller.figures(ids)
    done = max((controller.latency[i] + controller.sent[i] for i in ids if i in controller.latency), default=start)
    row.numbers["fanout p50"] = p50
    row.figures["fan-out p50 / p99"] = f"{p50:.0f} / {p99:.0f} ms"
    row.figures["fan-out all in"] = f"{done - start:.2f} s" + (f", {missing} MISSING" if missing else "")
    row.figures["CPU fan-out"] = f"{fleet.cpu_seconds() - cpu1:.1f} s"

    cpu2, began = fleet.cpu_seconds(), time.perf_counter()
    steady = []
    interval = 1.0 / rate
    next_at = time.perf_counter()
    for n in range(int(rate * steady_seconds)):
        command_id = f"steady-{n}"
        controller.send(random.randrange(count), command_id)
        steady.append(command_id)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await controller.wait_all(ANSWER_WAIT)
    p50, p99, missing = controller.figures(steady)
    row.numbers["steady p50"] = p50
    row.figures[f"steady {rate:g}/s p50 / p99"] = f"{p50:.1f} / {p99:.1f} ms" + (
        f", {missing} MISSING" if missing else "")
    row.figures["CPU steady"] = f"{(fleet.cpu_seconds() - cpu2) / (time.perf_counter() - began) * 100:.0f} %"

    controller.close()
    for d in devices:
        d.close()
    began = time.perf_counter()
    fleet.restart()
    row.figures["ready after restart"] = f"{time.perf_counter() - began:.1f} s"
    again = await storm(devices, fleet.ports)
    row.numbers["restart storm"] = again.seconds
    row.figures["storm after restart"] = (f"{again.seconds:.2f} s, {again.resumed}/{count} sessions kept"
                                          + (f" ({again.retries} retries)" if again.retries else ""))
    controller = Controller(fleet.controller_login())
    await controller.start(fleet.ports[0])
    ids = [f"after-{n}" for n in range(count)]
    for n, command_id in enumerate(ids):
        controller.send(n, command_id)
    await controller.wait_all(ANSWER_WAIT)
    missing = controller.figures(ids)[2]
    row.figures["answered after restart"] = f"{count - missing}/{count}"
    row.figures["RSS at end"] = f"{fleet.rss_mib():.0f} MiB"
    controller.close()
    for d in devices:
        d.close()


def login_costs() -> list[str]:
    """What one login costs the broker in password hashing, per export (each checked the way its broker does)."""
    from broker import passwords

    lines = []
    argon2 = passwords.argon2_hash("a fleet device's password")
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    checks = {
        "embedded and the NATS callout (argon2, first login; later ones are cached)":
            lambda: PasswordHash((Argon2Hasher(),)).verify("a fleet device's password", argon2),
        f"Mosquitto (PBKDF2-SHA512, {passwords.MOSQUITTO_ITERATIONS} iterations, every login)": _pbkdf2_check(),
    }
    for name, check in checks.items():
        start = time.perf_counter()
        for _ in range(5):
            check()
        lines.append(f"| {name} | {(time.perf_counter() - start) / 5 * 1000:.1f} ms |")
    return lines


def _pbkdf2_check() -> Callable[[], object]:
    import hashlib

    from broker import passwords

    return lambda: hashlib.pbkdf2_hmac("sha512", b"a fleet device's password", b"salt" * 3,
                                       passwords.MOSQUITTO_ITERATIONS, 64)


def table(rows: list[Row]) -> str:
    columns = list(dict.fromkeys(c for r in rows for c in r.figures))  # every figure any row has, in order
    lines = ["| broker | devices | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    lines += [f"| {r.broker} | {r.devices} | " + " | ".join(r.figures.get(c, "-") for c in columns) + " |"
              for r in rows]
    return "\n".join(lines)


def ratios(rows: list[Row]) -> str:
    """Each figure against the embedded broker's at the same fleet size (below 1: faster)."""
    keys = ["storm", "fanout p50", "steady p50", "restart storm"]
    lines = ["| broker | devices | " + " | ".join(f"{k} vs. embedded" for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for r in rows:
        base = next((b for b in rows if b.broker == "embedded" and b.devices == r.devices), None)
        if base is None or r is base:
            continue
        cells = [f"{r.numbers[k] / base.numbers[k]:.2f}x" if base.numbers.get(k) else "-" for k in keys]
        lines.append(f"| {r.broker} | {r.devices} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="100,1000", help="fleet sizes, comma-separated (default: %(default)s)")
    p.add_argument("--broker", choices=(*BROKER_KINDS, "all"), default="all")
    p.add_argument("--rate", type=float, default=50.0, help="steady commands per second (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0, help="steady phase length (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 devices, 2 s steady")
    args = p.parse_args(argv)
    sizes = [20] if args.quick else [int(n) for n in args.devices.split(",")]
    seconds = 2.0 if args.quick else args.seconds
    kinds, mosquitto = bench_brokers(args.broker)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(sizes) * 2 + 200  # devices here, their connections in the broker (which inherits the limit)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    rows = []
    with tempfile.TemporaryDirectory(prefix="edison-fleet-") as tmp:
        for count in sizes:
            for kind in kinds:
                workdir = Path(tmp) / f"{kind}-{count}"
                workdir.mkdir()
                fleet: Fleet = (Embedded(workdir, count) if kind == "embedded" else
                                Mosquitto(workdir, count, mosquitto) if kind == "mosquitto" else
                                Nats(workdir, count))
                row = Row(kind, count)
                try:
                    asyncio.run(run_fleet(fleet, row, args.rate, seconds))
                except Exception as exc:  # one broker that breaks must not hide the others' figures
                    row.figures["failed"] = f"after {len(row.figures)} figures: {type(exc).__name__}: " + \
                        " ".join(str(exc).split())[:200]
                finally:
                    fleet.close()
                rows.append(row)
                print(f"{kind}, {count} devices: {row.figures}", flush=True)
    print("\n## fleet\n")
    print(table(rows))
    print("\n## ratios (the embedded broker at the same size = 1)\n")
    print(ratios([r for r in rows if r.numbers]))
    print("\n## what one login costs in password hashing\n\n| export | per login |\n|---|---|")
    print("\n".join(login_costs()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
