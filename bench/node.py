"""Benchmark of the device node against the issue's performance targets.

Starts a broker (Debian's mosquitto with the settings users run it with, or the
embedded broker) and the real `edison-node` process with simulated pins,
then prints, in one run: the transport floor (an echo through the same broker
with the node's own MQTT link), the node's `/set` -> `/state` round trip and
`/set` -> pin-change time, its memory after 1,000 commands, its idle CPU and
thread count, and its start -> `online` time, each with its target. Then the
same node on `--pins gpiod` beside `--pins sim`: start -> `online`, memory,
idle CPU and threads (gpiod on the stand-in 2.x bindings of the tests, PWM on
a directory laid out as an exported sysfs channel: no board here has chips).

    python bench/node.py            # full run (a few minutes)
    python bench/node.py --quick    # smoke run (a few seconds)

Not a test: timings depend on the machine; the tests assert behaviour.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/node.py`, this file's folder comes first on sys.path and
# its name would shadow the `node` package; the project root must win.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import node.mqtt as node_mqtt  # noqa: E402
from node.link import Incoming, Message, Session  # noqa: E402
from node.mqtt import BrokerAddress, LinkSettings, MqttLink  # noqa: E402
from testkit.mqtt import Broker, Probe, Received  # noqa: E402
from testkit.procs import Proc, free_port, python_cmd, read_trace  # noqa: E402
from testkit.brokers import mosquitto_binary, run_mosquitto  # noqa: E402
from testkit.standins import PINLIBS  # noqa: E402

DEVICE = "edison-bench"
# A dimmable LED and a button: every part of the node is loaded, as on a board that uses them.
TOPICS_YAML = f"""\
prefix: edison
devices:
  {DEVICE}:
    outputs:
      led: {{pin: 20, pwm: true}}
    inputs:
      button: {{pin: 36, debounce: 0.05}}
