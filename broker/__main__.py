"""edison-broker: serve (the default), `passwd` to manage users, `mosquitto-config` and `nats-config` to export,
`nats-auth` to answer the exported NATS cluster's logins."""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from node import __version__

if TYPE_CHECKING:
    from broker.models import Options

log = logging.getLogger("edison-broker")


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number (0: no limit), got {value!r}")
    return int(value)


def _listener_args(p: argparse.ArgumentParser) -> None:
    from broker.models import Limits

    p.add_argument("--config", type=Path, help="topics.yaml: devices and `access:` give the access rules")
    p.add_argument("--passwd", type=Path, help="password file made with `edison-broker passwd`")
    p.add_argument("--bind", type=_host_port, default="127.0.0.1:1883",
                   help="plain MQTT HOST:PORT (default: %(default)s)")
    p.add_argument("--tls-bind", type=_host_port, help="MQTT over TLS HOST:PORT, e.g. 0.0.0.0:8883")
    p.add_argument("--tls-cert", type=Path, help="certificate chain (PEM) of the TLS listener")
    p.add_argument("--tls-key", type=Path, help="private key (PEM) of the TLS listener")
    p.add_argument("--tls-ca", type=Path, help="CA (PEM) that signs client certificates, if clients present one")
    p.add_argument("--ws-bind", type=_host_port, help="MQTT over WebSocket HOST:PORT")
    p.add_argument("--web-bind", type=_host_port, help="the control page HOST:PORT, with MQTT over WebSocket at "
                   "/mqtt on the same port; HTTPS and WSS with --tls-cert and --tls-key (see docs/control-page.md)")
    p.add_argument("--data", type=Path, help="directory that keeps retained messages, sessions and queues")
    for flag, name, default, help in Limits.flags():
        p.add_argument(flag, dest=name, type=_count if isinstance(default, int) else float, default=default,
                       help=f"{help} (default: %(default)s)")


def _options(args: argparse.Namespace, allow_anonymous: bool = False) -> Options:
    from broker import access
    from broker.models import Limits, Listeners, Options
    from node.config import load
    from node.topics import Layout

    config = load(args.config) if args.config else None
    rules = access.rules(config) if config else None
    listeners = Listeners(bind=args.bind, tls_bind=args.tls_bind, tls_cert=args.tls_cert, tls_key=args.tls_key,
                          tls_ca=args.tls_ca, ws_bind=args.ws_bind, web_bind=args.web_bind)
    limits = Limits(**{name: getattr(args, name) for _, name, _, _ in Limits.flags()})
    return Options(listeners=listeners, passwd=args.passwd, rules=rules, allow_anonymous=allow_anonymous,
                   data=args.data, limits=limits, layout=config.layout if config else Layout())


def _serve(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="edison-broker", description="The embedded MQTT broker (MQTT 5 and 3.1.1, on "
                                "amqtt's listeners). "
                                "Subcommands: `passwd` (users), `mosquitto-config` and `nats-config` (exports), "
                                "`nats-auth` (the NATS cluster's logins).")
    _listener_args(p)
    p.add_argument("--allow-anonymous", action="store_true", help="accept every client: local trials on loopback only")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = p.parse_args(argv)
    logging.getLogger("edison-broker").setLevel(args.log_level)
    if args.log_level == "DEBUG":
        logging.getLogger("amqtt").setLevel(logging.DEBUG)
    try:
        from broker.engine import amqtt_problem
    except ImportError as exc:
        log.error("the broker needs amqtt: pip install 'edison-mqtt[broker]' (%s)", exc)
        return 2
    problem = amqtt_problem()
    if problem:
        log.error("%s", problem)
        return 2
    from broker.passwords import PasswordFileError
    from broker.server import SetupError, check, open_store, serve
    from node.config import ConfigError

    try:
        options = _options(args, args.allow_anonymous)
        check(options)
        store = open_store(options)
    except (SetupError, ConfigError, PasswordFileError) as exc:
        log.error("%s", exc)
        return 2
    try:
        asyncio.run(serve(options, store))
    except OSError as exc:
        log.error("cannot listen on %s: %s%s", ", ".join(options.listeners.binds), exc.strerror or exc,
                  " (another broker? choose another port with --bind, or `make run PORT=1884`)"
                  if exc.errno == errno.EADDRINUSE else "")
        return 1
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ValueError("no terminal to ask for the password on: pipe it in with --stdin "
                         "(echo \"$PASSWORD\" | edison-broker passwd --passwd FILE add NAME --stdin)")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise ValueError("the passwords differ")
    return first


