"""The systemd units in deploy/: systemd itself accepts them, and they run the programs as documented.

`systemd-analyze verify` checks a unit the way systemd loads it, including
that ExecStart names an executable. The programs are installed by pip on the
target, not here, so each unit is verified inside a scratch root that holds
the system's own units plus a stand-in executable at the unit's ExecStart path.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.__main__ import parse_args as bridge_args
from broker import nats
from broker.natsauth import Settings
from node.__main__ import parse_args as node_args
from node.journal import default_directory
from testkit.procs import ROOT
from testkit.users import edison_broker
from tests.requires import required

DEPLOY = ROOT / "deploy"
UNITS = ["edison-node", "edison-broker", "edison-bridge"]
# Variables each program reads from its environment (the rest of an env file feeds the command line).
PROGRAM_ENV = {
    "edison-node": {"MQTT_USERNAME", "MQTT_PASSWORD", "MQTT_PASSWORD_FILE"},
    "edison-broker": set(),
    "edison-bridge": {"X_BEARER_TOKEN", "X_BEARER_TOKEN_FILE", "MASTODON_ACCESS_TOKEN", "MASTODON_ACCESS_TOKEN_FILE",
                      "MQTT_USERNAME", "MQTT_PASSWORD", "MQTT_PASSWORD_FILE"},
}
ENV_FILE = {"edison-node": "node.env.example", "edison-broker": "broker.env.example",
            "edison-bridge": "bridge.env.example"}
STATE_OPTION = {"edison-broker": "--data", "edison-bridge": "--state", "edison-node": "--state"}


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze") or next(
        (p for p in ("/usr/bin/systemd-analyze", "/bin/systemd-analyze") if os.access(p, os.X_OK)), None)
    return required(found, "systemd-analyze is not installed (Debian: apt-get install systemd)")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)  # units repeat keys (LoadCredential)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep keys as written
    parser.read(DEPLOY / f"{name}.service", encoding="utf-8")
    return parser


def env_example(name: str) -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ENV_FILE[name]).read_text(encoding="utf-8").splitlines():
        line = line.strip().lstrip("#")
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            values[key] = value
    return values


def exec_start(name: str) -> list[str]:
    """ExecStart as systemd runs it with the example environment (and %d as the credentials directory).

    `${VAR}` is one word; `$VAR` standing as a word of its own is split at white space.
    """
    env = env_example(name)
    line = unit(name)["Service"]["ExecStart"].replace("%d", f"/run/credentials/{name}.service")
    argv: list[str] = []
    for word in shlex.split(line):
        whole = re.fullmatch(r"\$(\w+)", word)
        argv += env[whole.group(1)].split() if whole else [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word)]
    return argv


def _system_units() -> Path:
    for candidate in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if Path(candidate, "multi-user.target").exists():
            return Path(candidate)
    pytest.fail("systemd-analyze is installed but the system's units are not")


def verify(systemd_analyze: str, root: Path, unit_file: str, unit_name: str, program: Path,
           drop_ins: str | None = None) -> None:
    """systemd-analyze verify in a scratch root with the system's units and a stand-in at the unit's ExecStart;
    with `drop_ins`, that folder of deploy/ beside the unit."""
    shutil.copytree(_system_units(), root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(DEPLOY / unit_file, root / "etc/systemd/system")
    if drop_ins:
        shutil.copytree(DEPLOY / drop_ins, root / "etc/systemd/system" / drop_ins)
    assert program.is_absolute()
    stand_in = root / program.relative_to("/")
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    stand_in.write_text("#!/bin/sh\nexit 0\n")  # pip installs the real program here
    stand_in.chmod(0o755)
    done = subprocess.run([systemd_analyze, "verify", f"--root={root}", "--man=no", unit_name],
                          capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and unparsable values: any message is a failure too.
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done.stderr + done.stdout


@pytest.mark.parametrize("name", UNITS)
def test_systemd_accepts_the_unit(name, systemd_analyze, tmp_path):
    program = Path(exec_start(name)[0])
    assert program.name == name
    verify(systemd_analyze, tmp_path / "root", f"{name}.service", f"{name}.service", program)


def test_the_nats_member_template_runs_the_exported_config(systemd_analyze, tmp_path):
    """edison-nats@N loads nats-N.conf and the authorization.conf it includes, and keeps JetStream in its state."""
    verify(systemd_analyze, tmp_path / "root", "edison-nats@.service", "edison-nats@2.service",
           Path("/usr/local/bin/nats-server"))
    lines = (DEPLOY / "edison-nats@.service").read_text(encoding="utf-8").splitlines()
    for line in ("ExecStart=/usr/local/bin/nats-server -c %d/nats.conf",
                 "LoadCredential=nats.conf:/etc/edison/nats/nats-%i.conf",
                 "LoadCredential=authorization.conf:/etc/edison/nats/authorization.conf",
                 "StateDirectory=edison-nats", "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert line in lines, line
    assert "include ./authorization.conf" in nats.member_text(
        nats.Cluster(nats.members(1, "127.0.0.1", 1883, 6222, 4222), Path("/var/lib/edison-nats")),
        nats.members(1, "127.0.0.1", 1883, 6222, 4222)[0], "x")


def test_the_nats_callout_template_answers_for_its_member(systemd_analyze, tmp_path, user_files):
    """edison-nats-auth@N starts `nats-auth` on the member's config, finding nats-auth.json beside it as the
    export wrote it; the same command line works on the export's own folder."""
    verify(systemd_analyze, tmp_path / "root", "edison-nats-auth@.service", "edison-nats-auth@2.service",
           Path("/usr/local/bin/edison-broker"))
    lines = (DEPLOY / "edison-nats-auth@.service").read_text(encoding="utf-8").splitlines()
    for line in ("ExecStart=/usr/local/bin/edison-broker nats-auth %d/nats.conf --passwd %d/passwd",
                 "LoadCredential=nats.conf:/etc/edison/nats/nats-%i.conf",
                 "LoadCredential=nats-auth.json:/etc/edison/nats/nats-auth.json",
                 "LoadCredential=passwd:/etc/edison/passwd", "DynamicUser=yes", "NoNewPrivileges=yes"):
        assert line in lines, line
    topics, passwd = user_files
    out = tmp_path / "export"
    assert edison_broker("nats-config", "--config", str(topics), "--passwd", str(passwd), "--data",
                         str(tmp_path / "data"), "--out", str(out)).returncode == 0
    credentials = tmp_path / "credentials"  # what systemd lays out under %d
    credentials.mkdir()
    shutil.copy(out / "nats-2.conf", credentials / "nats.conf")
    shutil.copy(out / "nats-auth.json", credentials / "nats-auth.json")
    shutil.copy(passwd, credentials / "passwd")
    settings = Settings.load(credentials / "nats.conf", credentials / "passwd")
    assert settings.member == "edison-nats-2" and settings.passwd == credentials / "passwd"


