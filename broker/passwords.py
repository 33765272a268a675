"""Broker users: one password file for the embedded broker (argon2) and a twin beside it for Mosquitto.

The password is known only when a user is added, so `add` writes both hashes at
once: the embedded broker and the NATS cluster's auth callout read `FILE`
(`name:argon2-hash`), `mosquitto-config` copies `FILE.mosquitto` (`name:$7$...`,
PBKDF2-SHA512 as Mosquitto 2 expects), so moving to Mosquitto or a NATS cluster
needs no password typed again.
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

# mosquitto_passwd's own default; Mosquitto reads the count from each hash.
MOSQUITTO_ITERATIONS = 101
# The cost of NATS's own `nats server passwd`, for the one password nats-server checks itself (the callouts').
BCRYPT_COST = 11


class PasswordFileError(Exception):
    """The password file or a user name cannot be used; the message says why."""


def twin_path(path: Path, kind: str) -> Path:
    """The file beside `path` with the hashes for `kind` ("mosquitto")."""
    return path.with_name(f"{path.name}.{kind}")


def twin(path: Path, kind: str) -> dict[str, str]:
    """The users of `path` with their hashes for `kind`; refused, naming them, if some have none."""
    hashes = read(twin_path(path, kind))
    missing = sorted(set(read(path)) - set(hashes))
    if missing:
        raise PasswordFileError(
            f"no {TWIN_LABELS[kind]} hash for {', '.join(missing)} in {twin_path(path, kind)} (added before this "
            "export existed): set their passwords again with `edison-broker passwd add`")
    return hashes


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


def bcrypt_hash(password: str, cost: int = BCRYPT_COST) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(cost)).decode("ascii")


TWINS = {"mosquitto": mosquitto_hash}
TWIN_LABELS = {"mosquitto": "Mosquitto"}


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
    write_private(path, "".join(f"{name}:{hashed}\n" for name, hashed in users.items()))


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, readable by its owner only (it holds hashes or secrets)."""
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
    users = read(path)
    existed = name in users
    for kind, make_hash in TWINS.items():
        twins = read(twin_path(path, kind))
        twins[name] = make_hash(password)
        write(twin_path(path, kind), twins)
    users[name] = argon2_hash(password)
    write(path, users)
    return existed


def delete(path: Path, name: str) -> None:
    users = read(path)
    if name not in users:
        raise PasswordFileError(f"{path}: no user {name!r}")
    del users[name]
    write(path, users)
    for kind in TWINS:
        twins = read(twin_path(path, kind))
        if twins.pop(name, None) is not None:
            write(twin_path(path, kind), twins)


def names(path: Path) -> list[str]:
    return list(read(path))
