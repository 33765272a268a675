"""edison-bridge: posts on X from allowed accounts become device commands over MQTT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from node import __version__
from node.config import ConfigError
from node.mqtt import PROTOCOLS, BrokerAddress, Credentials, LinkError, LinkSettings

log = logging.getLogger("edison-bridge")

STOP_TIMEOUT = 2.0  # per phase (drain, acknowledgements): SIGTERM to exit stays under 5 s
EOF_DRAIN_TIMEOUT = 15.0  # --source stdin: how long to wait for the broker after the input ends


class TokenError(Exception):
    pass


def bearer_token(env: Mapping[str, str] = os.environ) -> str:
    """X_BEARER_TOKEN, or X_BEARER_TOKEN_FILE naming a file that holds it."""
    token, path = env.get("X_BEARER_TOKEN"), env.get("X_BEARER_TOKEN_FILE")
    if token and path:
        raise TokenError("set X_BEARER_TOKEN or X_BEARER_TOKEN_FILE, not both")
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"X_BEARER_TOKEN_FILE: cannot read {path}: {exc}") from None
    if not token:
        raise TokenError("no X bearer token: set X_BEARER_TOKEN or X_BEARER_TOKEN_FILE (or use --source stdin)")
    return token


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="edison-bridge",
        description="Follow the X filtered stream and publish the command of each trigger posted by an allowed "
        "account. The bearer token comes from X_BEARER_TOKEN or X_BEARER_TOKEN_FILE; MQTT credentials from "
        "MQTT_USERNAME and MQTT_PASSWORD or MQTT_PASSWORD_FILE.",
    )
    p.add_argument("--config", default="topics.yaml", help="the topics.yaml contract (default: %(default)s)")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host[:port] or mqtts://host[:port]")
    p.add_argument("--ca-file", help="CA certificate(s) to trust for mqtts:// (default: the system's)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="auto",
                   help="MQTT version; auto tries 5 and falls back to 3.1.1 (default: %(default)s)")
    p.add_argument("--client-id", default="edison-bridge", help="MQTT client id (default: %(default)s)")
    p.add_argument("--source", choices=("x", "stdin"), default="x",
                   help="x: the X filtered stream; stdin: posts as JSON lines in the stream's format (default: x)")
    p.add_argument("--x-api-url", default="https://api.x.com", help="X API base URL (default: %(default)s)")
    p.add_argument("--state", type=Path, default=Path("bridge-state"),
                   help="directory for the ids of posts already acted on (default: %(default)s)")
    p.add_argument("--rule-tag", default="edison-bridge",
                   help="tag of the stream rules this bridge owns; others are never touched (default: %(default)s)")
    p.add_argument("--max-pending", type=int, default=100,
                   help="commands kept while the broker is unreachable (default: %(default)s)")
    p.add_argument("--backoff-scale", type=float, default=1.0,
                   help="multiply X's reconnect delays (tests only; default: %(default)s)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("edison-bridge", "broker.bridge", "node.mqtt"):
        logging.getLogger(name).setLevel(args.log_level)
    try:
        from broker.bridge.backoff import Backoff
        from broker.bridge.config import load
        from broker.bridge.publisher import Publisher
        from broker.bridge.service import Bridge, follow_stream, read_lines
        from broker.bridge.state import SeenPosts, StateError
        from broker.bridge.x_api import XClient
    except ImportError as exc:
        log.error("the bridge needs httpx and pydantic: pip install 'edison-mqtt[bridge]' (%s)", exc)
        return 2
    try:
        config, bridge_cfg = load(args.config)
        settings = LinkSettings(BrokerAddress.parse(args.broker), Credentials.from_env(), protocol=args.protocol,
                                ca_file=args.ca_file)
        token = bearer_token() if args.source == "x" else ""
        if args.max_pending < 1 or args.backoff_scale <= 0:
            raise ConfigError("--max-pending must be at least 1 and --backoff-scale above 0")
        seen = SeenPosts(args.state)
    except (ConfigError, LinkError, TokenError, StateError) as exc:
        log.error("%s", exc)
        return 2
    ids = {a for a in bridge_cfg.allow if a.isdigit()}
    names = [a for a in bridge_cfg.allow if not a.isdigit()]
    publisher = Publisher(settings, args.client_id, args.max_pending)
    if args.source == "stdin":
        bridge = Bridge(config, bridge_cfg, publisher, seen, ids, frozenset(n.lower() for n in names))
        if names:
            log.info("reading posts from stdin: %s matched by username (no X API to resolve ids)", ", ".join(names))
    else:
        bridge = Bridge(config, bridge_cfg, publisher, seen, ids)
    log.info("%d post id(s) already acted on, from %s", len(seen), seen.path)

    stop = threading.Event()
    done = threading.Event()
    outcome = {"code": 0}

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        done.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    def work() -> None:
        try:
            if args.source == "stdin":
                read_lines(bridge, sys.stdin.buffer)
                log.info("end of input")
            else:
                client = XClient(args.x_api_url, token, bridge_cfg.stall_timeout)
                outcome["code"] = follow_stream(bridge, client, names, args.rule_tag, bridge_cfg.rule_max_length,
                                                Backoff(args.backoff_scale, healthy_after=bridge_cfg.stall_timeout),
                                                stop)
        except Exception:
            log.exception("bridge stopped by an unexpected error")
            outcome["code"] = 1
        finally:
            done.set()

    publisher.start()
    threading.Thread(target=work, name="bridge", daemon=True).start()
    done.wait()
    bridge.stop()
    drain = STOP_TIMEOUT if stop.is_set() else EOF_DRAIN_TIMEOUT
    log.info("stopping: publishing what is pending")
    drained = publisher.drain(drain)
    delivered = publisher.stop(STOP_TIMEOUT if drained else 0.0) and drained
    seen.close()
    code = outcome["code"]
    if code == 0 and not delivered and not stop.is_set():
        code = 1  # end of input with commands never published; on SIGTERM the log says so and we exit 0
    log.info("stopped (exit %d)", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
