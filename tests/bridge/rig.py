"""The bridge under test: its process, one MQTT 5 broker and a listener, and the local stand-ins of each network."""

from __future__ import annotations

import re
from pathlib import Path

from testkit.mqtt import Probe
from testkit.node import DEVICE, TOPICS_YAML
from testkit.procs import Proc, python_cmd, stop_gracefully
from testkit.standins.jetstream import HandleResolver, JetstreamServer
from testkit.standins.mastodon import MastodonServer

SET_TOPIC = f"edison/{DEVICE}/led/set"
SCALE = 0.01  # reconnect delays, scaled down so the real schedules run in seconds
STALL_TIMEOUT = 2.0
KYONE_DID, STRANGER_DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz", "did:plc:z72i7hdynmk6r22z27h6tvur"
KYONE_HANDLE = "kyone.bsky.social"
X_ALLOWED, X_STRANGER = "1001", "666"
# A Mastodon status that mentions the bot first, as its HTML comes from the API.
MASTODON_MENTION = ('<p><span class="h-card" translate="no"><a href="https://mastodon.social/@bot" '
                    'class="u-url mention">@<span>bot</span></a></span> L Chika</p>')
MASTODON_ACCOUNTS = {"kyone": "201", "friend@other.example": "202", "stranger": "203"}
NETWORKS_YAML = TOPICS_YAML + f"""\
bridge:
  allow:
    x: [k_yone]
    bluesky: [{KYONE_HANDLE}]
    mastodon: [kyone]
  triggers:
    - {{phrase: L Chika, device: {DEVICE}, output: led, command: BLINK}}
  stall_timeout: {STALL_TIMEOUT}
"""


class BridgeRunner:
    """Starts edison-bridge processes on one config and one --state, and stops them at the end."""

    def __init__(self, tmp_path: Path, config_text: str, args: list[str], env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.config = tmp_path / "bridge.yaml"
        self.config.write_text(config_text)
        self.state = tmp_path / "state"
        self.args = args
        self.env = env
        self.procs: list[Proc] = []

    def start(self, broker_url: str, *extra: str, env: dict[str, str] | None = None) -> Proc:
        argv = python_cmd("bridge", "--config", str(self.config), "--broker", broker_url, "--state", str(self.state),
                          "--backoff-scale", str(SCALE), *self.args, *extra)
        proc = Proc(argv, self.tmp_path / f"bridge-{len(self.procs)}.log",
                    env={"MQTT_USERNAME": "bridge", **self.env, **(env or {})})
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        stop_gracefully(self.procs)


def set_ids(probe: Probe) -> list[str]:
    """The ids of every command seen on the LED's /set topic, in order."""
    return [m.json()["id"] for m in probe.seen if m.topic == SET_TOPIC]


def delays(proc: Proc, logger: str = "") -> list[float]:
    """The reconnect delays a bridge logged (of one network's logger, e.g. `bridge.bluesky`)."""
    return [float(m) for m in re.findall(rf"{re.escape(logger)}.*reconnecting in ([0-9.e-]+) s", proc.output)]


def bluesky_args(jetstream: JetstreamServer, resolver: HandleResolver) -> list[str]:
    return ["--source", "bluesky", "--bluesky-jetstream", jetstream.url, "--bluesky-api", resolver.url]


def mastodon_args(mastodon: MastodonServer) -> list[str]:
    return ["--source", "mastodon", "--mastodon-url", mastodon.url]
