"""A secured broker for the tests: users, access rules and (for Mosquitto) the exported configuration."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from testkit.brokers import export_for, run_mosquitto, start_embedded
from testkit.mqtt import Broker, Probe
from testkit.procs import free_port, python_cmd

TOPICS = """\
prefix: edison
devices:
  edison-t:
    outputs:
      led: {pin: 20, blink: {count: 2, on_time: 0.05, off_time: 0.05}}
  edison-u:
    outputs:
      led: {pin: 20}
access:
  laptop: controller
  watcher: controller
  monitor: controller
  churner: controller
  bridge: bridge
"""
# "stranger" has a password but no access rule. The fault harness gives each of its clients a user of its own
# (monitor: the device's status, churner: the churn), as the Mosquitto export allows one connection per user.
USERS = {name: f"pw-{name}-{i}" for i, name in enumerate(["edison-t", "edison-u", "laptop", "watcher", "bridge",
                                                            "stranger", "monitor", "churner"])}


@dataclass
class Secured:
    broker: Broker
    topics: Path
    passwd: Path
    members: tuple[int, ...] = ()  # a cluster's MQTT ports: each login goes to the next member
    _logins: itertools.count = field(default_factory=itertools.count)

    def next_port(self) -> int:
        return self.members[next(self._logins) % len(self.members)] if self.members else self.broker.port


def edison_broker(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(python_cmd("broker", *args), input=stdin, capture_output=True, text=True, timeout=60)


def make_users(tmp_path: Path, topics_text: str = TOPICS, users: dict[str, str] = USERS) -> tuple[Path, Path]:
    """topics.yaml and a password file with `users`, made with `edison-broker passwd` as a user would."""
    topics, passwd = tmp_path / "topics.yaml", tmp_path / "passwd"
    topics.write_text(topics_text)
    for name, password in users.items():
        done = edison_broker("passwd", "--passwd", str(passwd), "add", name, "--stdin", stdin=password + "\n")
        assert done.returncode == 0, done.stderr
    return topics, passwd


def copy_users(user_files: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    topics, passwd = user_files
    for f in (topics, passwd, passwd.with_name(passwd.name + ".mosquitto")):
        shutil.copy2(f, tmp_path / f.name)
    return tmp_path / topics.name, tmp_path / passwd.name


def start_secured_embedded(tmp_path: Path, user_files: tuple[Path, Path], *extra: str,
                        port: int | None = None) -> Secured:
    topics, passwd = user_files
    broker = start_embedded(tmp_path, "--config", str(topics), "--passwd", str(passwd), *extra, port=port)
    return Secured(broker, topics, passwd)


def start_exported_mosquitto(tmp_path: Path, user_files: tuple[Path, Path], binary: str, *extra: str) -> Secured:
    topics, passwd = copy_users(user_files, tmp_path)
    port = free_port()
    out = tmp_path / "mosquitto"
    done = edison_broker("mosquitto-config", "--config", str(topics), "--passwd", str(passwd),
                         "--bind", f"127.0.0.1:{port}", "--out", str(out), *export_for(binary), *extra)
    assert done.returncode == 0, done.stderr
    conf = out / "mosquitto.conf"
    if os.geteuid() == 0:  # as root Mosquitto would switch to its own user, which cannot read the test's files
        conf.write_text(conf.read_text() + "user root\n")
    return Secured(Broker("mosquitto", port, run_mosquitto(binary, conf, tmp_path / "mosquitto.log", port)), topics,
                   passwd)


def login(s: Secured, user: str, **kwargs) -> Probe:
    """A client of `user`; on a cluster each login is on the next member, so clients are spread over them."""
    kwargs.setdefault("port", s.next_port())
    return Probe(s.broker, username=user, password=USERS[user], **kwargs)


