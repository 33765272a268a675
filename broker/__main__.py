"""edison-broker: command-line entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edison-broker", description="The embedded MQTT broker (amqtt).")
    p.add_argument("--bind", type=_host_port, default="127.0.0.1:1883", help="HOST:PORT (default: %(default)s)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("edison-broker").setLevel(args.log_level)
    try:
        from broker.server import serve
    except ImportError as exc:
        logging.getLogger("edison-broker").error("the broker needs amqtt: pip install 'edison-mqtt[broker]' (%s)", exc)
        return 2
    try:
        asyncio.run(serve(args.bind))
    except OSError as exc:
        logging.getLogger("edison-broker").error("cannot listen on %s: %s", args.bind, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
