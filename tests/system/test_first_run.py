"""A first run as a new user makes it: the commands of the README and of Getting started, as written, against what
`make run` starts."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from testkit.brokers import start_embedded
from testkit.mqtt import Broker, Probe
from testkit.procs import ROOT, TIMEOUT, Proc, python_cmd
from tests.requires import IN_CI

README = (ROOT / "README.md").read_text(encoding="utf-8")
GUIDE = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
BRIDGE = (ROOT / "docs" / "bridge" / "index.md").read_text(encoding="utf-8")
DEVICE = "edison-1"  # the device of the shipped topics.yaml, which the README uses


def block(text: str, after: str) -> str:
    """The first ```sh block after the sentence `after`."""
    found = re.search(re.escape(after) + r".*?```sh\n(.*?)```", text, re.S)
    assert found, f"no sh block after {after!r}"
    return found.group(1)


@pytest.fixture
def trial(tmp_path) -> Iterator[tuple[Broker, Proc, Probe]]:
    """What `make run` starts: the embedded broker in trial mode and a node on the shipped topics.yaml."""
    if not (ROOT / ".venv" / "bin" / "edison-bridge").exists():
        pytest.skip("the README's commands use .venv/bin: run the tests with `make test`")
    if subprocess.run(["sh", "-c", "command -v mosquitto_pub"], capture_output=True).returncode:
        if IN_CI:
            pytest.fail("mosquitto_pub missing (Debian: mosquitto-clients)")
        pytest.skip("mosquitto_pub missing (Debian: mosquitto-clients)")
    broker = start_embedded(tmp_path)
    node = Proc(python_cmd("node", "--config", "topics.yaml", "--device", DEVICE, "--broker", broker.url,
                           "--pins", "sim", "--state", str(tmp_path / "state"),
                           "--sim-inputs", str(tmp_path / "inputs.jsonl")), tmp_path / "node.log",
                env={"MQTT_USERNAME": DEVICE})
    watcher = Probe(broker)
    try:
        watcher.subscribe(f"edison/{DEVICE}/#")
        watcher.wait_for(f"edison/{DEVICE}/led/state", "OFF")  # subscribed and announced
        yield broker, node, watcher
    finally:
        watcher.close()
        node.signal(signal.SIGTERM)
        node.wait(TIMEOUT)
        node.stop()
        broker.proc.signal(signal.SIGINT)
        broker.proc.wait(TIMEOUT)
        broker.proc.stop()


def test_the_readmes_try_it_works_as_written_on_any_port(trial, tmp_path):
    broker, node, watcher = trial
    env = {"PORT": str(broker.port), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    subprocess.run(["sh", "-ec", block(README, "The LED from a laptop.")], cwd=ROOT, env=env, check=True,
                   timeout=TIMEOUT)
    assert watcher.wait_for(f"edison/{DEVICE}/result").json()["effect"] == "blink"
    press = block(README, "The button.").replace("/tmp/edison-inputs.jsonl", str(tmp_path / "inputs.jsonl"))
    subprocess.run(["sh", "-ec", press], cwd=ROOT, env=env, check=True, timeout=TIMEOUT)
    assert watcher.wait_for(f"edison/{DEVICE}/button/event").json()["event_type"] == "press"
    watcher.wait_for(f"edison/{DEVICE}/led/effect", "blink")
    watcher.wait_for(f"edison/{DEVICE}/led/effect", "off", timeout=TIMEOUT)  # the BLINK is over (6 s)
    subprocess.run(["sh", "-ec", block(README, "A repeated id.")], cwd=ROOT, env=env, check=True, timeout=TIMEOUT)
    first, second = (watcher.wait_for(f"edison/{DEVICE}/result", where=lambda m: m.json()["id"] == "try-1").json()
                     for _ in range(2))
    assert first["effect"] == "blink" and "repeat" not in first and second == {**first, "repeat": True}
    watcher.wait_for(f"edison/{DEVICE}/led/effect", "blink")
    watcher.wait_for(f"edison/{DEVICE}/led/effect", "off")
    assert node.output.count("● high  (command try-1)") == 3, node.output  # count 3, blinked once
    reply = subprocess.run(["sh", "-ec", block(README, "Request and response.")], cwd=ROOT, env=env, check=True,
                           timeout=TIMEOUT, capture_output=True, text=True)  # MQTT 5 on the embedded broker
    assert json.loads(reply.stdout)["state"] == "ON", reply.stdout + reply.stderr


def test_getting_started_works_as_written_on_any_port(trial, tmp_path):
    broker, node, watcher = trial
    inputs = tmp_path / "inputs.jsonl"
    env = {"PORT": str(broker.port), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    commands = block(GUIDE, "In a third, send commands:")
    subprocess.run(["sh", "-ec", commands], cwd=ROOT, env=env, check=True, timeout=TIMEOUT)
    results = [watcher.wait_for(f"edison/{DEVICE}/result").json() for _ in range(4)]
    assert [r["ok"] for r in results] == [True] * 4 and results[-1]["id"] == "guide-1"
    node.wait_for_line(r"LED \(pin 20\)  ● high  \(command guide-1\)")
    dim = block(GUIDE, "Dim the LED")
    subprocess.run(["sh", "-ec", dim], cwd=ROOT, env=env, check=True, timeout=TIMEOUT)
    assert [watcher.wait_for(f"edison/{DEVICE}/result").json()["brightness"] for _ in range(2)] == [64, 255]
    watcher.wait_for(f"edison/{DEVICE}/led/brightness", "255")
    press = block(GUIDE, "Press the button").replace("/tmp/edison-inputs.jsonl", str(inputs))
    subprocess.run(["sh", "-ec", press], cwd=ROOT, env=env, check=True, timeout=TIMEOUT)
    watcher.wait_for(f"edison/{DEVICE}/button/state", "ON")
    assert watcher.wait_for(f"edison/{DEVICE}/button/event").json()["event_type"] == "press"
    node.wait_for_line(r"Button \(pin 36\)  ○ low")  # the terminal shows the button too
    again = block(GUIDE, "Send the `guide-1` command from above again")
    subprocess.run(["sh", "-ec", again], cwd=ROOT, env=env, check=True, timeout=TIMEOUT)
    assert watcher.wait_for(f"edison/{DEVICE}/result", where=lambda m: m.json().get("repeat")).json()["id"] == "guide-1"
    clear = block(GUIDE, "Clear it by publishing an empty retained message")
    subprocess.run(["sh", "-ec", clear], cwd=ROOT, env=env, check=True, timeout=TIMEOUT)
    bridge = block(BRIDGE, "Try triggers without any network")
    subprocess.run(["sh", "-ec", bridge], cwd=ROOT, env=env, check=True, timeout=TIMEOUT, capture_output=True)
    assert watcher.result(DEVICE, "x:1")["effect"] == "blink"


@pytest.mark.parametrize("text", [README, GUIDE], ids=["README", "getting-started"])
def test_the_watch_command_comes_before_the_commands_it_watches(text):
    assert text.index("mosquitto_sub -h 127.0.0.1 -p") < text.index("mosquitto_pub -h 127.0.0.1 -p")


@pytest.mark.parametrize("program, module", [("edison-node", "node"), ("edison-broker", "broker"),
                                             ("edison-bridge", "bridge")])
def test_every_program_tells_its_version(program, module):
    from node import __version__

    run = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert run.returncode == 0 and run.stdout.strip() == f"{program} {__version__}"


def test_passwd_add_without_a_terminal_says_to_use_stdin(tmp_path):
    run = subprocess.run(python_cmd("broker", "passwd", "--passwd", str(tmp_path / "pw"), "add", "laptop"),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 2 and "pipe it in with --stdin" in run.stderr
    assert not (tmp_path / "pw").exists()


def test_the_license_file_is_the_license_setup_cfg_names():
    setup = (ROOT / "setup.cfg").read_text()
    assert "license = MIT" in setup and "license_files = LICENSE" in setup
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
