"""The web listener as HTTP: the page's files and nothing else, bounded requests, and the options that set it up.
What the page does in a browser is in tests/system/test_control_page.py."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from broker.models import Listeners, Options
from broker.mosquitto import conf_text
from broker.web import PAGE_DIR
from testkit.brokers import start_embedded
from testkit.mqtt import Broker, Probe
from testkit.procs import TIMEOUT, free_port
from testkit.users import USERS, edison_broker


@pytest.fixture
def web(tmp_path) -> Iterator[tuple[Broker, int]]:
    """A broker in trial mode with the page on its own port; a request must be in within 1 s."""
    port = free_port()
    broker = start_embedded(tmp_path, "--allow-anonymous", "--web-bind", f"127.0.0.1:{port}", "--connect-timeout", "1")
    yield broker, port
    broker.proc.signal(signal.SIGTERM)
    try:
        assert broker.proc.wait(TIMEOUT) == 0
    finally:
        broker.proc.stop()


def get(port: int, path: str, gzipped: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One GET with the path sent exactly as given (no normalising)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        if gzipped:
            conn.putheader("Accept-Encoding", "deflate, gzip;q=1.0")
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def test_the_page_files_are_served_with_their_types_and_a_policy_that_keeps_other_hosts_out(web):
    _, port = web
    status, headers, body = get(port, "/")
    assert status == 200 and body == (PAGE_DIR / "index.html").read_bytes()
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in headers["content-security-policy"]
    for name, kind in (("app.js", "text/javascript"), ("mqtt.min.js", "text/javascript"), ("style.css", "text/css"),
                       ("mqtt.min.js.LICENSE.md", "text/plain")):
        status, headers, body = get(port, f"/{name}?v=1")
        assert (status, headers["content-type"].split(";")[0]) == (200, kind), name
        assert body == (PAGE_DIR / name).read_bytes()
    status, headers, body = get(port, "/mqtt.min.js", gzipped=True)
    assert (status, headers["content-encoding"]) == (200, "gzip") and int(headers["content-length"]) == len(body)
    assert gzip.decompress(body) == (PAGE_DIR / "mqtt.min.js").read_bytes() and len(body) < 120_000
    status, _, body = get(port, "/layout.json")  # trial mode, with the default prefixes
    assert (status, json.loads(body)) == (200, {"prefix": "edison", "discovery_prefix": "homeassistant", "trial": True})


@pytest.mark.parametrize("path", ["/../web.py", "/%2e%2e/web.py", "/..%2fweb.py", "//etc/passwd", "/index.html/..",
                                  "/control_page/index.html", "/./index.html", "/app.js%00.html", "/web.py",
                                  "/.", "/no-such-file.js", "/etc/passwd"])
def test_a_path_that_is_not_one_of_the_page_files_is_not_found(web, path):
    _, port = web
    status, _, body = get(port, path)
    assert (status, body) == (404, b"Not found: the control page is at /\n")


def upgrade(port: int, headers: dict[str, str], host: str = "127.0.0.1") -> int:
    """The status of a WebSocket upgrade to /mqtt with `headers` (a browser sends its page's Origin)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        lines = ["GET /mqtt HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
                 "Sec-WebSocket-Protocol: mqtt", *(f"{k}: {v}" for k, v in headers.items())]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(s.recv(1024).split(b" ", 2)[1])


@pytest.mark.parametrize("listener", ["--web-bind", "--ws-bind"])
def test_a_page_of_another_site_cannot_use_the_broker_from_a_visitors_browser(tmp_path, listener):
    """Any page may open a WebSocket anywhere: in trial mode one from another site would drive the LED of whoever
    runs `make run` with no password. Only this address's own pages, and clients that are not browsers, get in."""
    port = free_port()
    broker = start_embedded(tmp_path, "--allow-anonymous", listener, f"127.0.0.1:{port}")
    try:
        for origin in ["http://evil.example", "null", f"http://127.0.0.1:{port}.evil.example", "http://127.0.0.1"]:
            assert upgrade(port, {"Origin": origin}) == 403, origin
        broker.proc.wait_for_line(r"refused a WebSocket from 127\.0\.0\.1 for a page of 'http://evil.example'")
        assert upgrade(port, {"Origin": f"http://127.0.0.1:{port}"}) == 101  # its own page (and paho)
        assert upgrade(port, {"Origin": f"http://localhost:{port}"}, host="localhost") == 101
        assert upgrade(port, {}) == 101  # not a browser
        # DNS rebinding: a page of another site whose name now resolves to 127.0.0.1 is its own origin by name
        rebound = f"http://rebind.evil.example:{port}"
        assert upgrade(port, {"Origin": rebound}, host="rebind.evil.example") == 403
    finally:
        broker.proc.stop()


def test_a_slow_or_oversized_request_is_closed_and_the_page_still_served(web):
    broker, port = web
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert slow.recv(100) == b""  # closed after --connect-timeout, unanswered
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as big:
        big.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        answer = big.recv(100)
        assert not answer.startswith(b"HTTP/1.1 200")
    assert get(port, "/")[0] == 200
    assert broker.proc.popen.poll() is None


