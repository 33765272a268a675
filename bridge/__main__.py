"""edison-bridge: posts from allowed accounts on X, Bluesky and Mastodon become device commands over MQTT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from bridge.sources import Source
from node import __version__
from node.config import ConfigError
from node.mqtt import DEFAULT_BROKER, PROTOCOLS, Credentials, LinkError, LinkSettings, parse_brokers
from node.secret import SecretError, secret

log = logging.getLogger("edison-bridge")

SOURCES = ("x", "bluesky", "mastodon", "stdin")
NETWORK_OF = {"x": "x", "bluesky": "bluesky", "mastodon": "mastodon", "stdin": "x"}
JETSTREAMS = [f"wss://jetstream{n}.{region}.bsky.network/subscribe" for region in ("us-east", "us-west")
              for n in (1, 2)]
STOP_TIMEOUT = 2.0  # per phase (drain, acknowledgements): SIGTERM to exit stays under 5 s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="edison-bridge",
        description="Follow X, Bluesky and Mastodon and publish the command of each trigger posted by an allowed "
        "account. Secrets come from the environment: X_BEARER_TOKEN, MASTODON_ACCESS_TOKEN and MQTT_PASSWORD, "
        "or the same names with _FILE naming a file that holds them; MQTT_USERNAME names the MQTT user.",
    )
    p.add_argument("--config", default="topics.yaml", help="the topics.yaml contract (default: %(default)s)")
    p.add_argument("--broker", action="append",
                   help="mqtt://host[:port] or mqtts://host[:port]; repeat it (or separate with commas) for several "
                   f"brokers: the first that answers is used, the next when it fails (default: {DEFAULT_BROKER})")
    p.add_argument("--ca-file", help="CA certificate(s) to trust for mqtts:// (default: the system's)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="auto",
                   help="MQTT version; auto tries 5 and falls back to 3.1.1 (default: %(default)s)")
    p.add_argument("--client-id", help="MQTT client id (default: the MQTT user name, which the broker keeps for that "
                   "user alone; edison-bridge without one)")
    p.add_argument("--source", action="append", choices=SOURCES,
                   help="a network to follow, repeatable: x (the filtered stream), bluesky (Jetstream), mastodon "
                   "(the bot account's home timeline), or stdin (posts as JSON lines in X's stream format, alone); "
                   "default: x")
    p.add_argument("--x-api-url", default="https://api.x.com", help="X API base URL (default: %(default)s)")
    p.add_argument("--rule-tag", default="edison-bridge",
                   help="tag of the X stream rules this bridge owns; others are never touched (default: %(default)s)")
    p.add_argument("--bluesky-jetstream", action="append", metavar="URL",
                   help="a Jetstream /subscribe URL, repeatable, tried in turn (default: the four public instances)")
    p.add_argument("--bluesky-api", default="https://public.api.bsky.app",
                   help="where Bluesky handles are resolved to DIDs (default: %(default)s)")
    p.add_argument("--mastodon-url", help="the Mastodon instance of the bot account, e.g. https://mastodon.social")
    p.add_argument("--state", type=Path, default=Path("bridge-state"),
                   help="directory for posts already acted on, commands not yet delivered and stream positions "
                   "(default: %(default)s)")
    p.add_argument("--max-pending", type=int, default=100,
                   help="commands kept while the broker is unreachable (default: %(default)s)")
    p.add_argument("--drain-timeout", type=float, default=15.0,
                   help="--source stdin: seconds to wait for the broker after the input ends (default: %(default)s)")
    p.add_argument("--backoff-scale", type=float, default=1.0,
                   help="multiply every reconnect delay (tests only; default: %(default)s)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = p.parse_args(argv)
    args.source = list(dict.fromkeys(args.source or ["x"]))
    args.bluesky_jetstream = args.bluesky_jetstream or JETSTREAMS
    return args


def required_secret(name: str, why: str) -> str:
    value = secret(name)
    if not value:
        raise SecretError(f"{why}: set {name} or {name}_FILE")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("edison-bridge", "bridge", "node.mqtt"):
        logging.getLogger(name).setLevel(args.log_level)
    try:
        from bridge.config import load as load_config
        from bridge.pipeline import Pipeline
        from bridge.publisher import Publisher
        from bridge.state import Cursors, Outbox, SeenPosts, StateError
    except ImportError as exc:
        log.error("the bridge needs its extra: pip install 'edison-mqtt[bridge]' (%s)", exc)
        return 2
    try:
        topics, config = load_config(args.config)
        if "stdin" in args.source and len(args.source) > 1:
            raise ConfigError("--source stdin reads posts from stdin alone: give no other --source")
        for source in args.source:
            network = NETWORK_OF[source]
            if not config.allow.of(network):
                raise ConfigError(f"--source {source}: bridge.allow.{network} in {args.config} names no account")
        if "mastodon" in args.source and not args.mastodon_url:
            raise ConfigError("--source mastodon needs --mastodon-url (the bot account's instance)")
        if args.max_pending < 1 or args.backoff_scale <= 0 or args.drain_timeout < 0:
            raise ConfigError("--max-pending must be at least 1, --backoff-scale above 0, --drain-timeout not negative")
        settings = LinkSettings(parse_brokers(args.broker), Credentials.from_env(), protocol=args.protocol,
                                ca_file=args.ca_file)
        tokens = {
            "x": required_secret("X_BEARER_TOKEN", "no X bearer token (or use --source stdin)")
            if "x" in args.source else "",
            "mastodon": required_secret("MASTODON_ACCESS_TOKEN", "no Mastodon access token")
            if "mastodon" in args.source else "",
        }
        seen, outbox, cursors = SeenPosts(args.state), Outbox(args.state), Cursors(args.state)
    except (ConfigError, LinkError, SecretError, StateError) as exc:
        log.error("%s", exc)
        return 2
    client_id = args.client_id or settings.credentials.username or "edison-bridge"
    publisher = Publisher(settings, client_id, outbox, seen, args.max_pending)
    pipeline = Pipeline(topics, config, publisher, seen)
    log.info("%d post id(s) already acted on, from %s", len(seen), seen.path)
    sources: list[Source] = []
    for name in args.source:
        if name == "stdin":
            from bridge.sources.stdin import StdinSource
            sources.append(StdinSource(pipeline, config.allow.x, sys.stdin.fileno()))
        elif name == "x":
            from bridge.backoff import XBackoff
            from bridge.sources.x import XClient, XSource
            sources.append(XSource(pipeline, XClient(args.x_api_url, tokens["x"], config.stall_timeout),
                                   config.allow.x, args.rule_tag, config.rule_max_length,
                                   XBackoff(args.backoff_scale, healthy_after=config.stall_timeout)))
        elif name == "bluesky":
            from bridge.sources.bluesky import BlueskySource
            sources.append(BlueskySource(pipeline, config.allow.bluesky, args.bluesky_jetstream, args.bluesky_api,
                                         cursors, config.stall_timeout, args.backoff_scale))
        else:
            from bridge.sources.mastodon import MastodonSource
            sources.append(MastodonSource(pipeline, config.allow.mastodon, args.mastodon_url, tokens["mastodon"],
                                          cursors, config.stall_timeout, args.backoff_scale))

    stop = threading.Event()
    done = threading.Event()
    codes: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        done.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    def follow(source: Source) -> None:
        try:
            code = source.run(stop)
        except Exception:
            logging.getLogger(f"bridge.{source.network}").exception("source stopped by an unexpected error")
            code = 1
        codes.append(code)
        done.set()

    publisher.start()
    for source, name in zip(sources, args.source, strict=True):
        threading.Thread(target=follow, args=(source,), name=f"source-{name}", daemon=True).start()
    done.wait()
    signalled = stop.is_set()
    stop.set()
    pipeline.stop()
    cursors.flush()
    code = next((c for c in codes if c), 0)
    log.info("stopping: publishing what is pending")
    end_of_input = not signalled and code == 0
    drained = publisher.drain(args.drain_timeout if end_of_input else STOP_TIMEOUT)
    left = publisher.stop(STOP_TIMEOUT if drained else 0.0)
    seen.close()
    if code == 0 and left and not signalled:
        code = 1  # end of input with commands not yet delivered (they stay on disk for the next run)
    log.info("stopped (exit %d)", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
