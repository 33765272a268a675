"""The benchmark script runs and reports every figure (its timings are for people to read, not asserted)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from testkit.procs import ROOT
from tests.requires import required

FIGURES = [
    "transport floor p50 / p99",
    "/set -> /state p50 / p99",
    "/set -> /state, QoS 0 request",
    "/set -> /state, QoS 0, 100 ms apart",
    "/set -> result p50 / p99",
    "MQTT 5 request/response p50 / p99",
    "/set -> pin change p50 / p99",
    "node CPU per command",
    "RSS after 50 commands",
    "idle CPU over 1 s",
    "threads at idle",
    "start -> online, median of 2",
    "with --protocol given",
    "interpreter start",
    "import voluptuous",
    "echo without QUICKACK",
    "input edge -> /state",
    "pin backends on mosquitto: --pins gpiod (stand-in bindings) beside --pins sim",
    "RSS after 20 commands",
    "import gpiod",
]


def run_bench(*args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "node.py"), "--quick", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"bench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.mosquitto
def test_quick_bench_prints_every_figure_with_a_verdict(mosquitto_bin):
    out = run_bench()
    missing = [figure for figure in FIGURES if figure not in out]
    assert not missing, f"figures missing from the output: {missing}\n{out}"
    verdicts = [line for line in out.splitlines() if line.rstrip().endswith(("PASS", "MISS"))]
    assert len(verdicts) == 6, out  # 3 round trips to /state, RSS, idle CPU, start -> online
    assert "target(s) missed" in out or "all targets met" in out


@pytest.mark.mosquitto
def test_quick_bridge_bench_prints_every_figure_per_source(mosquitto_bin):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bridge.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"bench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    for network in ("x", "bluesky", "mastodon"):
        assert re.search(rf"^  {network} +[0-9,]+ +[0-9,]+$", done.stdout, re.MULTILINE), done.stdout
        assert re.search(rf"^  {network} -> bridge -> broker +[0-9.]+ +[0-9.]+ +[0-9.]+x$", done.stdout, re.MULTILINE)
    assert "broker round trip (QoS 1)" in done.stdout and "bridge RSS" in done.stdout


def test_quick_bench_runs_on_the_embedded_broker():
    out = run_bench("--broker", "embedded")
    assert "broker: embedded" in out and "start -> online" in out and "MQTT 5 request/response" in out, out


@pytest.mark.mosquitto
def test_quick_fleet_bench_runs_every_broker_and_misses_nothing(mosquitto_bin):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "fleet.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"bench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    table = done.stdout.split("## fleet")[1].split("## ratios")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]  # after the header
    assert [row.split(" | ")[0] for row in rows] == ["| embedded", "| mosquitto", "| nats"], done.stdout
    for row in rows:  # every device kept its session through the restart, and every command was answered
        assert "20/20 sessions kept" in row and "| 20/20 |" in row and "MISSING" not in row, row
    assert "run failed" not in done.stdout and done.stdout.count("| 20 | ") == 3 + 2, done.stdout  # + ratios


def test_quick_control_page_bench_prints_every_figure():
    required(shutil.which("chromium"), "Chromium is not installed (Debian: apt-get install chromium)")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "control_page.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"bench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    for figure in ("page load until it can log in", "log in until the device shows online",
                   "click -> result on the page p50 / p99", "floor: paho /set -> result p50 / p99"):
        assert re.search(rf"^  {re.escape(figure)} +[0-9.]+( / [0-9.]+)? ms$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^  page p50 / floor p50 +[0-9.]+x$", done.stdout, re.MULTILINE), done.stdout
