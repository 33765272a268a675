"""Benchmark of the control page: what a person waits for, in a real browser, against a client's floor.

Starts the embedded broker with --web-bind (or Mosquitto with the exported page) and the real `edison-node` with
simulated pins, opens the page in Debian's Chromium (Playwright), and prints in one run: the page's load until it
can log in, the login until the device shows, and a switch's click until its result shows on the page (timed in
the page, from the click to the status text), each beside the floor measured in the same run: the same `/set` ->
result round trip by a paho client over TCP.

    python bench/control_page.py                      # embedded broker, 100 switches
    python bench/control_page.py --broker mosquitto   # the Mosquitto export
    python bench/control_page.py --quick              # smoke run (a few seconds)

Not a test: timings depend on the machine; the tests assert behaviour.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from playwright.sync_api import sync_playwright  # noqa: E402

from testkit.mqtt import Broker, Probe  # noqa: E402
from testkit.procs import Proc, free_port, python_cmd  # noqa: E402
from testkit.brokers import export_for, mosquitto_binary, run_mosquitto  # noqa: E402
from testkit.browser import CHROMIUM, CHROMIUM_ARGS, PHONE  # noqa: E402

DEVICE, USER, PASSWORD, DEVICE_PASSWORD = "edison-bench", "phone", "pw-phone", "pw-device"
TOPICS_YAML = f"""\
prefix: edison
devices:
  {DEVICE}:
    name: Bench
    outputs:
      led: {{name: LED, pin: 20, pwm: true}}
access:
  {USER}: controller
"""
WAIT = 15.0
# In the page: click the switch and resolve with the milliseconds until its status says the result.
CLICK_TO_RESULT = """async () => {
  const toggle = document.querySelector('[role=switch]');
  const status = toggle.closest('[role=group]').querySelector('[role=status]');
  const wanted = toggle.checked ? 'LED off: ok' : 'LED on: ok';
  const done = new Promise((resolve) => new MutationObserver((_, observer) => {
    if (status.textContent === wanted) { observer.disconnect(); resolve(performance.now()); }
  }).observe(status, {childList: true, characterData: true, subtree: true}));
  const start = performance.now();
  toggle.click();
  return (await done) - start;
}"""


def add_users(folder: Path) -> tuple[Path, Path]:
    topics, passwd = folder / "topics.yaml", folder / "passwd"
    topics.write_text(TOPICS_YAML)
    for name, password in ((USER, PASSWORD), (DEVICE, DEVICE_PASSWORD)):
        subprocess.run(python_cmd("broker", "passwd", "--passwd", str(passwd), "add", name, "--stdin"),
                       input=password + "\n", text=True, check=True, capture_output=True, cwd=ROOT)
    return topics, passwd


@contextmanager
def serving(kind: str, folder: Path) -> Iterator[tuple[Broker, str]]:
    """The broker and the page's address: the embedded broker's --web-bind, or Mosquitto's exported listener."""
    topics, passwd = add_users(folder)
    port, web = free_port(), free_port()
    if kind == "embedded":
        proc = Proc(python_cmd("broker", "--config", str(topics), "--passwd", str(passwd),
                               "--bind", f"127.0.0.1:{port}", "--web-bind", f"127.0.0.1:{web}"), folder / "broker.log")
        proc.wait_for_line(r"listening on", timeout=WAIT)
    else:
        binary = mosquitto_binary()
        if not binary:
            sys.exit("bench: mosquitto is not installed (Debian: apt-get install mosquitto)")
        out = folder / "mosquitto"
        subprocess.run(python_cmd("broker", "mosquitto-config", "--config", str(topics), "--passwd", str(passwd),
                                  "--bind", f"127.0.0.1:{port}", "--ws-bind", f"127.0.0.1:{web}", "--out", str(out),
                                  *export_for(binary)),
                       check=True, capture_output=True, cwd=ROOT)
        conf = out / "mosquitto.conf"
        if os.geteuid() == 0:
            conf.write_text(conf.read_text() + "user root\n")
        proc = run_mosquitto(binary, conf, folder / "mosquitto.log", port)
    node = Proc(python_cmd("node", "--config", str(topics), "--device", DEVICE, "--broker", f"mqtt://127.0.0.1:{port}",
                           "--pins", "sim", "--state", str(folder / "state")), folder / "node.log",
                env={"MQTT_USERNAME": DEVICE, "MQTT_PASSWORD": DEVICE_PASSWORD})
    try:
        node.wait_for_line(r"connected to ", timeout=WAIT)
        yield Broker("embedded" if kind == "embedded" else "mosquitto", port, proc), f"http://127.0.0.1:{web}/"
    finally:
        for p in (node, proc):
            p.signal(signal.SIGTERM)
            try:
                p.wait(WAIT)
            finally:
                p.stop()


def floor(broker: Broker, n: int) -> list[float]:
    """`/set` -> result over TCP by paho, in milliseconds: what any client waits for."""
    probe = Probe(broker, username=USER, password=PASSWORD)
    sock = probe.client.socket()  # as bench/node.py's requester: no Nagle stall of the floor's own
    assert isinstance(sock, socket.socket), sock
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        probe.subscribe(f"edison/{DEVICE}/result")
        times = []
        for i in range(n):
            command_id = uuid.uuid4().hex[:12]
            start = time.perf_counter()
            probe.publish(f"edison/{DEVICE}/led/set", json.dumps({"state": "ON" if i % 2 else "OFF",
                                                                   "id": command_id}))
            probe.result(DEVICE, command_id, timeout=WAIT)
            times.append((time.perf_counter() - start) * 1000)
        return times
    finally:
        probe.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", choices=("embedded", "mosquitto"), default="embedded")
    p.add_argument("--quick", action="store_true", help="smoke run: 5 switches")
    args = p.parse_args(argv)
    n = 5 if args.quick else 100
    with tempfile.TemporaryDirectory() as tmp, serving(args.broker, Path(tmp)) as (broker, url), \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=PHONE)
        page.set_default_timeout(WAIT * 1000)
        start = time.perf_counter()
        page.goto(url)
        login = page.get_by_role("button", name="Log in")
        login.wait_for()
        page.wait_for_function("!document.querySelector('#login button').disabled")
        loaded = (time.perf_counter() - start) * 1000
        page.get_by_label("User").fill(USER)
        page.get_by_label("Password").fill(PASSWORD)
        start = time.perf_counter()
        login.click()
        page.get_by_role("switch", name="LED").wait_for()
        page.get_by_text("online", exact=True).wait_for()
        logged_in = (time.perf_counter() - start) * 1000
        protocol = page.locator("#connection").text_content() or ""
        clicks = [page.evaluate(CLICK_TO_RESULT) for _ in range(n)]
        browser.close()
        base = floor(broker, n)
    print(f"broker: {args.broker} ({protocol.rpartition('(')[2].rstrip(')')}), {n} switches each")
    print(f"  {'page load until it can log in':<44} {loaded:>8.0f} ms")
    print(f"  {'log in until the device shows online':<44} {logged_in:>8.0f} ms")
    print(f"  {'click -> result on the page p50 / p99':<44} {pct(clicks, 50):>8.1f} / {pct(clicks, 99):.1f} ms")
    print(f"  {'floor: paho /set -> result p50 / p99':<44} {pct(base, 50):>8.1f} / {pct(base, 99):.1f} ms")
    print(f"  {'page p50 / floor p50':<44} {statistics.median(clicks) / statistics.median(base):>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