def _passwd(argv: list[str]) -> int:
    from broker import passwords

    p = argparse.ArgumentParser(prog="edison-broker passwd", description="Manage broker users.")
    p.add_argument("--passwd", type=Path, required=True, help="the password file (created if missing)")
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a user or set its password")
    add.add_argument("name")
    add.add_argument("--stdin", action="store_true", help="read the password as one line from stdin")
    sub.add_parser("delete", help="remove a user").add_argument("name")
    sub.add_parser("list", help="print the user names")
    args = p.parse_args(argv)
    try:
        if args.action == "add":
            passwords.check_name(args.name)
            existed = passwords.add(args.passwd, args.name, _read_password(args.stdin))
            print(f"{'updated' if existed else 'added'} {args.name} in {args.passwd}", file=sys.stderr)
        elif args.action == "delete":
            passwords.delete(args.passwd, args.name)
            print(f"deleted {args.name} from {args.passwd}", file=sys.stderr)
        else:
            for name in passwords.names(args.passwd):
                print(name)
    except (passwords.PasswordFileError, ValueError, OSError) as exc:
        print(f"edison-broker passwd: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, EOFError):
        return 130
    return 0


def _mosquitto_config(argv: list[str]) -> int:
    from broker import mosquitto, passwords
    from node.config import ConfigError

    p = argparse.ArgumentParser(prog="edison-broker mosquitto-config",
                                description="Write mosquitto.conf, acl and passwd with the same users and rules.")
    _listener_args(p)
    p.add_argument("--out", type=Path, required=True, help="directory for the three files")
    p.add_argument("--several-connections-per-user", action="store_true",
                   help="let a user hold several connections with client ids of its choosing; then any user can "
                   "take a device's session and discard its queued commands (default: each client id is its user's "
                   "name, one connection per user, on Mosquitto 2.0.13 or newer)")
    p.add_argument("--mosquitto-version", type=_version, metavar="X.Y.Z",
                   help="the Mosquitto the config is for (default: the one installed here)")
    args = p.parse_args(argv)
    if not (args.config and args.passwd):
        p.error("--config and --passwd are required")
    version = args.mosquitto_version or mosquitto.installed_version()
    if version is None:
        p.error("no mosquitto here to read its version from: give --mosquitto-version (e.g. 2.0.11)")
    try:
        options = _options(args)
        written = mosquitto.export(options, args.out, version, args.several_connections_per_user)
        if not args.several_connections_per_user and version < mosquitto.SAFE_REWRITE_FROM:
            print(f"warning: Mosquitto {'.'.join(map(str, version))} removes the session a refused CONNECT named "
                  "when each client id is forced to its user's name (fixed in 2.0.13), so the config does not force "
                  "it: any logged-in user may take a device's session. Use Mosquitto 2.0.13 or newer to close it",
                  file=sys.stderr)
        readable = [*written[1:], *([args.data] if args.data else [])]
        owner = mosquitto.hand_over(readable)
        for name in mosquitto.unknown_users(options.rules, passwords.names(args.passwd)):
            print(f"warning: user {name} has a password but no access rule in {args.config}", file=sys.stderr)
    except (ConfigError, passwords.PasswordFileError, OSError) as exc:
        print(f"edison-broker mosquitto-config: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(w) for w in written)}", file=sys.stderr)
    if owner:
        print(f"gave {', '.join(str(p) for p in readable)} to user {owner}, as which Mosquitto started by root "
              "reads and writes them", file=sys.stderr)
    else:
        print(f"if Mosquitto is started as root it runs as user {mosquitto.MOSQUITTO_USER}: "
              f"sudo chown {mosquitto.MOSQUITTO_USER}: {' '.join(str(p) for p in readable)}", file=sys.stderr)
    print(f"run: mosquitto -c {written[0]}", file=sys.stderr)
    return 0


def _version(value: str) -> tuple[int, ...]:
    parts = value.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected a version X.Y.Z, got {value!r}")
    return tuple(int(p) for p in parts)


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}")
    return int(value)


