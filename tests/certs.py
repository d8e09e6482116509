"""Certificates made at test time: a CA, the certificates it issues, PEM files on
disk; and the TLS clients the tests use (gRPC channels, a bare handshake probe).

EC P-256 keys: generated in a millisecond where RSA takes tens, and gRPC's
BoringSSL handles them like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = timedelta(days=1)


async def served_certificate(port: int, trust: bytes) -> x509.Certificate:
    """The certificate a server on 127.0.0.1:`port` presents to a new TLS connection.

    A bare TLS handshake (ALPN h2, as gRPC's core wants), closed at once: gRPC's
    Python client never shows the peer's certificate.

    Raises:
        ssl.SSLError: the handshake fails (the server is not trusted by `trust`).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=trust.decode())
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM."""

    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes

    @property
    def serial(self) -> int:
        """The certificate's serial number."""
        return self.cert.serial_number

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        """Writes `name`.crt and `name`.key into `folder`; returns (cert, key) paths."""
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return cert, key


@dataclass(frozen=True)
class Authority:
    """A self-signed CA that issues server and client certificates."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "guestfeed test CA") -> Authority:
        """A new CA, valid from yesterday for a year."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 365 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert)

    @property
    def pem(self) -> bytes:
        """The CA certificate, to trust."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, folder: Path, name: str = "ca") -> Path:
        """Writes the CA certificate to `folder`/`name`.crt and returns the path."""
        path = folder / f"{name}.crt"
        path.write_bytes(self.pem)
        return path

    def issue(
        self,
        common_name: str,
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        uris: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
        expired: bool = False,
    ) -> Issued:
        """A leaf certificate for `common_name` with the given SANs and uses.

        `expired` makes one that ended yesterday (valid the ten days before).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        start, end = (now - 10 * _DAY, now - _DAY) if expired else (now - _DAY, now + 30 * _DAY)
        sans: list[x509.GeneralName] = [
            *(x509.UniformResourceIdentifier(u) for u in uris),
            *(x509.DNSName(d) for d in dns),
            *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips),
        ]
        usages = [
            *([ExtendedKeyUsageOID.SERVER_AUTH] if server else []),
            *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []),
        ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert, cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def server(self, *, expired: bool = False, dns: Sequence[str] = ("localhost",)) -> Issued:
        """A server certificate for 127.0.0.1 and `dns` (localhost by default)."""
        return self.issue(
            "guestfeed server", dns=dns, ips=("127.0.0.1",), server=True, expired=expired
        )

    def client(
        self,
        common_name: str = "guestfeed client",
        *,
        uris: Sequence[str] = (),
        dns: Sequence[str] = (),
        expired: bool = False,
    ) -> Issued:
        """A client certificate naming a calling service."""
        return self.issue(common_name, uris=uris, dns=dns, client=True, expired=expired)


@dataclass
class Pki:
    """A CA, the server's certificate files, and somewhere to write more."""

    ca: Authority
    server: Issued
    cert: Path
    key: Path
    ca_file: Path
    folder: Path

    @classmethod
    def create(cls, folder: Path) -> Pki:
        """A fresh CA and its server certificate, written to `folder`."""
        ca = Authority.create()
        server = ca.server()
        cert, key = server.write(folder, "server")
        return cls(ca, server, cert, key, ca.write(folder), folder)

    def env(self, *, client_ca: Path | None = None) -> dict[str, str]:
        """The server's GUESTFEED_TLS_* variables."""
        env = {"GUESTFEED_TLS_CERT": str(self.cert), "GUESTFEED_TLS_KEY": str(self.key)}
        if client_ca is not None:
            env["GUESTFEED_TLS_CLIENT_CA"] = str(client_ca)
        return env

    def replace(self, issued: Issued) -> None:
        """Swaps the served files for `issued`'s as cert-manager does: a rename over each."""
        for data, target in ((issued.key_pem, self.key), (issued.cert_pem, self.cert)):
            staged = target.with_suffix(".new")
            staged.write_bytes(data)
            os.replace(staged, target)


def channel(
    port: int, trust: bytes | None = None, client: Issued | None = None
) -> grpc.aio.Channel:
    """A channel of its own (no shared subchannel: each is a new connection and handshake);
    TLS when `trust` is given, with `client`'s certificate when given."""
    target, options = f"127.0.0.1:{port}", [("grpc.use_local_subchannel_pool", 1)]
    if trust is None:
        return grpc.aio.insecure_channel(target, options=options)
    creds = grpc.ssl_channel_credentials(
        trust,
        client.key_pem if client else None,
        client.cert_pem if client else None,
    )
    return grpc.aio.secure_channel(target, creds, options=options)
