"""The control page: its files, answered over HTTP(S) on the port whose `/mqtt` is MQTT over WebSocket.

One address is all a person needs: the page and the MQTT connection it makes
share a port (and its certificate), so the browser's same-origin rules hold
and nothing is loaded from another host. The files are read once at start and
served from memory: a request can name only one of them (no path reaches the
file system), answers have known sizes, and websockets bounds each request
(8 KiB lines, 128 headers) and the time it may take (--connect-timeout).
"""

from __future__ import annotations

import gzip
import http
import json
from pathlib import Path
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from broker.login import is_loopback
from broker.logs import Squelch
from node.topics import Layout

PAGE_DIR = Path(__file__).with_name("control_page")
MQTT_PATH = "/mqtt"  # where the page's MQTT connection goes; any other path is a file or 404
LAYOUT_FILE = "layout.json"  # the topic prefixes, written beside the page so that it needs no server code
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".md": "text/plain; charset=utf-8",
}
MAX_FILE = 1024 * 1024  # the largest file of the page (the MQTT client is about 340 KB)
# The page's own files and its own MQTT connection only: no script, style or connection from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; worker-src 'self' blob:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def layout_json(layout: Layout, trial: bool = False) -> bytes:
    """What the page must know: the prefixes of topics.yaml (devices it learns from the broker, as its user), and
    whether the broker is in trial mode (its login form then says that any user name will do)."""
    return json.dumps({"prefix": layout.prefix, "discovery_prefix": layout.discovery_prefix, "trial": trial}).encode()


def page_files(layout: Layout, trial: bool = False) -> dict[str, bytes]:
    """The page's files by name, with the layout; ValueError if the installed page is damaged."""
    files = {p.name: p.read_bytes() for p in sorted(PAGE_DIR.iterdir()) if p.is_file() and p.suffix in TYPES}
    if "index.html" not in files:
        raise ValueError(f"{PAGE_DIR}: no index.html (the control page is missing from the installation)")
    too_big = [name for name, data in files.items() if len(data) > MAX_FILE]
    if too_big:
        raise ValueError(f"{PAGE_DIR}: {', '.join(too_big)} over {MAX_FILE} bytes")
    files[LAYOUT_FILE] = layout_json(layout, trial)
    return files


def write_page(layout: Layout, out: Path) -> Path:
    """Copy the page into `out` (for a web server such as Mosquitto's `http_dir`); returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for name, data in page_files(layout).items():
        (out / name).write_bytes(data)
    return out


DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def foreign_origin(request: Request) -> str | None:
    """The Origin of a page from another site asking for MQTT here; None for this site's own page and for clients
    that are not browsers (they send none, or their own address as paho does). A browser lets any page open a
    WebSocket anywhere, so without this check any site a person visits could use their broker from their browser:
    in trial mode with no password at all, and elsewhere to guess passwords."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    parts = urlsplit(origin)
    default = DEFAULT_PORTS.get(parts.scheme)
    host = request.headers.get("Host", "").lower()
    own = {host, host.removesuffix(f":{default}"), f"{host}:{default}"} if default else {host}
    return None if parts.netloc.lower() in own else origin


def loopback_host(request: Request) -> bool:
    """Whether the request names this host as a loopback address or `localhost` (its Host header)."""
    host = request.headers.get("Host", "").lower()  # host names are not case-sensitive
    name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rpartition(":")[0] or host
    return name == "localhost." or is_loopback(name)


class OriginGuard:
    """process_request for MQTT over WebSocket: pages of this address only; in trial mode, this host by a loopback
    name only (a page of another site whose name it made resolve to 127.0.0.1, DNS rebinding, sends its own name
    as Host and Origin alike)."""

    def __init__(self, trial: bool = False) -> None:
        self.trial = trial
        self.squelch = Squelch()

    def answer(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.trial and not loopback_host(request):
            self.squelch.warning("host", "refused a request from %s for host %r: a broker in trial mode answers to "
                                 "localhost only", connection.remote_address[0], request.headers.get("Host", "")[:100])
            return connection.respond(http.HTTPStatus.FORBIDDEN, "Forbidden: a broker in trial mode answers to "
                                                                "localhost and 127.0.0.1 only\n")
        origin = foreign_origin(request)
        if origin is None:
            return None
        self.squelch.warning("origin", "refused a WebSocket from %s for a page of %r: MQTT over "
                             "WebSocket here is for pages of this address", connection.remote_address[0], origin[:100])
        return connection.respond(http.HTTPStatus.FORBIDDEN, "Forbidden: pages of other sites may not use this "
                                                            "broker\n")


class Site:
    """Answers the HTTP requests of the web listener; an upgrade on /mqtt goes on to MQTT.

    Each file is also kept gzipped, for browsers that accept it: the page's files are 366 KB, gzipped 113 KB
    (mqtt.js is most of it).
    """

    def __init__(self, layout: Layout, trial: bool = False) -> None:
        self._files = page_files(layout, trial)
        self._gzipped = {name: gzip.compress(data, mtime=0) for name, data in self._files.items()}
        self._guard = OriginGuard(trial)

    def answer(self, connection: ServerConnection, request: Request) -> Response | None:
        """websockets' process_request: None lets the WebSocket handshake go on, anything else is the answer."""
        path = request.path.partition("?")[0]
        refused = self._guard.answer(connection, request)
        if path == MQTT_PATH or refused is not None:  # the page's own MQTT: from a page of this address only
            return refused  # None: websockets goes on (426 to a plain GET)
        name = "index.html" if path == "/" else path[1:]
        body = self._files.get(name)
        if body is None:  # only the page's own names are keys: no path leads anywhere else
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not found: the control page is at /\n")
        headers = Headers({"Content-Type": TYPES[Path(name).suffix], "Vary": "Accept-Encoding", **SECURITY_HEADERS})
        if "gzip" in request.headers.get("Accept-Encoding", "").lower():
            body = self._gzipped[name]
            headers["Content-Encoding"] = "gzip"
        headers["Content-Length"] = str(len(body))
        return Response(http.HTTPStatus.OK, http.HTTPStatus.OK.phrase, headers, body)
