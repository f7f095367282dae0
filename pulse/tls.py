"""The TLS context of every TLS client Pulse makes (Kafka's, Redis's), and what a failed
handshake means, in words.

One way for both: the server's certificate and host name are always verified, against the
given CA file only (the system's CAs when there is none), with Python's default protocol
versions and ciphers; a client certificate is presented when given; a file that does not
load is a :class:`SettingsError` naming its variable, and an encrypted private key is refused
at once rather than prompted for.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from pulse.settings import SettingsError


@dataclass(frozen=True)
class TLSFiles:
    """The PEM files of one kind of client and the names of their variables (for messages)."""

    cafile: str
    certfile: str
    keyfile: str
    cafile_variable: str
    certfile_variable: str
    keyfile_variable: str


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """A client context that verifies the server against ``files.cafile`` (the system's CAs
    when empty) and its host name, and presents ``files.certfile`` (with ``files.keyfile``,
    or the key in the certificate file) when set. Raises :class:`SettingsError` naming the
    variable of a file that does not load."""
    cafile = files.cafile or None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except ssl.SSLError as exc:
        raise SettingsError(
            f"{files.cafile_variable}={cafile!r}: no PEM CA certificate could be loaded ({exc})"
        ) from None
    if files.certfile:
        try:
            context.load_cert_chain(
                files.certfile, files.keyfile or None, password=_no_key_password
            )
        except (ssl.SSLError, _EncryptedKey) as exc:
            raise SettingsError(
                f"{files.certfile_variable}={files.certfile!r}, "
                f"{files.keyfile_variable}={files.keyfile!r}: the client "
                f"certificate and its unencrypted PEM private key could not be loaded ({exc})"
            ) from None
    return context


class _EncryptedKey(Exception):
    def __str__(self) -> str:
        return "the private key is encrypted"


def _no_key_password() -> str:
    # Without this callback OpenSSL would prompt on the terminal for an encrypted key's
    # password, which would hang a worker.
    raise _EncryptedKey


def handshake_failure(exc: BaseException, server: str, files: TLSFiles) -> str | None:
    """What a failed TLS handshake with ``server`` (e.g. "broker") means, in words; None
    when ``exc`` is not a TLS error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate verify failed: {exc.verify_message} (the {server}'s certificate "
            f"is not signed by a CA in {files.cafile_variable}, or not for this host)"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "CERTIFICATE_REQUIRED" in reason:  # TLS 1.3's alert for a missing certificate
            return (
                f"TLS handshake failed: {reason} (the {server} requires a client certificate: "
                f"set {files.certfile_variable})"
            )
        return f"TLS handshake failed: {reason}"
    return None
