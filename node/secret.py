"""Secrets come from the environment: NAME holds the value, or NAME_FILE names a file that holds it.

One way for every secret (the MQTT password, the X bearer token, the Mastodon
access token), so systemd credentials and 0600 files work the same everywhere
and no secret is ever on a command line, in topics.yaml or in a log line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class SecretError(Exception):
    """The secret is set twice or its file cannot be read; the message never holds the secret."""


def secret(name: str, env: Mapping[str, str] = os.environ) -> str | None:
    """NAME, or the content of the file NAME_FILE without its line end; None when neither is set."""
    value, path = env.get(name) or None, env.get(f"{name}_FILE") or None
    if value and path:
        raise SecretError(f"set {name} or {name}_FILE, not both")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(f"{name}_FILE: cannot read {path}: {exc}") from None
    return value or None