"""
GPIOD_KEYS = {"led: {pin: 20, pwm: true}": "led: {pin: 20, pwm: true, pwm_chip: 0, pwm_channel: 1}"}

DEBOUNCE = 0.05
WAIT = 15.0  # seconds to wait for any single event before giving up
CLK_TCK = os.sysconf("SC_CLK_TCK")
GAP, GAP_SECONDS = "gap", 0.1  # key and spacing of the QoS 0 round trips sent with a pause before each
Series = dict[int | str, "Timings"]  # round trips by request QoS (1, 0) or GAP

# Targets from the issue (Performance).
RTT_RATIO_TARGET = 1.5
RSS_TARGET_MIB = 30.0
IDLE_CPU_TARGET_PCT = 0.05
START_TARGET_MS = 300.0


# -- brokers --------------------------------------------------------------------

def need_mosquitto() -> str:
    found = mosquitto_binary()
    if not found:
        sys.exit("bench: mosquitto is not installed (Debian: apt-get install mosquitto); "
                 "or run with --broker embedded")
    return found


@contextmanager
def running_broker(kind: str, workdir: Path) -> Iterator[Broker]:
    """mosquitto as users run it (a listener and anonymous access, nothing tuned), or the embedded one.

    `mosquitto-nodelay` adds `set_tcp_nodelay true`, the setting recommended for brokers one configures.
    """
    port = free_port()
    if kind == "embedded":
        proc = Proc(python_cmd("broker", "--allow-anonymous", "--bind", f"127.0.0.1:{port}"),
                    workdir / f"embedded-{port}.log")
        proc.wait_for_line(r"listening on", timeout=WAIT)
    else:
        conf = workdir / f"{kind}-{port}.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        + ("set_tcp_nodelay true\n" if kind == "mosquitto-nodelay" else ""))
        proc = run_mosquitto(need_mosquitto(), conf, workdir / f"{kind}-{port}.log", port)
    try:
        yield Broker("embedded" if kind == "embedded" else "mosquitto", port, proc)
    finally:
        proc.signal(signal.SIGINT)  # SIGINT and SIGTERM both stop it cleanly
        try:
            proc.wait(WAIT)
        finally:
            proc.stop()


# -- measuring ------------------------------------------------------------------

Answer = Callable[[str, Received], bool]


@dataclass(frozen=True)
class Timings:
    seconds: list[float]

    def pct(self, q: float) -> float:
        """The q-th percentile (nearest rank) in milliseconds."""
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] * 1000

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)


def requester(broker: Broker) -> Probe:
    """The sending side, shared by the floor and the node: it must not add Nagle stalls of its own."""
    probe = Probe(broker, client_id="", username="bench")
    sock = probe.client.socket()
    assert isinstance(sock, socket.socket), sock
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return probe


def round_trips(probe: Probe, request: str, reply: str, payloads: Iterator[str], n: int, qos: int = 1,
                sent_at: list[float] | None = None, gap: float = 0.0, answers: Answer | None = None) -> Timings:
    """Publish and wait for the matching reply, one at a time, `gap` seconds apart; `sent_at` gets wall-clock times.

    The reply matches when its payload equals the request's, or when `answers(request payload, reply)` holds.
    Back to back (no gap) a reply can wait for the delayed ACK of the previous one's packets where Nagle is on;
    a gap longer than the delayed-ACK timer (40 ms on Linux) shows what a single command sees.
    """
    out = []
    for _ in range(n):
        time.sleep(gap)  # pacing, not waiting for an event
        payload = next(payloads)
        wall, start = time.time(), time.perf_counter()
        probe.client.publish(request, payload, qos=qos)
        if answers is None:
            probe.wait_for(reply, payload, timeout=WAIT)
        else:
            probe.wait_for(reply, timeout=WAIT, where=functools.partial(answers, payload))
        out.append(time.perf_counter() - start)
        if sent_at is not None:
            sent_at.append(wall)
    return Timings(out)


def request_response(probe: Probe, request: str, reply: str, payloads: Iterator[str], n: int) -> Timings:
    """What `mosquitto_rr` does over MQTT 5: a QoS 1 request with a response topic and correlation data, timed
    until the reply carrying that correlation data arrives on the response topic."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    out = []
    for i in range(n):
        correlation = f"rr-{i}".encode()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic, props.CorrelationData = reply, correlation
        start = time.perf_counter()
        probe.client.publish(request, next(payloads), qos=1, properties=props)
        probe.wait_for(reply, timeout=WAIT,
                       where=lambda m, c=correlation: getattr(m.properties, "CorrelationData", None) == c)
        out.append(time.perf_counter() - start)
    return Timings(out)


def result_for(command: str, msg: Received) -> bool:
    """A result that reports the state a plain ON/OFF command asked for."""
    return msg.json().get("state") == command


def alternating(first: str) -> Iterator[str]:
    state = first
    while True:
        yield state
        state = "OFF" if state == "ON" else "ON"


