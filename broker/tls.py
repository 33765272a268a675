"""The TLS listener's files, checked at start so a mistake names the file instead of `[SSL] PEM lib`."""

from __future__ import annotations

import ssl
from pathlib import Path

_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = b"PRIVATE KEY-----"


def _holds(path: Path, marker: bytes) -> bool:
    return marker in path.read_bytes()


def problem(cert: Path, key: Path, ca: Path | None = None) -> str | None:
    """What is wrong with --tls-cert, --tls-key and --tls-ca, in words that name the file; None when they load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if not _holds(cert, _CERTIFICATE):
            swapped = _holds(cert, _PRIVATE_KEY)
            return f"--tls-cert {cert}: no PEM certificate in it" + (
                " (it holds a private key: are --tls-cert and --tls-key swapped?)" if swapped else "")
        if not _holds(key, _PRIVATE_KEY):
            swapped = _holds(key, _CERTIFICATE)
            return f"--tls-key {key}: no PEM private key in it" + (
                " (it holds a certificate: are --tls-cert and --tls-key swapped?)" if swapped else "")
        if exc.reason == "KEY_VALUES_MISMATCH":
            return f"--tls-key {key} is not the private key of the certificate in --tls-cert {cert}"
        return f"--tls-cert {cert} with --tls-key {key}: {exc.reason or exc}"
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            return f"--tls-ca {ca}: no usable PEM certificate in it ({exc.reason or exc})"
    return None
