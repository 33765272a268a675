"""The gpiod backend: the stand-in bindings against the real package, lines by offset and by name, refusals,
inputs with the kernel's timestamps, kernel PWM, and how `--pins auto` chooses."""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import inspect
import os
import select
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import node.pins.sysfs_pwm
from node.config import InputConfig, parse
from node.inputs import InputWatcher
from node.pins import PinError, PwmChannel
from node.pins.backends import choose, make_factory
from node.pins.gpiod import CONSUMER, GpiodFactory
from testkit.procs import TIMEOUT, python_cmd
from testkit.standins import PI5_LINES, PINLIBS
from testkit.standins.sysfs_pwm import PwmTree

# -- the stand-in against the real bindings -------------------------------------------


def _real_gpiod() -> ModuleType:
    """The installed gpiod (the test extra installs it)."""
    gpiod = importlib.import_module("gpiod")
    assert "standins" not in str(gpiod.__file__), gpiod
    return gpiod


def _load_standin_as(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, PINLIBS / "gpiod" / "__init__.py",
                                                  submodule_search_locations=[str(PINLIBS / "gpiod")])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _parameters(function: Any) -> list[tuple[str, str, str]]:
    return [(p.name, p.kind.name, repr(p.default)) for p in inspect.signature(function).parameters.values()]


def _shape(value: Any, seen: str) -> Any:
    """What a caller of `value` can rely on: kinds, names, parameters, fields, enum members."""
    if inspect.ismodule(value):
        return ("module", sorted(getattr(value, "__all__", [])))
    if inspect.isclass(value) and issubclass(value, enum.Enum):
        return ("enum", [(m.name, m.value) for m in value])
    if inspect.isclass(value):
        members: dict[str, Any] = {}
        for name, member in vars(value).items():
            if name.startswith("_") and name not in ("__init__", "__enter__", "__exit__", "__bool__"):
                continue
            if isinstance(member, property):
                members[name] = "property"
            elif inspect.isfunction(member):
                members[name] = _parameters(member)
            elif inspect.isclass(member):
                members[name] = _shape(member, f"{seen}.{name}")
        fields = [(f.name, repr(f.default)) for f in dataclasses.fields(value)] if dataclasses.is_dataclass(
            value) else []
        return ("class", [b.__name__ for b in value.__mro__[1:]], members, fields)
    if inspect.isfunction(value):
        return ("function", _parameters(value))
    return ("value", type(value).__name__)


def test_the_standin_has_the_real_bindings_public_names_signatures_and_enums():
    real = _real_gpiod()
    standin = _load_standin_as("gpiod_standin")
    try:
        assert sorted(standin.__all__) == sorted(real.__all__)
        for name in real.__all__:
            assert _shape(getattr(standin, name), name) == _shape(getattr(real, name), name), name
        for enums in ("Value", "Direction", "Bias", "Drive", "Edge", "Clock"):
            assert _shape(getattr(standin.line, enums), enums) == _shape(getattr(real.line, enums), enums), enums
    finally:
        for loaded in [m for m in sys.modules if m.split(".")[0] == "gpiod_standin"]:
            del sys.modules[loaded]


def test_the_shape_comparison_sees_a_changed_signature():
    real = _real_gpiod()

    class Renamed(real.Chip):  # type: ignore[name-defined]
        def get_line_info(self, offset: int | str) -> Any:  # the real parameter is `line`
            return None

    Renamed.__name__ = "Chip"
    assert _shape(Renamed, "Chip")[2]["get_line_info"] != _shape(real.Chip, "Chip")[2]["get_line_info"]


# -- lines by offset and by name ------------------------------------------------------------


@pytest.fixture
def chips(standin_gpiod: ModuleType, tmp_path: Path) -> Path:
    """/dev as on a Raspberry Pi 5: gpiochip0 the header, gpiochip10 another controller with lines of its own."""
    dev = tmp_path / "dev"
    dev.mkdir()
    standin_gpiod._kernel.make_chip(dev / "gpiochip0", "pinctrl-rp1", PI5_LINES)
    standin_gpiod._kernel.make_chip(dev / "gpiochip10", "gpio-brcmstb@107d508500", ["RP1_SDA", "RP1_SCL", "PWR_GPIO"])
    (dev / "gpiochip-notes.txt").write_text("not a chip")
    return dev / "gpiochip0"


def info(gpiod: ModuleType, chip: Path, offset: int) -> Any:
    with gpiod.Chip(str(chip)) as handle:
        return handle.get_line_info(offset)


