"""The control page in a real browser (Debian's Chromium, driven by Playwright) against real brokers and the real
node with simulated pins: what a person on a phone does and sees. Each step waits for what the page shows."""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trustme
from playwright import sync_api as playwright_api

from testkit.brokers import export_for, run_mosquitto, start_embedded
from testkit.browser import CHROMIUM, CHROMIUM_ARGS, PHONE
from testkit.mqtt import Broker
from testkit.node import NodeRunner
from testkit.procs import TIMEOUT, free_port, read_trace
from testkit.users import edison_broker, make_users
from tests.requires import need_mosquitto, required

DEVICE, OTHER = "edison-t", "edison-u"
TOPICS_YAML = f"""\
prefix: edison
devices:
  {DEVICE}:
    name: Edison
    outputs:
      led: {{name: LED, pin: 20, pwm: true, blink: {{count: 3, on_time: 0.3, off_time: 0.3}}}}  # 1.8 s: seen blinking
    inputs:
      button: {{name: Button, pin: 36, component: event, double_press: 0, long_press: 60, debounce: 0.01}}
  {OTHER}:
    outputs:
      lamp: {{name: Lamp, pin: 20}}
access:
  laptop: controller
  wall: viewer
"""
USERS = {DEVICE: "pw-device-t", OTHER: "pw-device-u", "laptop": "pw-laptop", "wall": "pw-wall"}
LED_PIN, BUTTON_PIN = 20, 36
MS = TIMEOUT * 1000  # Playwright counts milliseconds
playwright_api.expect.set_options(timeout=MS)


@pytest.fixture(scope="module")
def users(tmp_path_factory) -> tuple[Path, Path]:
    return make_users(tmp_path_factory.mktemp("page-users"), TOPICS_YAML, USERS)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One Chromium for the module (Playwright starts it with a fresh --user-data-dir); each test gets a new
    context (its own cookies and storage)."""
    required(shutil.which("chromium") and CHROMIUM, "Chromium is not installed (Debian: apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A phone-sized page that must raise nothing, log no error (a blocked script or worker would) and load
    nothing from another host."""
    context = browser.new_context(viewport=PHONE, ignore_https_errors=True)
    context.set_default_timeout(MS)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    # Chromium's own line for a WebSocket that could not connect (a broker restarting) is no error of the page's
    p.on("console", lambda message: errors.append(message.text) if message.type == "error" and
         not message.text.startswith("WebSocket connection to") else None)
    p.on("request", lambda request: None if urlsplit(request.url.removeprefix("blob:")).hostname == "127.0.0.1"
         else errors.append(f"request to another host: {request.url}"))  # blob: mqtt.js's timer worker
    yield p
    context.close()
    assert not errors, f"the page raised or logged: {errors}"


@dataclass
class Site:
    """A broker serving the page, with the node of DEVICE on it."""

    url: str
    broker: Broker
    nodes: NodeRunner
    wire: int  # the simulated inputs' FIFO

    def press(self, pin: int, level: int) -> None:
        os.write(self.wire, b'{"pin": %d, "value": %d}\n' % (pin, level))

    def led_changes(self, command_id: str) -> list[dict]:
        return [c for c in read_trace(self.nodes.trace) if c["pin"] == LED_PIN and c.get("id") == command_id]


def _with_node(broker: Broker, url: str, folder: Path, topics: Path) -> Iterator[Site]:
    fifo = folder / "inputs"
    os.mkfifo(fifo)
    nodes = NodeRunner(broker, folder, topics)
    wire = None
    try:
        node = nodes.start("--sim-inputs", str(fifo), env={"MQTT_PASSWORD": USERS[DEVICE]})
        node.wait_for_line(r"connected to ")
        wire = os.open(fifo, os.O_WRONLY)
        yield Site(url, broker, nodes, wire)
    finally:
        if wire is not None:
            os.close(wire)
        nodes.stop_all()
        broker.proc.signal(signal.SIGTERM)
        try:
            broker.proc.wait(TIMEOUT)
        finally:
            broker.proc.stop()


