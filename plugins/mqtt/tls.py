"""TLS files for the MQTT connection, checked before use so nothing ever prompts.

OpenSSL asks for an encrypted key's passphrase on the terminal when none is given: under
systemd that blocks start-up while the inverter gets no frames. So a key is looked at first
(PEM "ENCRYPTED"), and every file is loaded here with its name in the error, rather than
letting paho report "[Errno 22] Invalid argument" naming nothing.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path


def key_is_encrypted(path: str) -> bool:
    with open(path, "rb") as file:
        head = file.read(4096)
    return b"ENCRYPTED" in head


def tls_problem(ca_file: str | None, cert_file: str | None, key_file: str | None,
                key_password: str | None) -> str | None:
    """Why these files cannot make a TLS context, naming the file, or None."""
    for label, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if path is None:
            continue
        if not Path(path).is_file():
            return f"{label} {path}: no such file"
        if not os.access(path, os.R_OK):
            return f"{label} {path}: not readable by user id {os.getuid()}"
    try:
        if key_file is not None and key_password is None and key_is_encrypted(key_file):
            return (f"key_file {key_file} is encrypted: give key_password_file (canbridge "
                    "never prompts for a passphrase)")
    except OSError as exc:
        return f"key_file {key_file}: {exc.strerror or exc}"
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            return f"ca_file {ca_file}: not usable CA certificates ({_reason(exc)})"
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file,
                                    password=lambda: (key_password or "").encode())
        except (ssl.SSLError, OSError, ValueError) as exc:
            files = f"cert_file {cert_file}" + (f" / key_file {key_file}" if key_file else "")
            return f"{files}: not a usable certificate and key ({_reason(exc)})"
    return None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason or exc)
