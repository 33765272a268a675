"""Fixtures: real brokers on 127.0.0.1 (the embedded amqtt one and Debian's mosquitto), real node processes."""

from __future__ import annotations

import logging
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.helpers import (TIMEOUT, Broker, LogLines, Probe, Proc, free_port, mosquitto_binary, python_cmd,
                           stop_gracefully)

# Fixtures of the secured broker (users, access rules, the Mosquitto export), the bridge's networks, the NATS cluster
# and the boards (pin backends with their stand-ins).
pytest_plugins = ["tests.broker_setup", "tests.bridge_setup", "tests.cluster", "tests.boards"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def required(found: str | None, reason: str) -> str:
    """A tool the tests need: `found`, else skip saying why (under CI=true, where every tool is installed: fail)."""
    if found:
        return found
    if IN_CI:
        pytest.fail(f"{reason}; under CI=true it is required", pytrace=False)
    pytest.skip(reason)


def _mosquitto_binary() -> str:
    return required(mosquitto_binary(),
                    "mosquitto is not installed (Debian: apt-get install mosquitto mosquitto-clients)")


@pytest.fixture
def logs() -> Iterator[LogLines]:
    """What the node's modules log, from every thread (blinks, the announcer)."""
    handler = LogLines()
    logger = logging.getLogger("node")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def mosquitto_bin() -> str:
    return _mosquitto_binary()


def start_embedded(tmp_path: Path, *extra: str, port: int | None = None) -> Broker:
    """The embedded broker; without `extra` in trial mode (anonymous test probes accepted)."""
    port = port or free_port()
    extra = extra or ("--allow-anonymous",)
    proc = Proc(python_cmd("broker", "--bind", f"127.0.0.1:{port}", *extra), tmp_path / f"amqtt-{port}.log")
    proc.wait_for_line(r"listening on")
    return Broker("embedded", port, proc)


def start_stock_amqtt(tmp_path: Path) -> Broker:
    """amqtt's own broker as shipped: an MQTT 3.1.1-only broker (amqtt is installed with the embedded one)."""
    port = free_port()
    conf = tmp_path / f"stock-amqtt-{port}.yaml"
    conf.write_text(textwrap.dedent(f"""\
        listeners:
          default: {{type: tcp, bind: "127.0.0.1:{port}"}}
        plugins:
          amqtt.plugins.authentication.AnonymousAuthPlugin: {{allow_anonymous: true}}
        """))
    proc = Proc([str(Path(sys.executable).parent / "amqtt"), "-c", str(conf)], tmp_path / f"stock-amqtt-{port}.log")
    proc.wait_for_line(rf"bind to 127\.0\.0\.1:{port}")
    return Broker("stock-amqtt", port, proc)


def start_mosquitto(tmp_path: Path, binary: str, extra_conf: str = "", port: int | None = None) -> Broker:
    port = port or free_port()
    conf = tmp_path / f"mosquitto-{port}.conf"
    conf.write_text(textwrap.dedent(f"""\
        listener {port} 127.0.0.1
        allow_anonymous true
        persistence false
        log_dest stderr
        log_type error
        log_type warning
        log_type notice
        log_type information
        """) + extra_conf)
    proc = Proc([binary, "-c", str(conf)], tmp_path / f"mosquitto-{port}.log")
    proc.wait_for_line(r"mosquitto version \S+ running")
    return Broker("mosquitto", port, proc)


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(request, tmp_path) -> Iterator[Broker]:
    """Each behaviour test runs once on the embedded broker and once on mosquitto."""
    if request.param == "embedded":
        b = start_embedded(tmp_path)
    else:
        b = start_mosquitto(tmp_path, _mosquitto_binary())
    yield b
    b.proc.signal(signal.SIGINT)
    try:
        b.proc.wait(TIMEOUT)
    finally:
        b.proc.stop()


@pytest.fixture
def probe_factory(broker) -> Iterator[Callable[..., Probe]]:
    probes: list[Probe] = []

    def make(**kwargs) -> Probe:
        p = Probe(broker, **kwargs)
        probes.append(p)
        return p

    yield make
    for p in probes:
        p.close()


@pytest.fixture
def probe(probe_factory) -> Probe:
    """A client subscribed to everything of every device."""
    p = probe_factory()
    p.subscribe("edison/#")
    return p


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


@pytest.fixture
def topics_file(tmp_path) -> Path:
    path = tmp_path / "topics.yaml"
    path.write_text(TOPICS_YAML)
    return path


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


@pytest.fixture
def nodes(broker, tmp_path, topics_file) -> Iterator[NodeRunner]:
    runner = NodeRunner(broker, tmp_path, topics_file)
    yield runner
    runner.stop_all()
