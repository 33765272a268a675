"""Broker users: one password file for amqtt (argon2) and a Mosquitto twin beside it.

The password is known only when a user is added, so `add` writes both hashes at
once: amqtt's FileAuthPlugin reads `FILE` (`name:argon2-hash`), and
`mosquitto-config` copies `FILE.mosquitto` (`name:$7$...`, PBKDF2-SHA512 as
Mosquitto 2 expects) so moving to Mosquitto needs no password typed again.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import tempfile
from pathlib import Path

from node.config import NAME_PATTERN

MOSQUITTO_SUFFIX = ".mosquitto"
# mosquitto_passwd's own default; Mosquitto reads the count from each hash.
MOSQUITTO_ITERATIONS = 101


class PasswordFileError(Exception):
    """The password file or a user name cannot be used; the message says why."""


def mosquitto_path(path: Path) -> Path:
    return path.with_name(path.name + MOSQUITTO_SUFFIX)


def check_name(name: str) -> str:
    if not re.match(NAME_PATTERN, name) or len(name) > 64:
        raise PasswordFileError(f"user name {name!r}: use 1-64 letters, digits, '_' or '-'")
    return name


def check_password(password: str) -> str:
    if not password:
        raise PasswordFileError("the password is empty")
    if any(c in password for c in "\r\n\0"):
        raise PasswordFileError("the password contains a line break or NUL")
    return password


def argon2_hash(password: str) -> str:
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    return PasswordHash((Argon2Hasher(),)).hash(password)


def mosquitto_hash(password: str, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def read(path: Path) -> dict[str, str]:
    """name -> hash, in file order; a missing file is an empty one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise PasswordFileError(f"{path}: cannot read: {exc}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not name or not hashed:
            raise PasswordFileError(f"{path}:{number}: expected name:hash")
        users[name] = hashed
    return users


def write(path: Path, users: dict[str, str]) -> None:
    """Replace the file atomically, readable by its owner only."""
    text = "".join(f"{name}:{hashed}\n" for name, hashed in users.items())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add(path: Path, name: str, password: str) -> bool:
    """Add or replace a user in both files; True if the user already existed."""
    check_name(name)
    check_password(password)
    users, twins = read(path), read(mosquitto_path(path))
    existed = name in users
    users[name] = argon2_hash(password)
    twins[name] = mosquitto_hash(password)
    write(mosquitto_path(path), twins)
    write(path, users)
    return existed


def delete(path: Path, name: str) -> None:
    users, twins = read(path), read(mosquitto_path(path))
    if name not in users:
        raise PasswordFileError(f"{path}: no user {name!r}")
    del users[name]
    twins.pop(name, None)
    write(path, users)
    write(mosquitto_path(path), twins)


def names(path: Path) -> list[str]:
    return list(read(path))