def transport_floor(broker: Broker, probe: Probe, n: int, quickack: bool = True) -> Series:
    """The same exchange without the node, per request QoS: echoed by the node's own Link as a retained QoS 1 reply.

    With `quickack` false the echo does not re-arm TCP_QUICKACK (the link as it was before it did), and only the
    QoS 0 requests back to back are measured: the case it is for.
    """
    request, reply = "bench/echo/request", "bench/echo/reply"
    link = MqttLink(LinkSettings(BrokerAddress.parse(broker.url), protocol="5" if broker.mqtt5 else "3.1.1"),
                    client_id="bench-echo")
    rearm = node_mqtt._quickack
    if not quickack:
        node_mqtt._quickack = lambda sock: None  # the echo's link as it was before it re-armed TCP_QUICKACK

    def echo(msg: Incoming) -> None:
        link.publish(Message(reply, msg.payload, retain=True))

    link.start(Session(subscriptions=(request,), on_message=echo))
    probe.subscribe(reply)
    try:
        _until_answered(lambda: probe.client.publish(request, "warm-up", qos=1),
                        lambda t: probe.wait_for(reply, "warm-up", timeout=t))
        payloads = alternating("ON")
        if not quickack:
            return {0: round_trips(probe, request, reply, payloads, n // 2, 0)}
        timings: Series = {1: round_trips(probe, request, reply, payloads, n, 1),
                           0: round_trips(probe, request, reply, payloads, n // 2, 0),
                           GAP: round_trips(probe, request, reply, payloads, n // 5, 0, gap=GAP_SECONDS)}
        return timings
    finally:
        node_mqtt._quickack = rearm
        link.stop()
        probe.client.publish(reply, b"", qos=1, retain=True)  # leave no retained message behind


def _until_answered(send: Callable[[], object], wait: Callable[[float], object]) -> None:
    """Repeat `send` until `wait` sees its answer: the echo's subscription is in place once one comes back."""
    deadline = time.monotonic() + WAIT
    while True:
        send()
        try:
            wait(0.5)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def gpiod_board(workdir: Path) -> list[str]:
    """A stand-in gpiochip0 and a PWM channel laid out as exported, in `workdir`: the node's gpiod arguments."""
    from testkit.standins.pinlibs.gpiod._kernel import make_chip
    from testkit.standins import PI5_LINES

    chip = make_chip(workdir / "gpiochip0", "pinctrl-rp1", PI5_LINES)
    channel = workdir / "pwm" / "pwmchip0" / "pwm1"
    channel.mkdir(parents=True)
    (channel.parent / "npwm").write_text("2\n")
    for name in ("period", "duty_cycle", "enable"):
        (channel / name).write_text("0\n")
    return ["--pins", "gpiod", "--gpio-chip", str(chip), "--pwm-sysfs", str(workdir / "pwm")]


class NodeProcess:
    """The real node, as users start it, with simulated pins and a trace file, or with `pins` gpiod on the
    stand-in bindings."""

    def __init__(self, broker: Broker, workdir: Path, index: int, *extra: str, pins: str = "sim") -> None:
        self.config = workdir / "topics.yaml"
        self.trace = workdir / "trace.jsonl"
        self.inputs = workdir / "inputs"
        env = {"MQTT_USERNAME": DEVICE}
        if pins == "sim":
            if not self.config.exists():
                self.config.write_text(TOPICS_YAML)
                os.mkfifo(self.inputs)
            backend = ["--pins", "sim", "--trace", str(self.trace), "--sim-inputs", str(self.inputs)]
        else:
            text = TOPICS_YAML
            for sim_entry, gpiod_entry in GPIOD_KEYS.items():
                text = text.replace(sim_entry, gpiod_entry)
            self.config.write_text(text)
            backend = gpiod_board(workdir) if not (workdir / "gpiochip0").exists() else [
                "--pins", "gpiod", "--gpio-chip", str(workdir / "gpiochip0"), "--pwm-sysfs", str(workdir / "pwm")]
            env["PYTHONPATH"] = str(PINLIBS)
        argv = python_cmd("node", "--config", str(self.config), "--device", DEVICE, "--broker", broker.url,
                          *backend, "--state", str(workdir / "state"), *extra)
        self.spawned_wall, self.spawned = time.time(), time.perf_counter()
        self.proc = Proc(argv, workdir / f"node-{index}.log", env=env)

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def seconds_to_connecting(self) -> float:
        """Spawn to the log line `connecting to` (interpreter, imports, topics.yaml, pins), from its asctime."""
        line = self.proc.wait_for_line(r"connecting to ", timeout=WAIT)
        found = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
        assert found, f"no time stamp in {line!r}"
        stamp, millis = found.groups()
        logged = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
        return logged - self.spawned_wall

    def stop(self) -> None:
        self.proc.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(WAIT)
        finally:
            self.proc.stop()
        if code != 0:
            raise RuntimeError(f"node exited with {code}:\n{self.proc.output}")


@dataclass(frozen=True)
class Start:
    online: float  # seconds from spawn to the retained `online`
    connecting: float  # seconds from spawn to `connecting to` in the log


def start_node(broker: Broker, probe: Probe, workdir: Path, index: int, *extra: str,
               pins: str = "sim") -> tuple[NodeProcess, Start]:
    """Spawn the node and wait for its retained `online`."""
    node = NodeProcess(broker, workdir, index, *extra, pins=pins)
    probe.wait_for(f"edison/{DEVICE}/status", "online", timeout=WAIT)
    online = time.perf_counter() - node.spawned
    return node, Start(online, node.seconds_to_connecting())


def start_times(broker: Broker, probe: Probe, workdir: Path, count: int, *extra: str,
                pins: str = "sim") -> list[Start]:
    starts = []
    for i in range(count):
        node, start = start_node(broker, probe, workdir, i, *extra, pins=pins)
        node.stop()
        starts.append(start)
    return starts


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise KeyError(name)


def rss_mib(pid: int) -> float:
    return int(status_field(pid, "VmRSS").split()[0]) / 1024


def cpu_ticks(pid: int) -> int:
    """utime + stime from /proc/<pid>/stat, in clock ticks (1/CLK_TCK s) over all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), counted after the ")"


def cpu_ns(pid: int) -> int:
    """CPU time in ns summed over the threads (schedstat): finer than stat's 10 ms ticks."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


# -- where time and memory go -------------------------------------------------

IMPORT_STEPS = ["import yaml", "import paho.mqtt.client", "import voluptuous", "import node.config",
                "node.config.load('topics.yaml')", "import node.service, node.__main__",
                "import gpiod"]  # the real bindings: --pins gpiod only
_STEP_PROBE = """\
import time
start = time.time()
import pathlib, sys
def rss(): return int(pathlib.Path('/proc/self/status').read_text().split('VmRSS:')[1].split()[0]) / 1024
print(start, rss())
for step in sys.argv[1:]:
    t = time.perf_counter(); exec(step); print(time.perf_counter() - t, rss())
"""


def start_steps(runs: int = 3) -> list[tuple[str, float, float]]:
    """(step, seconds, RSS MiB after it) for the interpreter and each import the node makes, median of `runs`."""
    samples = []
    for _ in range(runs):
        spawned = time.time()
        out = subprocess.run([sys.executable, "-c", _STEP_PROBE, *IMPORT_STEPS], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        values = [float(v) for v in out]
        values[0] -= spawned  # the interpreter: spawn to its first statement
        samples.append(values)
    medians = [statistics.median(column) for column in zip(*samples, strict=True)]
    labels = ["interpreter start"] + IMPORT_STEPS
    return [(label, medians[2 * i], medians[2 * i + 1]) for i, label in enumerate(labels)]


# -- the run ------------------------------------------------------------------

class Report:
    def __init__(self) -> None:
        self.misses = 0

    @staticmethod
    def section(title: str) -> None:
        print(f"\n{title}", flush=True)

    def row(self, label: str, value: str, target: str = "", ratio: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        self.misses += ok is False
        print(f"  {label:<44} {value:>16}   {target:<20} {ratio:<16} {verdict}".rstrip(), flush=True)


def input_edges(probe: Probe, node: NodeProcess, n: int) -> Timings:
    """A simulated button pressed and released `n` times, one edge at a time: the edge written to the node's FIFO
    until its debounced `/state` arrives (QoS 1, retained)."""
    state_topic = f"edison/{DEVICE}/button/state"
    out = []
    with open(node.inputs, "w") as wire:
        for i in range(n):
            level = i % 2  # idle high (pull up, active low): 0 presses, 1 releases
            start = time.perf_counter()
            wire.write(f'{{"pin": 36, "value": {level}}}\n')
            wire.flush()
            probe.wait_for(state_topic, "ON" if level == 0 else "OFF", timeout=WAIT)
            out.append(time.perf_counter() - start)
    return Timings(out)


def latency_rows(report: Report, floor: Series, node: Series) -> None:
    """Keys: the request's QoS 1 (n times) or 0 (n/2 times) back to back, or GAP (QoS 0, n/5 times, a pause
    before each: a lone command)."""
    for qos, note in ((1, ""), (0, ", QoS 0 request"), (GAP, f", QoS 0, {GAP_SECONDS * 1000:.0f} ms apart")):
        report.row(f"transport floor{note} p50 / p99", f"{floor[qos].p50:.2f} / {floor[qos].p99:.2f} ms",
                   "(echo, same broker)")
        ratio = node[qos].p50 / floor[qos].p50
        report.row(f"/set -> /state{note} p50 / p99", f"{node[qos].p50:.2f} / {node[qos].p99:.2f} ms",
                   f"p50 <= {RTT_RATIO_TARGET}x floor", f"{ratio:.2f}x floor", ratio <= RTT_RATIO_TARGET)


def run(kind: str, args: argparse.Namespace, report: Report, full: bool) -> None:
    """Every figure on one broker; with `full` false only the round trips."""
    n, total = args.commands, args.total
    set_topic, state_topic = f"edison/{DEVICE}/led/set", f"edison/{DEVICE}/led/state"
    result_topic = f"edison/{DEVICE}/result"
    with tempfile.TemporaryDirectory(prefix="edison-bench-") as tmp, running_broker(kind, Path(tmp)) as broker:
        workdir = Path(tmp)
        report.section(f"broker: {kind} on {broker.url}" + ("" if full else " (round trips only)"))
        probe = requester(broker)
        try:
            floor = transport_floor(broker, probe, n)
            before = transport_floor(broker, probe, n, quickack=False)[0]
            probe.subscribe(f"edison/{DEVICE}/status", state_topic, result_topic, f"edison/{DEVICE}/button/state")
            starts = start_times(broker, probe, workdir, args.starts) if full else []
            node, _ = start_node(broker, probe, workdir, len(starts))
            try:
                # The node publishes its state after subscribing, `online` before: only from here on can no
                # command be lost on a new session.
                probe.wait_for(state_topic, "OFF", timeout=WAIT)
                rss_online = rss_mib(node.pid)
                sent_at: list[float] = []
                traced_before = len(read_trace(node.trace))
                payloads = alternating("ON")
                cpu_before = cpu_ns(node.pid)
                node_rtt: Series = {1: round_trips(probe, set_topic, state_topic, payloads, n, 1, sent_at)}
                cpu_per_command = (cpu_ns(node.pid) - cpu_before) / n / 1000
                node_rtt[0] = round_trips(probe, set_topic, state_topic, payloads, n // 2, 0)
                node_rtt[GAP] = round_trips(probe, set_topic, state_topic, payloads, n // 5, 0, gap=GAP_SECONDS)
                latency_rows(report, floor, node_rtt)
                report.row("  floor, QoS 0 request, echo without QUICKACK", f"{before.p50:.2f} / {before.p99:.2f} ms",
                           "(before)", f"{before.p50 / floor[0].p50:.2f}x floor")
                probe.barrier()  # the results of the round trips above are not answers to what follows
                result = round_trips(probe, set_topic, result_topic, payloads, n // 5, 1, answers=result_for)
                report.row("/set -> result p50 / p99", f"{result.p50:.2f} / {result.p99:.2f} ms",
                           "(the 2nd publish)", f"{result.p50 / floor[1].p50:.2f}x floor")
                if probe.mqtt5:
                    reply_topic = f"edison/{DEVICE}/reply/bench"
                    probe.subscribe(reply_topic)
                    rr = request_response(probe, set_topic, reply_topic, payloads, n // 5)
                    report.row("MQTT 5 request/response p50 / p99", f"{rr.p50:.2f} / {rr.p99:.2f} ms",
                               "(mosquitto_rr-style)", f"{rr.p50 / floor[1].p50:.2f}x QoS 1 floor")
                if not full:
                    return
                changes = read_trace(node.trace)[traced_before:traced_before + n]  # one level change per command
                pin = Timings([c["t"] - sent for c, sent in zip(changes, sent_at, strict=True)])
                report.row("/set -> pin change p50 / p99", f"{pin.p50:.2f} / {pin.p99:.2f} ms",
                           "(trace, time.time())", f"{pin.p50 / floor[1].p50:.2f}x floor")
                report.row("node CPU per command", f"{cpu_per_command:.0f} us", "(QoS 1, schedstat)")
                edges = input_edges(probe, node, max(4, n // 5))
                excess = edges.p50 - DEBOUNCE * 1000
                report.row("input edge -> /state p50 / p99", f"{edges.p50:.2f} / {edges.p99:.2f} ms",
                           f"(debounce {DEBOUNCE * 1000:.0f} ms)", f"+{excess:.2f} ms: {excess / floor[GAP].p50:.2f}x "
                           "lone floor")
                round_trips(probe, set_topic, state_topic, payloads, total - (n + n // 2 + 2 * (n // 5)))
                rss = rss_mib(node.pid)
                report.row(f"RSS after {total} commands", f"{rss:.1f} MiB", f"<= {RSS_TARGET_MIB:.0f} MiB",
                           f"{rss / RSS_TARGET_MIB:.2f}x target", rss <= RSS_TARGET_MIB)
                report.row("  RSS once online", f"{rss_online:.1f} MiB")
                idle_rows(report, node.pid, args.idle)
            finally:
                node.stop()
                probe.client.publish(f"edison/{DEVICE}/status", b"", qos=1, retain=True)
            version = "5" if broker.mqtt5 else "3.1.1"
            start_rows(report, starts, start_times(broker, probe, workdir, args.starts, "--protocol", version))
        finally:
            probe.close()


IDLE_SETTLE = 2.0  # seconds for the last round trip's acknowledgements to finish before idle is measured


def idle_cpu(pid: int, seconds: float) -> tuple[float, float, float]:
    """(percent by schedstat, percent by stat's ticks, seconds measured) of a node left alone for `seconds`."""
    time.sleep(IDLE_SETTLE)  # the measurement's start, not a wait: its first 0.1 s would hold the last PUBACKs
    ticks, ns, t0 = cpu_ticks(pid), cpu_ns(pid), time.perf_counter()
    time.sleep(seconds)  # the measurement itself: the node is left alone for this long
    elapsed = time.perf_counter() - t0
    return (cpu_ns(pid) - ns) / 1e9 / elapsed * 100, (cpu_ticks(pid) - ticks) / CLK_TCK / elapsed * 100, elapsed


def idle_rows(report: Report, pid: int, seconds: float) -> None:
    ns_pct, tick_pct, elapsed = idle_cpu(pid, seconds)
    report.row(f"idle CPU over {elapsed:.0f} s", f"{ns_pct:.4f} %", f"< {IDLE_CPU_TARGET_PCT} %",
               f"{ns_pct / IDLE_CPU_TARGET_PCT:.2f}x target", ns_pct < IDLE_CPU_TARGET_PCT)
    report.row("  same from /proc/<pid>/stat", f"{tick_pct:.3f} %", f"(1 tick = {100 / CLK_TCK / elapsed:.3f} %)")
    report.row("threads at idle", str(threads(pid)), "(/proc/<pid>/task)")


def start_rows(report: Report, starts: list[Start], forced: list[Start]) -> None:
    """`forced`: starts with the broker's MQTT version given, so without the version probe of `--protocol auto`."""
    online = statistics.median(s.online for s in starts) * 1000
    report.row(f"start -> online, median of {len(starts)}", f"{online:.0f} ms", f"< {START_TARGET_MS:.0f} ms",
               f"{online / START_TARGET_MS:.2f}x target", online < START_TARGET_MS)
    report.row("  each start", ", ".join(f"{s.online * 1000:.0f}" for s in starts) + " ms")
    connecting = statistics.median(s.connecting for s in starts) * 1000
    report.row("  of which spawn -> connecting", f"{connecting:.0f} ms", "(imports, topics.yaml)")
    forced_online = statistics.median(s.online for s in forced) * 1000
    report.row("  with --protocol given (no version probe)", f"{forced_online:.0f} ms")


@dataclass(frozen=True)
class Footprint:
    online: float  # median ms from spawn to `online`
    rss_online: float  # MiB
    rss_after: float  # MiB after the commands
    idle: float  # percent CPU
    threads: int


def footprint(broker: Broker, probe: Probe, workdir: Path, args: argparse.Namespace, pins: str) -> Footprint:
    """One backend: starts, then a node that takes `args.commands` commands and is left idle."""
    workdir.mkdir()
    starts = start_times(broker, probe, workdir, args.starts, pins=pins)
    node, _ = start_node(broker, probe, workdir, len(starts), pins=pins)
    try:
        probe.wait_for(f"edison/{DEVICE}/led/state", timeout=WAIT)
        rss_online = rss_mib(node.pid)
        round_trips(probe, f"edison/{DEVICE}/led/set", f"edison/{DEVICE}/led/state", alternating("ON"), args.commands)
        rss_after = rss_mib(node.pid)
        idle, _, _ = idle_cpu(node.pid, args.idle)
        return Footprint(statistics.median(s.online for s in starts) * 1000, rss_online, rss_after, idle,
                         threads(node.pid))
    finally:
        node.stop()
        probe.client.publish(f"edison/{DEVICE}/status", b"", qos=1, retain=True)


def backend_rows(kind: str, args: argparse.Namespace, report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="edison-bench-") as tmp, running_broker(kind, Path(tmp)) as broker:
        report.section(f"pin backends on {kind}: --pins gpiod (stand-in bindings) beside --pins sim, "
                       f"{args.commands} commands each")
        probe = requester(broker)
        try:
            probe.subscribe(f"edison/{DEVICE}/status", f"edison/{DEVICE}/led/state")
            sim = footprint(broker, probe, Path(tmp) / "sim", args, "sim")
            gpiod = footprint(broker, probe, Path(tmp) / "gpiod", args, "gpiod")
        finally:
            probe.close()
    for label, unit, a, b in (("start -> online, median", "ms", gpiod.online, sim.online),
                              ("RSS once online", "MiB", gpiod.rss_online, sim.rss_online),
                              (f"RSS after {args.commands} commands", "MiB", gpiod.rss_after, sim.rss_after),
                              (f"idle CPU over {args.idle:.0f} s", "%", gpiod.idle, sim.idle)):
        digits = 4 if unit == "%" else 1 if unit == "MiB" else 0
        report.row(label, f"{a:.{digits}f} / {b:.{digits}f} {unit}", "(gpiod / sim)",
                   f"{a / b:.2f}x sim" if b else "")
    report.row("threads at idle", f"{gpiod.threads} / {sim.threads}", "(gpiod / sim)")


def where_it_goes(report: Report, runs: int) -> None:
    report.section("where start time and memory go: each step of the node's start in a fresh interpreter")
    for step, seconds, rss in start_steps(runs):
        report.row(step, f"+{seconds * 1000:.0f} ms", f"RSS then {rss:.1f} MiB")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few commands, 1 s idle, 2 starts")
    p.add_argument("--broker", choices=("mosquitto", "embedded"), default="mosquitto",
                   help="the broker for every figure (default: %(default)s)")
    p.add_argument("--compare", action="store_true",
                   help="also measure round trips through mosquitto with set_tcp_nodelay true and through the "
                   "embedded broker")
    args = p.parse_args(argv)
    args.commands, args.total, args.idle, args.starts = (20, 50, 1.0, 2) if args.quick else (500, 1000, 10.0, 5)
    args.import_runs = 1 if args.quick else 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    print(f"edison-node benchmark: {args.commands} round trips, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    run(args.broker, args, report, full=True)
    backend_rows(args.broker, args, report)
    if args.compare:
        for kind in ("mosquitto-nodelay", "embedded"):
            if kind != args.broker:
                run(kind, args, report, full=False)
    where_it_goes(report, args.import_runs)
    print(f"\n{report.misses} target(s) missed" if report.misses else "\nall targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