def _nats_config(argv: list[str]) -> int:
    from broker import access, mosquitto, nats, passwords
    from node.config import ConfigError, load

    p = argparse.ArgumentParser(prog="edison-broker nats-config",
                                description="Write one nats-server config per member of a NATS cluster, with the "
                                "same users and rules, MQTT on each member and the sessions replicated.")
    p.add_argument("--config", type=Path, required=True, help="topics.yaml: devices and `access:` give the rules")
    p.add_argument("--passwd", type=Path, required=True, help="password file made with `edison-broker passwd`")
    p.add_argument("--out", type=Path, required=True, help="directory for nats-N.conf and authorization.conf")
    p.add_argument("--data", type=Path, required=True, help="directory under which each member keeps its JetStream")
    p.add_argument("--nodes", type=int, default=3, help="members on one host (default: %(default)s)")
    p.add_argument("--member", action="append", default=[], metavar="HOST",
                   help="a member on its own host, same ports on each (repeat it; instead of --nodes)")
    p.add_argument("--host", default="127.0.0.1", help="with --nodes: the address all members bind (default: "
                   "%(default)s)")
    p.add_argument("--mqtt-port", type=_port, default=1883, help="MQTT port of the first member (default: %(default)s)")
    p.add_argument("--cluster-port", type=_port, default=6222, help="route port of the first member (default: "
                   "%(default)s)")
    p.add_argument("--client-port", type=_port, default=4222, help="NATS client port of the first member, on "
                   "loopback (default: %(default)s)")
    p.add_argument("--tls-cert", type=Path, help="certificate chain (PEM): MQTT over TLS on every member")
    p.add_argument("--tls-key", type=Path, help="private key (PEM) of the certificate")
    p.add_argument("--fleet", type=int, default=nats.DEFAULT_FLEET,
                   help="devices the cluster must hold: sizes its JetStream limits (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        if args.member and args.nodes not in (3, len(args.member)):
            raise nats.ExportError(f"--nodes {args.nodes} but {len(args.member)} --member: give one or the other")
        config = load(args.config)
        rules = access.rules(config)
        cluster = nats.Cluster(nats.members(args.nodes, args.host, args.mqtt_port, args.cluster_port,
                                            args.client_port, args.member), args.data, args.tls_cert, args.tls_key,
                               args.fleet)
        written = nats.export(cluster, rules, list(config.devices), args.passwd, args.out)
        for name in mosquitto.unknown_users(rules, passwords.names(args.passwd)):
            print(f"warning: user {name} has a password but no access rule in {args.config}: it may log in and "
                  "do nothing", file=sys.stderr)
    except (ConfigError, passwords.PasswordFileError, nats.ExportError, OSError) as exc:
        print(f"edison-broker nats-config: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"edison-broker nats-config: needs nkeys and bcrypt: pip install 'edison-mqtt[nats]' ({exc})",
              file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(w) for w in written)} (secrets: readable by their owner only)", file=sys.stderr)
    print("MQTT on " + ", ".join(f"{'mqtts' if args.tls_cert else 'mqtt'}://{m.host}:{m.mqtt_port}"
                                 for m in cluster.members), file=sys.stderr)
    first = written[2]
    print(f"run on each member (nats-server {nats.MIN_VERSION} or newer): nats-server -c {first} ..., and beside "
          f"it its auth callout, without which no login succeeds: edison-broker nats-auth {first} ...",
          file=sys.stderr)
    return 0


def _nats_auth(argv: list[str]) -> int:
    from broker import natsauth

    p = argparse.ArgumentParser(prog="edison-broker nats-auth",
                                description="The auth callout of one member of the exported NATS cluster: checks "
                                "every MQTT login against the password file and the client ids that belong to "
                                "users, and answers with the user's access rules. Run one beside every member.")
    p.add_argument("member_conf", type=Path, metavar="NATS-N.CONF",
                   help="the member's config written by nats-config; nats-auth.json is read beside it")
    p.add_argument("--passwd", type=Path, help="the password file, if not where it was at the export")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = p.parse_args(argv)
    logging.getLogger("edison-broker").setLevel(args.log_level)
    try:
        settings = natsauth.Settings.load(args.member_conf, args.passwd)
        import nats  # noqa: F401  (said here, not at the first login)
    except natsauth.CalloutError as exc:
        log.error("%s", exc)
        return 2
    except ImportError as exc:
        log.error("the auth callout needs nats-py and nkeys: pip install 'edison-mqtt[nats]' (%s)", exc)
        return 2
    return asyncio.run(_run_until_signal(lambda stop: natsauth.serve(settings, stop), natsauth.CalloutError))


async def _run_until_signal(run: Callable[[asyncio.Event], Awaitable[None]], fatal: type[Exception]) -> int:
    """Run until SIGTERM or SIGINT; 2 if `run` stops with `fatal` (logged), else 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run(stop)
    except fatal as exc:
        log.error("%s", exc)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {"passwd": _passwd, "mosquitto-config": _mosquitto_config, "nats-config": _nats_config,
                "nats-auth": _nats_auth}
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    return _serve(argv)


if __name__ == "__main__":
    sys.exit(main())
