"""The fault matrix on every broker, and what durability costs.

For each fault of testkit/faults.py, on the embedded broker, on Mosquitto with
the exported configuration (both with a data directory) and on the exported
3-member NATS cluster (the fault strikes member 1; the node is given every
member and fails over): commands sent,
acknowledged by the broker, carried out by the real node, lost and doubled,
how the broker exited where the fault stops it, and the round trip of a
bystander client meanwhile. Then the price of committing before the PUBACK:
QoS 1 publish -> PUBACK with and without a data directory, against the
embedded broker without one as the baseline of the same run.

    python bench/faults.py                  # every broker, the whole matrix (several minutes)
    python bench/faults.py --quick          # smoke run: small counts, three faults
    python bench/faults.py --broker embedded   # one broker

Not a test: the tests assert nothing is lost on the embedded broker; this prints the figures for all.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from testkit import faults  # noqa: E402
from testkit.users import USERS, make_users  # noqa: E402
from testkit.brokers import BROKER_KINDS, bench_brokers, mosquitto_version  # noqa: E402

QUICK = [(faults.publisher_leaves, 30), (faults.broker_killed_after_pubacks, 10),
         (faults.broker_killed_after_pubacks_mqtt5_qos2, 10), (faults.malformed_packets, 10)]
COLUMNS = ["fault", "broker", "sent", "acked", "carried out", "lost", "doubled", "broker exit",
           "bystander p50 / p99", "note"]


def table(rows: list[list[str]]) -> str:
    """A Markdown table, so the output can go into the README as it is."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell or "-" for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def run_fault(kind: str, fault: faults.Fault, count: int, workdir: Path, users: tuple[Path, Path],
              mosquitto_bin: str | None) -> faults.Tally:
    where = workdir / f"{kind}-{fault.__name__}"
    where.mkdir()
    broker = faults.BrokerUnderTest(kind, where, users, mosquitto_bin)
    device = faults.Device(broker, where, users[0])
    try:
        device.start()
        return fault(broker, device, count)
    except Exception as exc:  # one fault that breaks the harness must not hide the others' figures
        tally = faults.Tally(fault.__name__, kind)
        tally.note = f"run failed: {type(exc).__name__}: {str(exc)[:200]}"
        return tally
    finally:
        device.stop()
        broker.close()


# -- what durability costs --------------------------------------------------------

class Acks:
    """A publisher that records when each QoS 1 publish was sent and acknowledged."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        self.client.username_pw_set("laptop", USERS["laptop"])
        self.client.max_inflight_messages_set(1000)
        self._sent: dict[int, float] = {}
        self._early: dict[int, float] = {}
        self.seconds: list[float] = []
        self._cond = threading.Condition()
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        now = time.perf_counter()
        with self._cond:
            sent = self._sent.pop(mid, None)
            if sent is None:
                self._early[mid] = now
            else:
                self.seconds.append(now - sent)
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        start = time.perf_counter()
        mid = self.client.publish(topic, payload, qos=1).mid
        with self._cond:
            if mid in self._early:
                self.seconds.append(self._early.pop(mid) - start)
            else:
                self._sent[mid] = start

    def wait(self, count: int, timeout: float = 60.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.seconds) >= count, timeout):
                raise TimeoutError(f"{len(self.seconds)} of {count} PUBACKs")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def device_session(port: int, online: bool) -> Iterator[None]:
    """The device's persistent session, subscribed to its commands; connected and acknowledging, or gone."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=faults.DEVICE, protocol=paho.MQTTv311, clean_session=False)
    c.username_pw_set(faults.DEVICE, USERS[faults.DEVICE])
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(f"edison/{faults.DEVICE}/+/set", qos=1)
    subscribed.wait(15)
    if not online:
        c.disconnect()
        c.loop_stop()
    try:
        yield
    finally:
        if online:
            c.disconnect()
            c.loop_stop()


def cost(kind: str, data: bool, workdir: Path, users: tuple[Path, Path], mosquitto_bin: str | None,
         one_by_one: int, burst: int) -> dict[str, float]:
    where = workdir / f"cost-{kind}-{'data' if data else 'memory'}"
    where.mkdir()
    broker = faults.BrokerUnderTest(kind, where, users, mosquitto_bin, persistent=data)
    figures = {}
    try:
        for online in (True, False):
            with device_session(broker.port, online):
                acks = Acks(broker.port)
                if online:
                    for n in range(one_by_one):
                        acks.publish(faults.SET, b"%d" % n)
                        acks.wait(n + 1)
                    ordered = sorted(acks.seconds)
                    figures["p50"] = statistics.median(ordered) * 1000
                    figures["p99"] = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)] * 1000
                    acks.seconds.clear()
                start = time.perf_counter()
                for n in range(burst):
                    acks.publish(faults.SET, b"%d" % n)
                acks.wait(burst)
                figures["online" if online else "offline"] = burst / (time.perf_counter() - start)
                acks.close()
    finally:
        broker.close()
    return figures


def cost_rows(kinds: list[str], workdir: Path, users: tuple[Path, Path], mosquitto_bin: str | None,
              quick: bool) -> None:
    one_by_one, burst = (50, 200) if quick else (500, 2000)
    print(f"\n## QoS 1 publish -> PUBACK ({one_by_one} one at a time; bursts of {burst} to the device's session)\n")
    print("| broker | data directory | p50 / p99 one at a time | burst, device online | burst, device offline "
          "| p50 vs. baseline |")
    print("|---|---|---|---|---|---|")
    baseline = None
    for kind in kinds:
        for data in (True,) if kind == "nats" else (False, True):  # a cluster keeps everything in JetStream
            f = cost(kind, data, workdir, users, mosquitto_bin, one_by_one, burst)
            baseline = baseline or f["p50"]
            print(f"| {kind} | {'yes' if data else 'no'} | {f['p50']:.2f} / {f['p99']:.2f} ms "
                  f"| {f['online']:.0f} msg/s | {f['offline']:.0f} msg/s | {f['p50'] / baseline:.2f}x |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small counts, three faults")
    p.add_argument("--broker", choices=(*BROKER_KINDS, "all"), default="all")
    p.add_argument("--fault", action="append", choices=[f.__name__ for f, _ in faults.MATRIX],
                   help="only this fault (repeat it for several; default: all), without the durability rows")
    args = p.parse_args(argv)
    kinds, mosquitto_bin = bench_brokers(args.broker)
    matrix = QUICK if args.quick else faults.MATRIX
    if args.fault:
        matrix = [(f, n) for f, n in faults.MATRIX if f.__name__ in args.fault]
    with tempfile.TemporaryDirectory(prefix="edison-faults-") as tmp:
        workdir = Path(tmp)
        (workdir / "users").mkdir()
        users = make_users(workdir / "users")
        named = [f"mosquitto {'.'.join(map(str, mosquitto_version(mosquitto_bin)))} ({mosquitto_bin})"
                 if kind == "mosquitto" else kind for kind in kinds]
        print(f"# fault matrix: {len(matrix)} faults on {', '.join(named)}, each broker with a data directory\n")
        rows = []
        for fault, count in matrix:
            for kind in kinds:
                if kind == "nats" and fault in faults.MQTT5_FAULTS:
                    continue  # NATS speaks MQTT 3.1.1 with QoS 0 and 1 only
                tally = run_fault(kind, fault, count, workdir, users, mosquitto_bin)
                rows.append(tally.row())
                print(f"{tally}{'; ' + tally.note if tally.note else ''}", flush=True)
        print()
        print(table(rows))
        if not args.fault:
            cost_rows(kinds, workdir, users, mosquitto_bin, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
