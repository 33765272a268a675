"""What the network stand-ins share: state that a test waits on, a threaded HTTP/1.1 server on 127.0.0.1, JSON
answers, and a never-ending chunked stream that the test feeds, stalls and closes.

X's filtered stream and Mastodon's streaming API are both a long chunked HTTP body with a keep-alive in the quiet;
they differ in what a line looks like, so each stand-in writes its own items and this module does the rest.
"""

from __future__ import annotations

import json
import queue
import select
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from testkit.procs import TIMEOUT

# Pushed into an open stream besides what the stand-in writes itself.
CLOSE = "close"  # end the body cleanly (the zero-length chunk)
STALL = "stall"  # go silent: no keep-alive any more, as a connection that died without a close


class StandIn:
    """A stand-in's state, guarded by one condition that every change notifies: tests wait on it, never sleep."""

    name = "stand-in"

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._closing = threading.Event()

    def wait(self, predicate: Callable[[], object], timeout: float = TIMEOUT, what: str = "condition") -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise AssertionError(f"{self.name}: no {what} within {timeout} s; {self.describe()}")

    def describe(self) -> str:
        """What a failed wait reports besides its own name (the connection attempts so far)."""
        return ""


def serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """`handler` on a free port of 127.0.0.1, answering from threads of its own until `stop(httpd)`."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def stop(httpd: ThreadingHTTPServer) -> None:
    httpd.shutdown()
    httpd.server_close()


def base_url(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 as a real API server speaks it: headers and body leave at once, no access log on the test's output,
    a client that leaves mid-answer is not an error."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def bearer(self, token: str) -> bool:
        return self.headers.get("Authorization") == f"Bearer {token}"

    def start_stream(self, content_type: str, headers: dict[str, str] | None = None) -> None:
        """A 200 with a chunked body that ends the connection, as a server that closes after a stream must say."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def pump(self, items: queue.Queue[Any], every: float, keepalive: bytes, write: Callable[[Any], bool],
             live: Callable[[], bool]) -> None:
        """Stream what the test pushes until CLOSE, the client leaving, or `live()` turning false: raw bytes as
        they are, anything else through `write` (False ends the stream), `keepalive` after `every` quiet seconds
        unless STALL came."""
        stalled = False
        try:
            while live():
                try:
                    item = items.get(timeout=0.05 if stalled else every)
                except queue.Empty:
                    if not stalled:
                        self.chunk(keepalive)
                    elif select.select([self.connection], [], [], 0)[0] and not self.connection.recv(1):
                        return  # the client gave up on the silent stream
                    continue
                if item == CLOSE:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    return
                if item == STALL:
                    stalled = True
                elif isinstance(item, bytes):
                    for i in range(0, len(item), 65536):
                        self.chunk(item[i:i + 65536])
                elif not write(item):
                    return
        except OSError:
            return  # the client went away

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