@pytest.mark.parametrize("name", UNITS)
def test_unit_restarts_on_failure_is_hardened_and_stops_gracefully(name):
    service = unit(name)["Service"]
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"].startswith("/etc/edison/")
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["KillSignal"] in ("SIGTERM", "SIGINT")
    assert 5 <= int(service["TimeoutStopSec"]) <= 30
    if name in STATE_OPTION:
        argv = exec_start(name)
        state_dir = argv[argv.index(STATE_OPTION[name]) + 1]
        assert state_dir == f"/var/lib/{service['StateDirectory']}"  # the one writable place
        assert service.get("DynamicUser", "no") == ("no" if name == "edison-node" else "yes")  # mraa needs root


@pytest.mark.parametrize("name", UNITS)
def test_env_example_names_every_variable(name):
    env = env_example(name)
    assert PROGRAM_ENV[name] <= set(env)
    used = set(re.findall(r"\$\{?(\w+)\}?", unit(name)["Service"]["ExecStart"]))
    assert used <= set(env)


def test_bridge_unit_runs_several_sources_with_a_command_line_edison_bridge_accepts():
    args = bridge_args(exec_start("edison-bridge")[1:])
    assert args.source == ["bluesky", "mastodon"] and args.mastodon_url.startswith("https://")
    assert (args.config, args.state) == ("/etc/edison/topics.yaml", Path("/var/lib/edison-bridge"))


def test_node_unit_command_line_is_one_edison_node_accepts():
    args = node_args(exec_start("edison-node")[1:])
    assert (args.config, args.device, args.pins) == ("/etc/edison/topics.yaml", "edison-1", "mraa")
    assert [b.split(":")[0] for b in args.broker] == ["mqtts"]
    # Where systemd's StateDirectory= points the node by default is where --state points it on an older systemd.
    state_directory = f"/var/lib/{unit('edison-node')['Service']['StateDirectory']}"
    assert default_directory("edison-1", {"STATE_DIRECTORY": state_directory}) == args.state


def test_the_gpiod_drop_in_runs_the_node_on_gpiod_in_the_gpio_group(systemd_analyze, tmp_path):
    verify(systemd_analyze, tmp_path / "root", "edison-node.service", "edison-node.service",
           Path(exec_start("edison-node")[0]), drop_ins="edison-node.service.d")
    drop_in = configparser.ConfigParser(strict=False, interpolation=None)
    drop_in.optionxform = str  # type: ignore[assignment,method-assign]
    drop_in.read(DEPLOY / "edison-node.service.d" / "gpiod.conf", encoding="utf-8")
    service = drop_in["Service"]
    args = node_args(shlex.split(service["ExecStart"])[1:])  # the last ExecStart=, after the empty one clears
    assert (args.pins, args.config, str(args.gpio_chip)) == ("gpiod", "/etc/edison/topics.yaml", "/dev/gpiochip0")
    assert (service["SupplementaryGroups"], service["DynamicUser"]) == ("gpio", "yes")