def test_outputs_are_requested_once_as_edison_node_at_their_inactive_level(standin_gpiod, chips):
    factory = GpiodFactory(chips)
    led, relay = factory.pin(17), factory.pin("GPIO22", active_low=True)
    assert (info(standin_gpiod, chips, 17).consumer, info(standin_gpiod, chips, 17).direction.name) == (
        CONSUMER, "OUTPUT")
    assert info(standin_gpiod, chips, 22).active_low and standin_gpiod._kernel.level(chips, 22) == 1  # off: high
    led.write(1)
    relay.write(0)  # the node speaks electrical levels: low is the active-low relay's ON
    assert standin_gpiod._kernel.level(chips, 17) == 1 and standin_gpiod._kernel.level(chips, 22) == 0
    factory.close()
    assert not info(standin_gpiod, chips, 17).used and not info(standin_gpiod, chips, 22).used


def test_a_line_name_is_looked_up_on_every_chip_beside_the_given_one(standin_gpiod, chips):
    factory = GpiodFactory(chips)
    factory.pin("PWR_GPIO")
    assert info(standin_gpiod, chips.parent / "gpiochip10", 2).consumer == CONSUMER
    factory.close()


@pytest.mark.parametrize("pin, error", [
    ("GPIO99", r"pin 'GPIO99': no line of that name on .*gpiochip0, .*gpiochip10 \(gpioinfo lists the names\)"),
    (54, r"pin 54: .*gpiochip0 has lines 0 to 53"),
])
def test_unknown_lines_are_refused_by_name_and_number(standin_gpiod, chips, pin, error):
    with pytest.raises(PinError, match=error):
        GpiodFactory(chips).pin(pin)


def test_a_name_on_several_lines_is_refused(standin_gpiod, chips):
    standin_gpiod._kernel.make_chip(chips.parent / "gpiochip11", "second", ["GPIO17"])
    with pytest.raises(PinError, match=r"several lines have that name \(line 17 of .*gpiochip0, line 0 of "
                                       r".*gpiochip11\): use the offset and --gpio-chip"):
        GpiodFactory(chips).pin("GPIO17")


def test_a_line_another_program_holds_is_refused_naming_the_holder(standin_gpiod, chips):
    other = standin_gpiod.request_lines(str(chips), consumer="lgpio", config={17: None})
    with pytest.raises(PinError, match=r"pin 'GPIO17' \(line 17 of .*\): the line is held by 'lgpio'"):
        GpiodFactory(chips).input("GPIO17", "up")
    other.release()


def test_one_line_by_number_and_by_name_is_refused_the_second_time(standin_gpiod, chips):
    factory = GpiodFactory(chips)
    factory.pin(17)
    with pytest.raises(PinError, match=r"pin 'GPIO17' \(line 17 of .*\) is already used by pin 17"):
        factory.input("GPIO17", "up")
    factory.close()


def test_a_path_that_is_no_chip_is_refused(standin_gpiod, tmp_path):
    with pytest.raises(PinError, match=r"--gpio-chip .*nothing: not a GPIO chip \(gpiodetect lists them\)"):
        GpiodFactory(tmp_path / "nothing")


def test_the_older_1_x_bindings_are_refused_clearly(monkeypatch, tmp_path):
    older = ModuleType("gpiod")  # 1.x had gpiod.chip and gpiod.line_request, no request_lines
    older.chip = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gpiod", older)
    with pytest.raises(PinError, match=r"needs gpiod 2.1 or newer; .* is the older 1.x API"):
        GpiodFactory(tmp_path / "gpiochip0")


# -- inputs ----------------------------------------------------------------------------


def test_an_input_has_its_bias_both_edges_and_the_kernels_debounce(standin_gpiod, chips):
    factory = GpiodFactory(chips)
    factory.input("GPIO27", "up", active_low=True, debounce=0.05)
    factory.input(5, "down")
    factory.input(6, "none")
    line = info(standin_gpiod, chips, 27)
    assert (line.direction.name, line.edge_detection.name, line.bias.name, line.active_low) == (
        "INPUT", "BOTH", "PULL_UP", True)
    assert line.debounced and line.debounce_period == timedelta(milliseconds=50)
    assert info(standin_gpiod, chips, 5).bias.name == "PULL_DOWN" and info(standin_gpiod, chips, 6).bias.name == (
        "DISABLED")
    factory.close()


