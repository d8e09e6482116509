"""The server's port: plaintext, TLS, or mutual TLS, with certificates reloaded from disk.

`bind` adds the port. With GUESTFEED_TLS_CERT/_KEY it uses
`grpc.dynamic_ssl_server_credentials`: gRPC's core calls our fetcher
(`CertificateReloader`) before every TLS handshake, on one of its own threads
(never the asyncio loop's) and under a lock of its own per port. The fetcher
stats the files and re-reads them only when one changed, so a certificate that
cert-manager rotates in place is served from the next new connection on,
without a restart; connections already open keep the certificate they
negotiated.

Client certificates: gRPC Python maps `require_client_authentication=False` to
GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE (the server never asks for one) and
True to GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY; the
"request but do not require" modes of the core are not exposed
(grpc/_cython/_cygrpc/credentials.pyx.pxi, grpcio 1.85). So a client CA means
every connection must present a certificate that CA signed.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..settings import Settings, StartupError, TlsSettings
from ..settings.tls import CERT, CLIENT_CA, KEY

log = logging.getLogger(__name__)

# Where a client certificate's identity is read from, in order (the keys
# gRPC's core fills from a verified peer certificate): the first URI SAN
# (a SPIFFE id), else the first DNS SAN, else the subject's common name.
# `x509_subject_alternative_name` is not used: it mixes every SAN type.
_IDENTITY_KEYS = ("peer_uri", "peer_dns", "x509_common_name")

# One file's identity on disk: a rename over it (a new inode), a rewrite (a new
# mtime or size) or its absence all count as a change. Following symlinks, as
# Kubernetes' secret volumes swap a `..data` link to publish new files.
_Stat = tuple[int, int, int, int] | str


def bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Adds GUESTFEED_LISTEN to `server`, with TLS when GUESTFEED_TLS_CERT is set.

    Returns:
        The bound port (the one the OS chose, for port 0).

    Raises:
        StartupError: a TLS file cannot be used (the message names its
            variable), or the address cannot be bound.
    """
    credentials = None
    if settings.tls.enabled:
        reloader = CertificateReloader(settings.tls)
        credentials = grpc.dynamic_ssl_server_credentials(
            reloader.initial,
            # grpc-stubs says the fetcher never returns None; grpc documents
            # None as "unchanged", and the core depends on it (RELOAD_UNCHANGED).
            reloader,  # type: ignore[arg-type]
            require_client_authentication=settings.tls.mutual,
        )
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError:
        port = 0  # grpcio raises where older releases returned 0
    if port == 0:
        raise StartupError(
            f"GUESTFEED_LISTEN: cannot listen on {settings.listen} (in use, or not this host's)"
        )
    return port


def client_identity(context: Any) -> str | None:
    """The calling service named by its verified client certificate, or None.

    The first URI SAN (e.g. spiffe://cluster/ns/app/sa/caller), else the first
    DNS SAN, else the subject CN. Only a certificate that the client CA
    verified reaches here: without mutual TLS there is none.
    """
    # Not `context.peer_identities()`: on the grpc.aio server (grpcio 1.85)
    # calling it corrupts the interpreter's memory (random segfaults, pytest's
    # log capture stream turning into a Future); `auth_context()` carries the
    # same properties and does not. Called only under mutual TLS (the
    # interceptor's `identify_clients`), so plaintext calls pay nothing.
    properties = context.auth_context()
    for key in _IDENTITY_KEYS:
        values = properties.get(key)
        if values:
            return bytes(values[0]).decode("utf-8", "replace")
    return None


@dataclass(frozen=True)
class _Loaded:
    config: grpc.ServerCertificateConfiguration
    leaf: x509.Certificate


class CertificateReloader:
    """gRPC's certificate fetcher: a new configuration when the files changed, else None.

    It never raises: grpc logs a fetcher's exception at ERROR with its
    traceback on every handshake. Files that cannot be used (half written,
    a key that does not match yet) keep the previous certificate serving, with
    one warning per change on disk.
    """

    def __init__(self, tls: TlsSettings) -> None:
        """Reads the files once.

        Raises:
            StartupError: a file is missing, unreadable, not PEM, or the key
                does not match the certificate; the message names the variable.
        """
        assert tls.cert is not None and tls.key is not None
        self._tls = tls
        self._paths = tuple(p for p in (tls.cert, tls.key, tls.client_ca) if p is not None)
        self._lock = threading.Lock()
        self._seen = self._stat()
        loaded = _load(tls)
        self.initial = loaded.config
        self._serial = loaded.leaf.serial_number
        log.info(
            "serving TLS%s with the certificate from %s (%s)",
            " (client certificates required)" if tls.client_ca is not None else "",
            CERT,
            _describe(loaded.leaf),
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            with self._lock:
                now = self._stat()
                if now == self._seen:
                    return None
                # Recorded before reading: a file that changes while we read
                # it is a change again at the next handshake.
                self._seen = now
                try:
                    loaded = _load(self._tls)
                except StartupError as exc:
                    log.warning(
                        "TLS files changed but cannot be used: %s; still serving the "
                        "previous certificate (serial %x)",
                        exc,
                        self._serial,
                    )
                    return None
                self._serial = loaded.leaf.serial_number
            log.info("reloaded the TLS certificate from %s (%s)", CERT, _describe(loaded.leaf))
            return loaded.config
        except Exception as exc:  # never raised to grpc: see the class docstring
            log.warning("TLS certificate reload failed (%s: %s)", type(exc).__name__, exc)
            return None

    def _stat(self) -> tuple[_Stat, ...]:
        return tuple(_stat(p) for p in self._paths)


def _stat(path: Path) -> _Stat:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{type(exc).__name__}:{exc.errno}"
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _read(variable: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None


def _load(tls: TlsSettings) -> _Loaded:
    """Reads and checks the files; the checks are the ones gRPC's core would fail on
    later, with a log line of its own and no variable named."""
    assert tls.cert is not None and tls.key is not None
    chain = _read(CERT, tls.cert)
    key_pem = _read(KEY, tls.key)
    client_ca = _read(CLIENT_CA, tls.client_ca) if tls.client_ca is not None else None
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except ValueError:
        raise StartupError(f"{CERT}: {tls.cert} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):  # TypeError: the key is encrypted
        raise StartupError(f"{KEY}: {tls.key} holds no unencrypted PEM private key") from None
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise StartupError(f"{KEY}: the key in {tls.key} does not match the certificate in {CERT}")
    if client_ca is not None:
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise StartupError(
                f"{CLIENT_CA}: {tls.client_ca} holds no PEM CA certificate"
            ) from None
    now = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        # Served anyway: refusing to start would turn a late renewal into an
        # outage of every replica, and clients name the cause when they refuse.
        log.warning("%s: the certificate is not valid now (%s)", CERT, _describe(leaf))
    config = grpc.ssl_server_certificate_configuration([(key_pem, chain)], client_ca)
    return _Loaded(config, leaf)


def _spki(public_key: Any) -> bytes:
    data: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def _describe(leaf: x509.Certificate) -> str:
    return (
        f"serial {leaf.serial_number:x}, valid {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to "
        f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )
