"""How long a post takes from the X stream to a subscriber: local X stand-in -> edison-bridge -> mosquitto.

Run: python bench/bridge.py [posts]. Prints the median and 95th percentile latency
and the bridge's resident memory. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import TOPICS_YAML, _mosquitto_binary, start_mosquitto  # noqa: E402
from tests.helpers import Probe, Proc, python_cmd  # noqa: E402
from tests.xstream import TOKEN, XStreamServer, post  # noqa: E402


def main(count: int = 200) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    broker = start_mosquitto(tmp, _mosquitto_binary())
    xserver = XStreamServer({"k_yone": "1001"}).start()
    config = tmp / "topics.yaml"
    config.write_text(TOPICS_YAML + "bridge:\n  allow: [k_yone]\n  rate_limit: 100000\n  triggers:\n"
                      "    - {phrase: L Chika, device: edison-t, output: led, command: BLINK}\n")
    bridge = Proc(python_cmd("bridge", "--config", str(config), "--broker", broker.url, "--x-api-url",
                             xserver.url, "--state", str(tmp / "state")), tmp / "bridge.log",
                  env={"X_BEARER_TOKEN": TOKEN})
    probe = Probe(broker)
    try:
        probe.subscribe("edison/#")
        xserver.wait_streaming()
        bridge.wait_for_line(r"connected to mqtt://")
        latencies = []
        for i in range(count):
            post_id = str(10_000 + i)
            started = time.perf_counter()
            xserver.push(post(post_id, "L Chika", "1001", "k_yone"))
            probe.wait_for("edison/edison-t/led/set", where=lambda m, p=post_id: m.json()["id"] == f"x:{p}")
            latencies.append((time.perf_counter() - started) * 1000)
        rss = next(line.split()[1] for line in Path(f"/proc/{bridge.popen.pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS"))
        q = statistics.quantiles(latencies, n=20)
        print(f"{count} posts: stream -> subscriber median {statistics.median(latencies):.1f} ms, "
              f"p95 {q[18]:.1f} ms, max {max(latencies):.1f} ms; bridge RSS {int(rss) / 1024:.1f} MiB")
    finally:
        probe.close()
        bridge.signal(signal.SIGTERM)
        bridge.wait()
        bridge.stop()
        xserver.stop()
        broker.proc.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
