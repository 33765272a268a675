"""The real `edison-node` as a process: the test device's topics.yaml and a runner with simulated pins."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from testkit.mqtt import Broker, Probe
from testkit.procs import Proc, python_cmd, stop_gracefully

DEVICE = "edison-t"
TOPICS_YAML = """\
prefix: edison
devices:
  edison-t:
    outputs:
      led:
        name: LED
        pin: 20
        blink: {count: 3, on_time: 0.1, off_time: 0.1}
      relay:
        pin: 21
        active_low: true
        safe_state: "OFF"
"""



class NodeRunner:
    """Starts the real `edison-node` as a process with simulated pins and a trace file."""

    def __init__(self, broker: Broker, tmp_path: Path, config: Path) -> None:
        self.broker = broker
        self.tmp_path = tmp_path
        self.config = config
        self.trace = tmp_path / "trace.jsonl"
        self.procs: list[Proc] = []

    def start(self, *extra: str, env: dict[str, str] | None = None, wait_online: Probe | None = None,
              device: str = DEVICE, brokers: Sequence[str] = ()) -> Proc:
        """`brokers`: the node's --broker URLs, in order (default: the runner's broker)."""
        broker_args = [arg for url in brokers or [self.broker.url] for arg in ("--broker", url)]
        argv = python_cmd("node", "--config", str(self.config), "--device", device, *broker_args,
                          "--pins", "sim", "--trace", str(self.trace),
                          "--state", str(self.tmp_path / f"state-{device}"), "--log-level", "DEBUG", *extra)
        env = {"MQTT_USERNAME": device, **(env or {})}
        proc = Proc(argv, self.tmp_path / f"node-{len(self.procs)}.log", env=env)
        self.procs.append(proc)
        if wait_online is not None:
            wait_online.wait_for(f"edison/{device}/status", "online")
            proc.wait_for_line(r"connected to ")
        return proc

    def stop_all(self) -> None:
        stop_gracefully(self.procs)
