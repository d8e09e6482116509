"""Transport security settings: the server's certificate, mutual TLS, the CLI's trust.

Only paths are read here. The files themselves are read when the server binds
its port (`api/tls.py`), and again whenever they change on disk, so a missing
or mismatched file is a start-up error there, named by its variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .values import ConfigError

CERT = "GUESTFEED_TLS_CERT"
KEY = "GUESTFEED_TLS_KEY"
CLIENT_CA = "GUESTFEED_TLS_CLIENT_CA"
CA = "GUESTFEED_TLS_CA"
CLIENT_CERT = "GUESTFEED_TLS_CLIENT_CERT"
CLIENT_KEY = "GUESTFEED_TLS_CLIENT_KEY"
SERVER_NAME = "GUESTFEED_TLS_SERVER_NAME"


def _text(env: Mapping[str, str], name: str) -> str | None:
    return (env.get(name) or "").strip() or None


def _path(env: Mapping[str, str], name: str) -> Path | None:
    # Not resolved: cert-manager swaps a symlink under the mounted folder, and
    # the reloader must follow whatever the name points at now.
    text = _text(env, name)
    return None if text is None else Path(text).expanduser()


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The server's TLS (cert, key, client_ca) and the CLI's (ca, client_cert, client_key).

    Both sides live here because one environment often serves both: the
    `guestfeed rollout` CLI run next to a TLS server must speak TLS to it.
    """

    # GUESTFEED_TLS_CERT / _KEY: the server's PEM chain and key (None: plaintext).
    cert: Path | None = None
    key: Path | None = None
    # GUESTFEED_TLS_CLIENT_CA: with it every connection must present a client
    # certificate signed by one of these CAs (gRPC Python cannot ask optionally).
    client_ca: Path | None = None
    # GUESTFEED_TLS_CA: the CLI's trust for the server (None: the system roots).
    ca: Path | None = None
    # GUESTFEED_TLS_CLIENT_CERT / _KEY: the CLI's certificate, for mutual TLS.
    client_cert: Path | None = None
    client_key: Path | None = None
    # GUESTFEED_TLS_SERVER_NAME: the name the CLI checks the server's certificate
    # against, when the target's host is not in it (a port-forward to 127.0.0.1).
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        """True when the server serves TLS (GUESTFEED_TLS_CERT and _KEY are set)."""
        return self.cert is not None and self.key is not None

    @property
    def mutual(self) -> bool:
        """True when the server requires client certificates (GUESTFEED_TLS_CLIENT_CA)."""
        return self.enabled and self.client_ca is not None

    @property
    def client_enabled(self) -> bool:
        """True when the CLI connects with TLS: a CA or a client certificate is
        given, or this environment's server serves TLS."""
        return self.enabled or self.ca is not None or self.client_cert is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TlsSettings:
        """Reads the GUESTFEED_TLS_* variables and checks which go together.

        Raises:
            ConfigError: a certificate without its key (or the reverse), or a
                client CA without the server's certificate.
        """
        env = os.environ if env is None else env
        cert, key = _path(env, CERT), _path(env, KEY)
        if (cert is None) != (key is None):
            raise ConfigError(
                f"{CERT} and {KEY} go together: set both (the PEM certificate chain and its "
                f"private key) to serve TLS, or neither to serve plaintext"
            )
        client_ca = _path(env, CLIENT_CA)
        if client_ca is not None and cert is None:
            raise ConfigError(
                f"{CLIENT_CA} requires {CERT} and {KEY}: mutual TLS is TLS with client "
                "certificates, so the server needs its own certificate first"
            )
        client_cert, client_key = _path(env, CLIENT_CERT), _path(env, CLIENT_KEY)
        if (client_cert is None) != (client_key is None):
            raise ConfigError(
                f"{CLIENT_CERT} and {CLIENT_KEY} go together: set both (the CLI's PEM "
                "certificate and its private key) for mutual TLS, or neither"
            )
        return cls(
            cert=cert,
            key=key,
            client_ca=client_ca,
            ca=_path(env, CA),
            client_cert=client_cert,
            client_key=client_key,
            server_name=_text(env, SERVER_NAME),
        )
