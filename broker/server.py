"""The embedded amqtt broker, run in its own asyncio loop until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from amqtt.broker import Broker

log = logging.getLogger("edison-broker")


def broker_config(bind: str) -> dict:
    # An explicit "plugins" mapping replaces amqtt's defaults (which would allow
    # anonymous sessions without an offline queue, and publish $SYS topics).
    return {
        "listeners": {"default": {"type": "tcp", "bind": bind}},
        "plugins": {"broker.plugins.TrialAuthPlugin": {}},
    }


async def serve(bind: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    broker = Broker(broker_config(bind))
    await broker.start()
    log.info("listening on %s (trial mode: every client is accepted; state is in memory)", bind)
    await stop.wait()
    log.info("shutting down")
    await broker.shutdown()