def test_edges_come_from_the_requests_descriptor_with_the_time_the_level_changed(standin_gpiod, chips):
    factory = GpiodFactory(chips)
    button = factory.input("GPIO27", "up", active_low=True, debounce=0.02)
    assert button.read() == 1  # pulled up: the electrical level, whatever the polarity
    fd = button.fileno()
    assert select.select([fd], [], [], 0)[0] == []
    pressed = time.monotonic()
    standin_gpiod._kernel.drive(chips, 27, 0)
    assert select.select([fd], [], [], TIMEOUT)[0] == [fd]  # once the level has held for the debounce
    [(level, t)] = button.edges()
    assert level == 0 and button.read() == 0
    assert pressed - 0.005 <= t <= time.monotonic() - 0.02 + 0.005  # when it went low, not when it was reported
    factory.close()


# -- kernel PWM ---------------------------------------------------------------------------


@pytest.fixture
def pwm(monkeypatch, tmp_path) -> PwmTree:
    tree = PwmTree(tmp_path / "pwm", {0: 2, 2: 4})
    monkeypatch.setattr(node.pins.sysfs_pwm, "open", tree.open, raising=False)
    return tree


def test_a_pwm_channel_is_exported_set_period_first_and_unexported_at_close(standin_gpiod, chips, pwm):
    factory = GpiodFactory(chips, pwm.root)
    dimmer = factory.pwm(18, 0.001, PwmChannel(2, 1))
    assert pwm.channels[2, 1] == pwm.channels[2, 1].__class__(period=1_000_000, duty_cycle=0, enable=1)
    dimmer.write(0.25)
    dimmer.write(1.0)
    assert pwm.duties(2, 1) == [0.0, 0.25, 1.0]
    assert not info(standin_gpiod, chips, 18).used  # the header pin is the PWM's: not requested as a GPIO
    factory.close()
    assert (2, 1) not in pwm.channels and not (pwm.root / "pwmchip2" / "pwm1").exists()


def test_a_channel_exported_before_keeps_its_export_and_a_shorter_period_is_set_after_the_duty(standin_gpiod, chips,
                                                                                            pwm):
    pwm.store(("pwmchip0", "export"), "0")
    for name, value in (("period", 20_000_000), ("duty_cycle", 15_000_000), ("enable", 1)):
        pwm.store(("pwmchip0", "pwm0", name), str(value))
    factory = GpiodFactory(chips, pwm.root)
    factory.pwm("GPIO12", 0.001, PwmChannel(0, 0)).write(0.5)
    assert pwm.channels[0, 0].period == 1_000_000 and pwm.channels[0, 0].duty_cycle == 500_000
    factory.close()
    assert (0, 0) in pwm.channels  # someone else's export stays


@pytest.mark.parametrize("channel, error", [
    (None, r"names its kernel PWM channel \(pwm_chip and pwm_channel in topics.yaml"),
    (PwmChannel(1, 0), r"no PWM chip .*pwmchip1 \(is the PWM enabled in the device tree\? .*dtoverlay=pwm-2chan"),
    (PwmChannel(0, 2), r"pwmchip0 has 2 channel\(s\): pwm_channel 2 is not one of them"),
])
def test_pwm_channels_that_cannot_be_used_are_refused(standin_gpiod, chips, pwm, channel, error):
    with pytest.raises(PinError, match=error):
        GpiodFactory(chips, pwm.root).pwm(18, 0.001, channel)


def test_the_kernel_stand_in_refuses_what_the_kernel_refuses(pwm):
    def write(name: str, value: str) -> None:
        with node.pins.sysfs_pwm.open(pwm.root / "pwmchip0" / name, "w") as attribute:  # type: ignore[attr-defined]
            attribute.write(value)

    write("export", "1")
    for name, value in (("pwm1/duty_cycle", "10"), ("pwm1/enable", "1"), ("pwm1/period", "fast")):
        with pytest.raises(OSError, match="Invalid argument"):
            write(name, value)
    write("pwm1/period", "100")
    with pytest.raises(OSError, match="Invalid argument"):
        write("pwm1/duty_cycle", "101")
    with pytest.raises(OSError, match="Device or resource busy"):
        write("export", "1")
    with pytest.raises(OSError, match="No such device"):
        write("export", "2")


@pytest.mark.parametrize("backend", ["sim", "mraa"])
def test_mraa_and_sim_refuse_line_names_and_pwm_channels(standins, backend):
    standins("mraa")
    factory = make_factory(backend)
    with pytest.raises(PinError, match=rf"pin 'GPIO17' is a line name: --pins {backend} knows pins by number"):
        factory.pin("GPIO17")
    with pytest.raises(PinError, match="pwm_chip and pwm_channel are for --pins gpiod"):
        factory.pwm(18, 0.001, PwmChannel(0, 0))


