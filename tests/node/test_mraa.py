"""The mraa backend against a stand-in with mraa's API, and a node package that imports without mraa or amqtt."""

from __future__ import annotations

import sys

import pytest

from node.pins import PinError
from node.pins.backends import make_factory
from testkit.procs import ROOT


def test_mraa_backend_drives_gpio(standin_mraa):
    factory = make_factory("mraa")
    pin = factory.pin(20)
    pin.write(1)
    pin.write(0)
    assert standin_mraa.writes == [(20, 1), (20, 0)]


def test_mraa_refusing_a_pin_is_a_clear_start_error(standin_mraa):
    with pytest.raises(PinError, match="mraa refused GPIO pin 99: Invalid GPIO pin specified"):
        make_factory("mraa").pin(99)


def test_mraa_write_error_is_raised(standin_mraa, monkeypatch):
    pin = make_factory("mraa").pin(20)
    monkeypatch.setattr(standin_mraa.Gpio, "write", lambda self, v: standin_mraa.ERROR_INVALID_HANDLE)
    with pytest.raises(PinError, match="mraa result 5"):
        pin.write(1)


def test_importing_node_needs_neither_mraa_nor_amqtt():
    import subprocess
    code = ("import sys; sys.modules['mraa'] = None; sys.modules['gpiod'] = None; sys.modules['amqtt'] = None\n"
            "import node, node.__main__, node.service, node.pins.backends, node.config, node.mqtt")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