@pytest.fixture(scope="module")
def embedded(users, tmp_path_factory) -> Iterator[Site]:
    """The embedded broker with --web-bind: the page and MQTT over WebSocket on one port."""
    folder = tmp_path_factory.mktemp("page-embedded")
    topics, passwd = users
    web = free_port()
    broker = start_embedded(folder, "--config", str(topics), "--passwd", str(passwd), "--web-bind", f"127.0.0.1:{web}")
    yield from _with_node(broker, f"http://127.0.0.1:{web}/", folder, topics)


@pytest.fixture(scope="module")
def exported(users, tmp_path_factory) -> Iterator[Site]:
    """Mosquitto with the exported configuration: its WebSocket listener serves the same page (http_dir)."""
    binary = need_mosquitto()
    folder = tmp_path_factory.mktemp("page-mosquitto")
    topics, passwd = users
    port, ws = free_port(), free_port()
    out = folder / "mosquitto"
    done = edison_broker("mosquitto-config", "--config", str(topics), "--passwd", str(passwd),
                         "--bind", f"127.0.0.1:{port}", "--ws-bind", f"127.0.0.1:{ws}", "--out", str(out),
                         *export_for(binary))
    assert done.returncode == 0, done.stderr
    conf = out / "mosquitto.conf"
    assert f"http_dir {out.resolve() / 'page'}" in conf.read_text()
    if os.geteuid() == 0:  # as root Mosquitto would switch to its own user, which cannot read the test's files
        conf.write_text(conf.read_text() + "user root\n")
    proc = run_mosquitto(binary, conf, folder / "mosquitto.log", port)
    yield from _with_node(Broker("mosquitto", port, proc), f"http://127.0.0.1:{ws}/", folder, topics)


def log_in(page, url: str, user: str, password: str | None = None) -> None:
    page.goto(url)
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(USERS[user] if password is None else password)
    page.get_by_role("button", name="Log in").click()


def protocol(page) -> int:
    """The MQTT version the page logged in with, as it says (5 where the broker speaks it, else 3.1.1)."""
    playwright_api.expect(page.locator("#connection")).to_contain_text("Connected as")
    return 5 if "MQTT 5" in (page.locator("#connection").text_content() or "") else 4


def device_card(page, name: str = "Edison"):
    return page.get_by_role("article", name=name)


def command_id(page, text: str) -> str:
    """The id the page gave the newest command whose log line starts with `text`."""
    entry = page.locator("#results li", has_text=text).first
    playwright_api.expect(entry).to_be_visible()
    return entry.get_attribute("data-id") or ""


