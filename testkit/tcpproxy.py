"""A TCP forwarder on 127.0.0.1 that a test can cut, restore or freeze, to make a server unreachable for one
client; and a port that accepts connections and never answers.

The forwarder counts the bytes it has handed to the client, so a test can wait until
something the server sent is in the client's socket before cutting.
"""

from __future__ import annotations

import socket
import threading

from testkit.procs import TIMEOUT, free_port


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._frozen: list[threading.Event] = []
        self._lock = threading.Lock()
        self._to_client = 0
        self._forwarded = threading.Condition()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def freeze(self) -> None:
        """Open connections go silent both ways without closing (a NAT that forgot them); new ones work."""
        with self._lock:
            for frozen in self._frozen:
                frozen.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            frozen = threading.Event()
            with self._lock:
                self._conns += [client, upstream]
                self._frozen.append(frozen)
            for a, b, count in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(a, b, frozen, count), daemon=True).start()

    @property
    def to_client(self) -> int:
        """Bytes handed to clients so far."""
        with self._forwarded:
            return self._to_client

    def wait_to_client(self, total: int, timeout: float = TIMEOUT) -> None:
        with self._forwarded:
            if not self._forwarded.wait_for(lambda: self._to_client >= total, timeout):
                raise AssertionError(f"only {self._to_client} of {total} bytes reached the client in {timeout} s")

    def _pump(self, src: socket.socket, dst: socket.socket, frozen: threading.Event, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if frozen.is_set():
                    continue
                dst.sendall(data)
                if count:
                    with self._forwarded:
                        self._to_client += len(data)
                        self._forwarded.notify_all()
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class SilentPort:
    """A port that accepts TCP connections and never says a word: a broker that hangs, or another service."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)  # the kernel completes the handshakes; nobody ever reads
        self.port = self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()
