"""Stand-in for the gpiod 2.x Python bindings (libgpiod's bindings/python), for machines without GPIO chips.

The public names, signatures, enums, context managers and errors are the real
package's (tests/node/test_gpiod.py compares them with the installed gpiod); below
them `_kernel` plays the GPIO character device, where the real package has its
C extension. See `_kernel` for how a chip is described and how a test drives a line.
"""

from collections.abc import Iterable

from . import (
    _kernel,
    chip,
    chip_info,
    edge_event,
    exception,
    info_event,
    line,
    line_info,
    line_request,
    line_settings,
    version,
)
from .chip import *  # noqa: F403
from .chip_info import *  # noqa: F403
from .edge_event import *  # noqa: F403
from .exception import *  # noqa: F403
from .info_event import *  # noqa: F403
from .line_info import *  # noqa: F403
from .line_request import *  # noqa: F403
from .line_settings import *  # noqa: F403
from .version import __version__

api_version = "2.3"

__all__ = ["chip", "chip_info", "edge_event", "exception", "info_event", "line", "line_info", "line_request",
           "line_settings", "version"]
__all__ += (chip.__all__ + chip_info.__all__ + edge_event.__all__ + exception.__all__ + info_event.__all__
            + line_info.__all__ + line_request.__all__ + line_settings.__all__)
__all__ += ["__version__", "api_version", "is_gpiochip_device", "request_lines"]


def is_gpiochip_device(path: str) -> bool:
    return _kernel.is_chip(path)


def request_lines(path: str, config: dict[Iterable[int | str] | int | str, LineSettings | None],  # noqa: F405
                  consumer: str | None = None, event_buffer_size: int | None = None,
                  output_values: dict[int | str, line.Value] | None = None) -> LineRequest:  # noqa: F405
    with Chip(path) as chip:  # noqa: F405
        return chip.request_lines(config=config, consumer=consumer, event_buffer_size=event_buffer_size,
                                  output_values=output_values)