def test_one_address_cannot_hold_more_connections_waiting_for_their_upgrade_than_it_may_logins(tmp_path):
    """Before its upgrade a connection is HTTP, outside the login places: idle ones from one address are capped like
    its waiting logins (16), so nobody runs the broker out of open files; other addresses are served meanwhile."""
    port = free_port()
    broker = start_embedded(tmp_path, "--allow-anonymous", "--web-bind", f"127.0.0.1:{port}", "--connect-timeout", "60")
    held = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=("127.0.0.21", 0))
            for _ in range(16)]
    try:
        extra = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=("127.0.0.21", 0))
        assert extra.recv(1) == b""  # closed at once, not after --connect-timeout (60 s, past this socket's timeout)
        extra.close()
        assert get(port, "/")[0] == 200  # from 127.0.0.1
    finally:
        for s in held:
            s.close()
        broker.proc.stop()


def test_the_page_listens_on_an_ipv6_address_given_in_brackets(tmp_path):
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = free_port()
    broker = start_embedded(tmp_path, "--allow-anonymous", "--web-bind", f"[::1]:{port}")
    try:
        conn = http.client.HTTPConnection("::1", port, timeout=TIMEOUT)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        broker.proc.stop()


def test_with_tls_a_connection_that_never_starts_its_handshake_is_closed_too(tmp_path):
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    port = free_port()
    broker = start_embedded(tmp_path, "--allow-anonymous", "--web-bind", f"127.0.0.1:{port}", "--tls-cert",
                         str(cert_file), "--tls-key", str(key_file), "--connect-timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as silent:
            assert silent.recv(100) == b""  # after --connect-timeout (websockets passes it on as the TLS handshake's)
    finally:
        broker.proc.signal(signal.SIGTERM)
        broker.proc.wait(TIMEOUT)


def test_the_page_says_the_topic_prefixes_of_topics_yaml(tmp_path, user_files):
    topics, passwd = user_files
    config = tmp_path / "topics.yaml"
    config.write_text(topics.read_text().replace("prefix: edison", "prefix: home\ndiscovery_prefix: ha"))
    port = free_port()
    broker = start_embedded(tmp_path, "--config", str(config), "--passwd", str(passwd),
                            "--web-bind", f"127.0.0.1:{port}")
    try:
        assert json.loads(get(port, "/layout.json")[2]) == {"prefix": "home", "discovery_prefix": "ha", "trial": False}
    finally:
        broker.proc.signal(signal.SIGTERM)
        broker.proc.wait(TIMEOUT)


def test_mqtt_at_the_web_port_has_the_same_users_rules_and_limits(tmp_path, user_files):
    topics, passwd = user_files
    port = free_port()
    broker = start_embedded(tmp_path, "--config", str(topics), "--passwd", str(passwd),
                            "--web-bind", f"127.0.0.1:{port}", "--max-connections-per-user", "1")
    probes: list[Probe] = []

    def login(user: str, password: str) -> Probe:  # paho's WebSocket path is /mqtt, as the page's
        probes.append(Probe(broker, username=user, password=password, port=port, transport="websockets"))
        return probes[-1]

    try:
        with pytest.raises(ConnectionRefusedError):
            login("laptop", "wrong")
        broker.proc.wait_for_line(r"refused login: user=laptop .*next answer in")  # the throttle counted it
        laptop = login("laptop", USERS["laptop"])
        with pytest.raises(ConnectionRefusedError):
            login("laptop", USERS["laptop"])  # one connection per user here
        assert [c.is_failure for c in laptop.subscribe("edison/#", "secret/#", check=False)] == [False, True]
    finally:
        for p in probes:
            p.close()
        broker.proc.signal(signal.SIGTERM)
        broker.proc.wait(TIMEOUT)


@pytest.mark.parametrize("args, expected", [
    (["--web-bind", "0.0.0.0:8080"], "--allow-anonymous is for local trials: refusing to listen on 0.0.0.0:8080"),
    (["--web-bind", "127.0.0.1:8080", "--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "--tls-cert is for --tls-bind or --web-bind"),
    (["--web-bind", "8080"], "argument --web-bind: expected HOST:PORT, got '8080'"),
])
def test_web_options_that_cannot_work_are_refused_at_start(args, expected):
    done = edison_broker("--allow-anonymous", "--bind", f"127.0.0.1:{free_port()}", *args)
    assert done.returncode == 2 and expected in done.stderr, done.stderr


def test_the_mosquitto_export_serves_the_page_on_its_websocket_listeners(tmp_path):
    out = Path("/srv/edison")
    listeners = Listeners("127.0.0.1:1883", ws_bind="127.0.0.1:9001", web_bind="0.0.0.0:443",
                          tls_cert=Path("/etc/c.pem"), tls_key=Path("/etc/k.pem"))
    text = conf_text(Options(listeners), out, (2, 0, 11))
    ws, web = text.split("listener 9001 127.0.0.1\n")[1].split("listener 443 0.0.0.0\n")
    assert "protocol websockets\nhttp_dir /srv/edison/page\n" in ws and "certfile" not in ws
    assert "protocol websockets\nhttp_dir /srv/edison/page\ncertfile /etc/c.pem\nkeyfile /etc/k.pem\n" in web