def switch_dim_and_watch_the_button(page, site: Site) -> None:
    expect = playwright_api.expect
    log_in(page, site.url, "laptop")
    expect(page.locator("#login-hint")).to_have_text(re.compile(r"^with your broker user"))  # not trial mode
    card = device_card(page)
    expect(card.get_by_text("online", exact=True)).to_be_visible()
    led = card.get_by_role("switch", name="LED")
    expect(led).not_to_be_checked()

    led.click()
    expect(card.get_by_role("status").filter(has_text="LED on")).to_have_text("LED on: ok")
    expect(led).to_be_checked()
    on = command_id(page, "LED on")
    assert [c["duty"] for c in site.led_changes(on)] == [1.0]  # the pin, as the node's trace recorded it

    card.get_by_role("slider", name="LED brightness").fill("64")
    expect(card.get_by_role("status")).to_have_text("LED brightness 25 %: ok")
    dim = command_id(page, "LED brightness")
    assert [c["duty"] for c in site.led_changes(dim)] == [pytest.approx(64 / 255, abs=1e-3)]  # 3 decimals kept

    card.get_by_role("button", name="Blink").click()
    expect(card.get_by_role("status")).to_have_text("LED blink: ok")
    expect(card.get_by_text("blinking", exact=True)).to_be_visible()
    expect(card.get_by_text("blinking", exact=True)).to_have_count(0)  # over: back to the brightness before
    blink = [c["duty"] for c in site.led_changes(command_id(page, "LED blink"))]
    assert blink == [0.0, pytest.approx(64 / 255, abs=1e-3)] * 3

    button = card.get_by_role("group", name="Button")
    expect(button.get_by_text("off", exact=True)).to_be_visible()
    site.press(BUTTON_PIN, 0)  # pressed: the button pulls the pin low
    expect(button.get_by_text("on", exact=True)).to_be_visible()
    site.press(BUTTON_PIN, 1)
    expect(button.get_by_text("off", exact=True)).to_be_visible()
    expect(button.get_by_role("list", name="Button events")).to_contain_text(re.compile(r"^press at "))

    card.get_by_role("combobox", name="LED transition").select_option(label="over 1 s")
    card.get_by_role("slider", name="LED brightness").fill("128")
    expect(card.get_by_role("status")).to_have_text("LED brightness 50 %: ok")  # answered as the fade starts
    fade = command_id(page, "LED brightness 50 %")
    site.nodes.procs[0].wait_for_line(f"transition of command {fade} ended")
    duties = [c["duty"] for c in site.led_changes(fade)]
    assert len(duties) > 2 and duties == sorted(duties) and duties[-1] == pytest.approx(128 / 255, abs=1e-3)

    led.click()
    expect(card.get_by_role("status")).to_have_text("LED off: ok")
    expect(led).not_to_be_checked()
    assert [c["duty"] for c in site.led_changes(command_id(page, "LED off"))] == [0.0]


def test_a_phone_logs_in_switches_and_dims_the_led_and_sees_the_button(embedded, page):
    switch_dim_and_watch_the_button(page, embedded)


def test_the_exported_mosquitto_serves_the_same_page(exported, page):
    switch_dim_and_watch_the_button(page, exported)


def test_in_trial_mode_the_login_form_says_that_any_user_name_will_do(tmp_path, page):
    """What `make run` starts: no users, so the form says so, and a name without a password logs in."""
    web = free_port()
    broker = start_embedded(tmp_path, "--allow-anonymous", "--web-bind", f"127.0.0.1:{web}")
    try:
        page.goto(f"http://127.0.0.1:{web}/")
        playwright_api.expect(page.locator("#login-hint")).to_contain_text("any user name, no password")
        page.get_by_label("User").fill("kitchen-phone")
        page.get_by_role("button", name="Log in").click()
        playwright_api.expect(page.locator("#connection")).to_contain_text("Connected as kitchen-phone")
    finally:
        broker.proc.stop()


@pytest.fixture(params=["embedded", "exported"])
def site(request) -> Site:
    return request.getfixturevalue(request.param)


def test_a_wrong_password_is_said_in_words(site, page):
    log_in(page, site.url, "laptop", "not-the-password")
    playwright_api.expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    playwright_api.expect(page.get_by_role("button", name="Log in")).to_be_enabled()  # the person can try again
    if site.broker.kind == "embedded":  # the page's login met the same throttle as any other
        site.broker.proc.wait_for_line(r"refused login: user=\W?laptop\W? .*next answer in")


