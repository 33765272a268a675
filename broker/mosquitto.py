"""Export the embedded broker's users, access rules and listeners as a Mosquitto 2 configuration.

Mosquitto keeps its state in memory and writes all of it to disk at autosave.
The export saves after every change (a queued command, a delivery, a retained
message), which bounds what a crash can lose to the change being written; see
the README for what that costs and what it measured.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

from broker import passwords
from broker.access import Rules, mosquitto_acl
from broker.models import MAX_UNACKNOWLEDGED, Listeners, Options
from broker.web import write_page

PAGE_DIR = "page"  # beside the configuration: the control page, Mosquitto's http_dir


def _listener(bind: str, o: Options, own_client_ids: bool) -> list[str]:
    """A listener block. Both are listener options (before any listener they would open one on 1883 of every
    interface)."""
    return [_listener_line(bind), f"max_connections {o.limits.max_connections or -1}",
            f"use_username_as_clientid {'true' if own_client_ids else 'false'}"]


def _absolute(path: Path | None) -> Path | None:
    """Paths as given on the command line, absolute: Mosquitto may be started from any directory."""
    return path.resolve() if path else None


def _listener_line(bind: str) -> str:
    host, _, port = bind.rpartition(":")
    return f"listener {port} {host.strip('[]')}"


OWN_CLIENT_IDS = """\
# use_username_as_clientid: every client id is its user's name, so nobody can take a device's session (and
# discard its queued commands) with the device's client id, at the price of one connection per user: a second one
# takes the first one's place, as a device reconnecting does. Give each program its own user."""
SHARED_CLIENT_IDS = """\
# use_username_as_clientid false (--several-connections-per-user): a user may hold several connections, and so
# may connect with any client id, a device's included, taking over its session and discarding its queued commands."""
UNSAFE_REWRITE = """\
# use_username_as_clientid false: on Mosquitto before 2.0.13 a CONNECT without a user name, refused, still removes
# the session of the client id it named, and the device that owned it gets no command until Mosquitto restarts:
# anyone who reaches the port could do it. So a logged-in user may connect with any client id, a device's included,
# taking over its session and discarding its queued commands. Mosquitto 2.0.13 or newer closes both."""
# The first release whose refused CONNECT leaves other clients' sessions alone (its context__remove_from_by_id
# checks in_by_id); before it, use_username_as_clientid opens the door to anyone who reaches the port.
SAFE_REWRITE_FROM = (2, 0, 13)

WIDE_WINDOW = """\
# max_inflight_messages: Mosquitto's window (20 by default) also counts a client's unfinished incoming QoS 2
# exchanges; past it a publish is refused with PUBREC 0x97 on MQTT 5 (paho-mqtt ignores that code) and dropped on
# 3.1.1 while answered as accepted. The embedded broker's receive maximum: the same window on both."""
NARROW_WINDOW = """\
# max_inflight_messages left at 20: a client with more than 20 QoS 2 publishes unfinished has the rest refused
# (PUBREC 0x97 on MQTT 5, which paho-mqtt ignores) or dropped while answered as accepted (3.1.1). A wider window
# makes Mosquitto before 2.0.13 hang on SIGTERM (its inflight accounting was fixed in 2.0.13): keep QoS 2 senders
# at 20 in flight (paho's default), or use Mosquitto 2.0.13 or newer."""
# The first release whose inflight accounting holds with a window wider than 20 (issue #2306).
WIDE_WINDOW_FROM = (2, 0, 13)


