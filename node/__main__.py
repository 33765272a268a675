"""edison-node: command-line entry point."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from node import __version__
from node.config import ConfigError, load
from node.journal import Journal, JournalError, default_directory
from node.mqtt import DEFAULT_BROKER, PROTOCOLS, Credentials, LinkError, LinkSettings, MqttLink, parse_brokers
from node.pins import PinError, PinFactory
from node.pins.backends import BACKENDS, make_factory
from node.pins.gpiod import DEFAULT_CHIP, DEFAULT_PWM_SYSFS
from node.pins.sim import Change

log = logging.getLogger("edison-node")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="edison-node",
        description="Keep an outbound MQTT connection and drive GPIO outputs on command. "
        "Credentials come from MQTT_USERNAME and MQTT_PASSWORD or MQTT_PASSWORD_FILE.",
    )
    p.add_argument("--config", default="topics.yaml", help="the topics.yaml contract (default: %(default)s)")
    p.add_argument("--device", help="device id in the config (default: the only device)")
    p.add_argument("--broker", action="append",
                   help="mqtt://host[:port] or mqtts://host[:port]; repeat it (or separate with commas) for several "
                   "brokers, such as the members of a cluster: the first that answers is used, the next when it "
                   f"fails (default: {DEFAULT_BROKER})")
    p.add_argument("--ca-file", help="CA certificate(s) to trust for mqtts:// (default: the system's)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="auto",
                   help="MQTT version; auto tries 5 and falls back to 3.1.1 (default: %(default)s)")
    p.add_argument("--keepalive", type=int, default=60, help="seconds between pings (default: %(default)s)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds a broker has to accept the connection (CONNACK) before the next is tried "
                   "(default: %(default)s)")
    p.add_argument("--session-expiry", type=int, default=86400,
                   help="MQTT 5: seconds the broker keeps our session and commands while offline "
                   "(default: %(default)s)")
    p.add_argument("--pins", choices=BACKENDS, default="auto",
                   help="pin backend: gpiod (the Linux GPIO character device and kernel PWM), mraa (Edison), "
                   "sim (simulated), auto (mraa if importable, else gpiod if --gpio-chip exists) "
                   "(default: %(default)s)")
    p.add_argument("--gpio-chip", type=Path, default=DEFAULT_CHIP, metavar="PATH",
                   help="with gpiod: the chip of numeric pins; line names are looked up on every gpiochip* beside "
                   "it (default: %(default)s)")
    p.add_argument("--pwm-sysfs", type=Path, default=DEFAULT_PWM_SYSFS, metavar="DIR",
                   help="with gpiod: where the kernel's PWM chips are (default: %(default)s)")
    p.add_argument("--trace", type=argparse.FileType("a", encoding="utf-8"),
                   help="with simulated pins: append one JSON line per level change to this file")
    p.add_argument("--sim-inputs", type=Path, metavar="FILE",
                   help='with simulated pins: set inputs from JSON lines {"pin": 36, "value": 0} appended to FILE '
                   "(a regular file, created if missing, or a FIFO)")
    p.add_argument("--state", type=Path,
                   help="directory for the ids of commands carried out, so a repeat is never carried out twice "
                   "(default: $STATE_DIRECTORY under systemd, else ~/.local/state/edison-node/DEVICE)")
    p.add_argument("--forget", action="store_true",
                   help="remove the device's entities from Home Assistant (empty retained discovery configs) and exit")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p.parse_args(argv)


def _terminal_printer(names: dict[int | str, str], out: TextIO) -> Callable[[Change], None]:
    """Show simulated pins as they change: the laptop stand-in for a real LED and button."""

    def show(change: Change) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(change.t)) + f".{int(change.t % 1 * 1000):03d}"
        lamp = "● high" if change.value else "○ low "
        if change.duty is not None:
            lamp = f"◐ {change.duty:4.0%}" if 0 < change.duty < 1 else lamp
        cause = f"  (command {change.id})" if change.id else ""
        print(f"{stamp}  {names.get(change.pin, '?')} (pin {change.pin})  {lamp}{cause}", file=out, flush=True)

    return show


def _open_sim_inputs(path: Path | None) -> int | None:
    """Open --sim-inputs before the node connects, so nothing written once it is online is missed."""
    if path is None:
        return None
    from node.pins.sim import open_inputs

    return open_inputs(path)


def _follow_sim_inputs(path: Path | None, fd: int | None, pins: PinFactory) -> None:
    if path is None or fd is None:
        return
    from node.pins.sim import SimFactory, follow

    assert isinstance(pins, SimFactory)
    follow(fd, pins, str(path))
    log.info("simulated inputs: reading JSON lines from %s", path)


def _release(pins: PinFactory) -> None:
    """Give back the lines requested and the PWM channels exported."""
    try:
        pins.close()
    except PinError as exc:
        log.error("%s", exc)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("node").setLevel(args.log_level)
    try:
        config = load(args.config)
        if args.device is None and len(config.devices) != 1:
            raise ConfigError(f"{args.config} has several devices: choose one with --device")
        device_id = args.device or next(iter(config.devices))
        device = config.device(device_id)
        topics = config.topics(device_id)
        settings = LinkSettings(
            parse_brokers(args.broker),
            Credentials.from_env(),
            protocol=args.protocol,
            ca_file=args.ca_file,
            keepalive=args.keepalive,
            session_expiry=args.session_expiry,
            connect_timeout=args.connect_timeout,
        )
        if args.forget:
            from node.service import forget

            return 0 if forget(topics, device, MqttLink(settings, f"{device_id}-forget", persistent=False)) else 1
        if (args.trace or args.sim_inputs) and args.pins != "sim":
            raise PinError("--trace and --sim-inputs are for simulated pins: use them with --pins sim")
        names = {out.pin: out.name or name for name, out in device.outputs.items()}
        names.update({inp.pin: inp.name or name for name, inp in device.inputs.items()})
        listeners = [] if args.trace else [_terminal_printer(names, sys.stdout)]
        pins = make_factory(args.pins, args.gpio_chip, args.pwm_sysfs, trace=args.trace, listeners=listeners)
    except (ConfigError, LinkError, PinError) as exc:
        log.error("%s", exc)
        return 2
    try:
        sim_inputs = _open_sim_inputs(args.sim_inputs)
        journal = Journal(args.state or default_directory(device_id))
        from node.service import Node  # after validation: keeps a bad start fast

        node = Node(topics, device, pins, MqttLink(settings, device_id), journal)
    except (LinkError, PinError, JournalError) as exc:
        log.error("%s", exc)
        _release(pins)
        return 2

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, f: stop.set())
    log.info("%d command id(s) remembered in %s", len(journal), journal.path)
    node.start()
    _follow_sim_inputs(args.sim_inputs, sim_inputs, pins)
    stop.wait()
    log.info("stopping: outputs to their safe state, publishing offline")
    node.stop()
    _release(pins)
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