# -- choosing and starting -----------------------------------------------------------------


def test_auto_takes_mraa_then_gpiod_then_stops_naming_sim(monkeypatch, standins, standin_gpiod, chips, tmp_path):
    monkeypatch.setitem(sys.modules, "mraa", None)  # not importable
    assert choose(chips) == "gpiod"
    with pytest.raises(PinError, match=r"--pins auto found neither mraa nor a GPIO chip at .*: .*--pins sim"):
        choose(tmp_path / "gpiochip7")
    standins("mraa")
    assert choose(tmp_path / "gpiochip7") == "mraa"


def test_a_pin_the_board_lacks_stops_the_node_with_the_key_path(tmp_path, chips):
    cfg = tmp_path / "topics.yaml"
    cfg.write_text("devices:\n  pi:\n    outputs:\n      led: {pin: GPIO17}\n"
                   "    inputs:\n      button: {pin: GPIO99}\n")
    run = subprocess.run(python_cmd("node", "--config", str(cfg), "--pins", "gpiod", "--gpio-chip", str(chips),
                                    "--state", str(tmp_path / "s")),
                         capture_output=True, text=True, timeout=TIMEOUT,
                         env={**os.environ, "PYTHONPATH": str(PINLIBS)})
    assert run.returncode == 2
    assert "devices.pi.inputs.button: pin 'GPIO99': no line of that name" in run.stderr


@pytest.mark.parametrize("entry, error", [
    ("{pin: 18, pwm_chip: 0, pwm_channel: 1}", "led.pwm_chip: applies only with pwm: true"),
    ("{pin: 18, pwm: true, pwm_chip: 0}", "led.pwm_channel: missing: pwm_chip and pwm_channel go together"),
    ("{pin: 18, pwm: true, pwm_channel: -1}", "led.pwm_channel: expected at least 0"),
    ("{pin: '   '}", "led.pin: expected a pin number or a line name of at most 64 printable characters"),
])
def test_pwm_channels_and_line_names_in_topics_yaml_are_checked_with_the_key_path(entry, error):
    with pytest.raises(Exception, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse(f"devices:\n  pi:\n    outputs:\n      led: {entry}\n")


def test_a_line_name_and_a_number_are_each_a_pin_in_topics_yaml():
    device = parse("devices:\n  pi:\n    outputs:\n      led: {pin: GPIO17}\n      dim: {pin: 18, pwm: true, "
                   "pwm_chip: 0, pwm_channel: 2}\n    inputs:\n      b: {pin: GPIO27}\n").device("pi")
    assert device.outputs["led"].pin == "GPIO17" and device.inputs["b"].pin == "GPIO27"
    assert (device.outputs["dim"].pwm_chip, device.outputs["dim"].pwm_channel) == (0, 2)


def test_a_request_whose_edges_cannot_be_read_is_polled_instead(standin_gpiod, chips, monkeypatch, caplog):
    factory = GpiodFactory(chips)
    config = InputConfig(pin="GPIO27", debounce=0.01)
    heard: list[str] = []
    changed = threading.Event()

    def on_state(item: Any) -> None:
        heard.append(item.state)
        changed.set()

    watcher = InputWatcher({"button": (config, factory.input("GPIO27", "up", True, 0.01))}, on_state=on_state,
                           on_event=lambda item, event: None, poll_interval=0.01)
    watcher.start()
    try:
        def broken(self: Any, max_events: int | None) -> Any:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(standin_gpiod._kernel.SimRequest, "read_events", broken)
        standin_gpiod._kernel.drive(chips, 27, 0)
        assert changed.wait(TIMEOUT) and heard == ["ON"]  # read by polling once the descriptor failed
        assert "could not read the edges of pin 'GPIO27'" in caplog.text and "reading it every 0.01 s" in caplog.text
    finally:
        watcher.stop()
        factory.close()


def test_a_channel_that_cannot_be_set_up_is_given_back(standin_gpiod, chips, pwm, monkeypatch):
    refuse = pwm.store

    def store(parts: tuple[str, ...], text: str) -> None:
        if parts[-1] == "period":  # a period the driver cannot make
            raise OSError(22, "Invalid argument", str(pwm.root.joinpath(*parts)))
        refuse(parts, text)

    monkeypatch.setattr(pwm, "store", store)
    with pytest.raises(PinError, match=r"pwmchip2/pwm0: Invalid argument \(.*period\)"):
        GpiodFactory(chips, pwm.root).pwm(18, 0.001, PwmChannel(2, 0))
    assert (2, 0) not in pwm.channels
