"""The boards the node's tests run on: stand-in pin libraries imported for one test, and each backend as a board."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from testkit.standins import PINLIBS
from tests.node.boards import BACKENDS, Board, GpiodBoard, Loader, MraaBoard, SimBoard


@pytest.fixture
def standins(monkeypatch: pytest.MonkeyPatch) -> Iterator[Loader]:
    """Import a stand-in (`mraa`, `gpiod`) in place of any installed module of that name, for this test only:
    what it imported is gone from sys.modules afterwards, and what it displaced is back."""
    monkeypatch.syspath_prepend(str(PINLIBS))

    def load(name: str) -> ModuleType:
        for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            monkeypatch.delitem(sys.modules, loaded)
        return importlib.import_module(name)

    yield load
    for key, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(PINLIBS)):
            del sys.modules[key]


@pytest.fixture
def standin_mraa(standins: Loader) -> Iterator[ModuleType]:
    mraa = standins("mraa")
    mraa.reset()
    yield mraa
    mraa.reset()


@pytest.fixture
def standin_gpiod(standins: Loader) -> Iterator[ModuleType]:
    gpiod = standins("gpiod")
    gpiod._kernel.reset()
    yield gpiod
    gpiod._kernel.reset()


@pytest.fixture(params=BACKENDS)
def board(request: pytest.FixtureRequest, standins: Loader, monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> Iterator[Board]:
    if request.param == "sim":
        yield SimBoard()
    elif request.param == "mraa":
        yield MraaBoard(standins("mraa"))
    else:
        gpiod = standins("gpiod")
        yield GpiodBoard(gpiod, tmp_path, monkeypatch)
        gpiod._kernel.reset()