def installed_version(binary: str = "mosquitto") -> tuple[int, ...] | None:
    """The version of the Mosquitto on this host (`mosquitto -h` prints it), or None if there is none."""
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if path is None:
        return None
    try:
        done = subprocess.run([path, "-h"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"mosquitto version (\d+)\.(\d+)\.(\d+)", done.stdout + done.stderr)
    return tuple(int(n) for n in found.groups()) if found else None


def client_id_policy(version: tuple[int, ...], several_per_user: bool) -> tuple[bool, str]:
    """Whether to force each client id to its user's name on this Mosquitto, and the config's comment saying why."""
    if several_per_user:
        return False, SHARED_CLIENT_IDS
    if version < SAFE_REWRITE_FROM:
        return False, UNSAFE_REWRITE
    return True, OWN_CLIENT_IDS


def conf_text(o: Options, out: Path, version: tuple[int, ...], several_per_user: bool = False) -> str:
    """mosquitto.conf for Mosquitto `version`; client ids as client_id_policy says."""
    ls: Listeners = o.listeners
    own_client_ids, why = client_id_policy(version, several_per_user)
    lines = [
        "# Generated by edison-broker mosquitto-config: same users, access rules and listeners,",
        f"# for Mosquitto {'.'.join(map(str, version))}.",
        why,
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {out / 'passwd'}",
        f"acl_file {out / 'acl'}",
        f"message_size_limit {o.limits.max_message_size}",
        f"max_queued_messages {o.limits.max_queued}",
        "set_tcp_nodelay true",
    ]
    if version >= WIDE_WINDOW_FROM:
        lines += [WIDE_WINDOW, f"max_inflight_messages {MAX_UNACKNOWLEDGED}"]
    else:
        lines += [NARROW_WINDOW]
    if o.limits.max_keepalive:
        lines.append(f"max_keepalive {o.limits.max_keepalive}")
    if o.data:
        lines += ["persistence true", f"persistence_location {o.data.resolve()}/",
                  "autosave_on_changes true", "autosave_interval 1"]
    else:
        lines += ["persistence false"]
    lines += ["log_dest stderr", "log_type error", "log_type warning", "log_type notice", "log_type information",
              "connection_messages true", "", *_listener(ls.bind, o, own_client_ids)]
    if ls.tls_bind:
        lines += ["", *_listener(ls.tls_bind, o, own_client_ids), f"certfile {_absolute(ls.tls_cert)}",
                  f"keyfile {_absolute(ls.tls_key)}"]
        if ls.tls_ca:
            lines += [f"cafile {_absolute(ls.tls_ca)}", "require_certificate false"]
    for bind in (ls.ws_bind, ls.web_bind):  # the control page is served by Mosquitto itself, beside MQTT
        if bind:
            lines += ["", *_listener(bind, o, own_client_ids), "protocol websockets", f"http_dir {out / PAGE_DIR}"]
    if ls.web_bind and ls.tls_cert:
        lines += [f"certfile {_absolute(ls.tls_cert)}", f"keyfile {_absolute(ls.tls_key)}"]
    return "\n".join(lines) + "\n"


def export(o: Options, out: Path, version: tuple[int, ...], several_per_user: bool = False) -> list[Path]:
    """Write mosquitto.conf, acl and passwd into `out`, and the control page into `out/page` if there is a
    WebSocket listener; the written paths."""
    if not (o.passwd and o.rules):
        raise ValueError("the export needs the password file and the access rules")
    hashes = passwords.twin(o.passwd, "mosquitto")
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "mosquitto.conf", out / "acl", out / "passwd"]
    written[0].write_text(conf_text(o, out.resolve(), version, several_per_user))
    written[1].write_text(mosquitto_acl(o.rules))
    passwords.write(written[2], hashes)
    if o.listeners.ws_bind or o.listeners.web_bind:
        written.append(write_page(o.layout, out / PAGE_DIR))
    if o.data:
        o.data.mkdir(parents=True, exist_ok=True, mode=0o700)
    return written


MOSQUITTO_USER = "mosquitto"


def hand_over(paths: list[Path]) -> str | None:
    """Started as root, Mosquitto reads its files and writes its data as the `mosquitto` user: give them to it.

    Returns that user's name, or None when not root or the user does not exist (then the files stay the caller's).
    """
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(MOSQUITTO_USER)
    except KeyError:
        return None
    for path in paths:
        shutil.chown(path, MOSQUITTO_USER, MOSQUITTO_USER)
    return MOSQUITTO_USER


def unknown_users(rules: Rules | None, users: list[str]) -> list[str]:
    """Users with a password but no access rule: they can log in and do nothing."""
    return sorted(set(users) - set(rules.users if rules else ()))
