import select
from datetime import timedelta


def poll_fd(fd: int, timeout: timedelta | float | None = None) -> bool:
    """Whether `fd` becomes readable within `timeout` seconds (None: wait for ever), as the bindings' poll_fd."""
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)