def test_a_user_sees_only_the_devices_its_rules_cover(site, page, browser):
    log_in(page, site.url, OTHER)  # a device's user may read nothing of the devices, not even its own discovery
    protocol(page)
    said = {"embedded": f"The broker lets {OTHER} read no device: its access rules cover none.",  # SUBACK: refused
            "mosquitto": "No device has announced itself yet."}  # Mosquitto grants, and then delivers nothing
    playwright_api.expect(page.locator("#no-devices")).to_have_text(said[site.broker.kind])
    # Meanwhile a controller sees the device at once and watches a press: by then the other page has had all
    # that its subscriptions would bring.
    context = browser.new_context(viewport=PHONE)
    try:
        laptop = context.new_page()
        laptop.set_default_timeout(MS)
        log_in(laptop, site.url, "laptop")
        button = device_card(laptop).get_by_role("group", name="Button")
        playwright_api.expect(button.get_by_text("off", exact=True)).to_be_visible()
        site.press(BUTTON_PIN, 0)
        playwright_api.expect(button.get_by_text("on", exact=True)).to_be_visible()
        site.press(BUTTON_PIN, 1)
        playwright_api.expect(button.get_by_role("listitem")).not_to_have_count(0)
    finally:
        context.close()
    playwright_api.expect(page.get_by_role("article")).to_have_count(0)


def test_a_publish_the_broker_refuses_is_shown_as_refused(site, page):
    log_in(page, site.url, "wall")  # a viewer: sees the devices, may command none
    version = protocol(page)
    card = device_card(page)
    led = card.get_by_role("switch", name="LED")
    playwright_api.expect(card.get_by_text("online", exact=True)).to_be_visible()
    led.click()
    result = card.get_by_role("status").filter(has_text="LED on")
    if version == 5:  # the PUBACK says why
        playwright_api.expect(result).to_have_text("LED on: refused by the broker: user wall is not allowed to "
                                                   "command it")
    else:  # MQTT 3.1.1 acknowledges a refused publish like any other: the page can only say no result came
        playwright_api.expect(result).to_contain_text("LED on: no result within 5 s: the broker may have refused it")
    playwright_api.expect(led).not_to_be_checked()  # back to what the device reports
    assert site.led_changes(command_id(page, "LED on")) == []


def test_with_a_certificate_the_page_and_its_mqtt_connection_are_https_and_wss(users, tmp_path, page):
    topics, passwd = users
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    web = free_port()
    broker = start_embedded(tmp_path, "--config", str(topics), "--passwd", str(passwd),
                            "--web-bind", f"127.0.0.1:{web}", "--tls-cert", str(cert_file), "--tls-key", str(key_file))
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    try:
        site = Site(f"https://127.0.0.1:{web}/", broker, NodeRunner(broker, tmp_path, topics), -1)
        log_in(page, site.url, "laptop")
        protocol(page)
        assert sockets and all(url == f"wss://127.0.0.1:{web}/mqtt" for url in sockets)
    finally:
        broker.proc.signal(signal.SIGTERM)
        try:
            broker.proc.wait(TIMEOUT)
        finally:
            broker.proc.stop()


def test_a_password_refused_on_reconnect_ends_the_session_in_words(users, tmp_path, page):
    topics, passwd = users
    mine = tmp_path / "passwd"
    shutil.copy2(passwd, mine)
    port, web = free_port(), free_port()
    args = ("--config", str(topics), "--passwd", str(mine), "--web-bind", f"127.0.0.1:{web}")
    broker = start_embedded(tmp_path, *args, port=port)
    log_in(page, f"http://127.0.0.1:{web}/", "laptop")
    protocol(page)
    broker.proc.signal(signal.SIGTERM)
    broker.proc.wait(TIMEOUT)
    broker.proc.stop()
    playwright_api.expect(page.locator("#connection")).to_have_text("Connection lost: reconnecting…")
    done = edison_broker("passwd", "--passwd", str(mine), "add", "laptop", "--stdin", stdin="changed\n")
    assert done.returncode == 0, done.stderr
    broker = start_embedded(tmp_path, *args, port=port)
    try:
        playwright_api.expect(page.get_by_role("alert")).to_have_text(
            "The broker no longer accepts this user and password: log in again.")
        playwright_api.expect(page.get_by_label("User")).to_be_visible()
    finally:
        broker.proc.signal(signal.SIGTERM)
        try:
            broker.proc.wait(TIMEOUT)
        finally:
            broker.proc.stop()
