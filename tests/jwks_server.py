"""A real HTTP JWKS endpoint with keys made at test time, as a Supabase project has.

Keys can be added (a standby key published before it signs) and removed (a
revoked key), the endpoint can fail (HTTP 503) or disappear, and every
request is counted, so rate limits are checked at the endpoint itself.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from guestfeed_server.auth import AUDIENCE

PROJECT_REF = "abcdefghijklmnopqrst"
ISSUER = f"http://127.0.0.1/{PROJECT_REF}/auth/v1"


@dataclass
class SigningKey:
    """A private key and its public JWK."""

    kid: str
    alg: str
    private: Any
    public_jwk: dict[str, Any]

    @property
    def public_pem(self) -> bytes:
        """The public key as PEM (what an algorithm-confusion attacker would HMAC with)."""
        key = self.private.public_key()
        return bytes(
            key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def new_key(alg: str, kid: str | None = None) -> SigningKey:
    """A fresh ES256, RS256 or EdDSA key."""
    kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
    private: Any
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    elif alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    else:  # pragma: no cover
        raise ValueError(alg)
    jwk.update({"kid": kid, "alg": alg, "use": "sig", "key_ops": ["verify"]})
    return SigningKey(kid, alg, private, jwk)


def user_claims(user: uuid.UUID, *, issuer: str = ISSUER, **overrides: Any) -> dict[str, Any]:
    """A Supabase user access token's claims; an override of None drops the claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user),
        "aud": AUDIENCE,
        "role": "authenticated",
        "iss": issuer,
        "iat": now,
        "exp": now + 600,
        "is_anonymous": False,
        "session_id": str(uuid.uuid4()),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def api_key(role: str, secret: str, **overrides: Any) -> str:
    """A Supabase legacy API key: HS256 with the project secret, no sub, no aud."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "supabase",
        "ref": PROJECT_REF,
        "role": role,
        "iat": now - 3600,
        "exp": now + 10 * 365 * 86400,
    }
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, "HS256")


@dataclass
class JwksServer:
    """Serves `/auth/v1/.well-known/jwks.json` from a thread on 127.0.0.1."""

    max_age: int | None = 600
    keys: dict[str, SigningKey] = field(default_factory=dict)
    hits: int = 0
    status: int = 200
    _httpd: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The JWKS URL."""
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_port}/auth/v1/.well-known/jwks.json"

    def add(self, alg: str = "ES256", kid: str | None = None) -> SigningKey:
        """Publishes a new key (a standby key: published before it signs)."""
        key = new_key(alg, kid)
        with self._lock:
            self.keys[key.kid] = key
        return key

    def remove(self, kid: str) -> None:
        """Revokes a key: it disappears from the JWKS."""
        with self._lock:
            del self.keys[kid]

    def sign(self, claims: dict[str, Any], key: SigningKey, **headers: Any) -> str:
        """A token signed by `key`, naming it in `kid`."""
        return jwt.encode(
            claims, key.private, algorithm=key.alg, headers={"kid": key.kid, **headers}
        )

    def document(self) -> bytes:
        with self._lock:
            return json.dumps({"keys": [k.public_jwk for k in self.keys.values()]}).encode()

    def start(self) -> JwksServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.hits += 1
                    status = owner.status
                if status != 200 or not self.path.endswith("/jwks.json"):
                    self.send_response(status if status != 200 else 404)
                    self.end_headers()
                    return
                body = owner.document()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if owner.max_age is not None:
                    self.send_header("Cache-Control", f"public, max-age={owner.max_age}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Takes the endpoint away entirely (connections are refused)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
