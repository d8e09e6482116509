"""Bearer-token authentication for the JWTs the app's Supabase project issues.

`Authenticator` turns the `authorization` metadata into a `Principal`. Where
the key comes from is behind `KeyResolver`: today a shared HS256 secret; a
JWKS resolver (RS256/ES256, PyJWT's `PyJWKClient`) can be added beside it
without touching callers.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from .errors import PermissionDenied, Unauthenticated

# Supabase puts this audience on user sessions and service keys alike.
AUDIENCE = "authenticated"


class Role(enum.Enum):
    """The `role` claim values the service accepts."""

    AUTHENTICATED = "authenticated"
    SERVICE_ROLE = "service_role"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: `user_id` is the token's `sub` (= `users.id`)."""

    user_id: uuid.UUID
    role: Role

    @property
    def is_service(self) -> bool:
        """True for internal services acting as admins."""
        return self.role is Role.SERVICE_ROLE


class KeyResolver(Protocol):
    """Finds the verification key and allowed algorithms for a token header."""

    def resolve(self, header: dict[str, Any]) -> tuple[Any, Sequence[str]]:
        """Returns (key, algorithms) for this token, or raises Unauthenticated."""
        ...


class HS256Secret:
    """The Supabase project's shared JWT secret."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def resolve(self, header: dict[str, Any]) -> tuple[Any, Sequence[str]]:
        """Returns the secret; only HS256 is allowed, so `alg: none` never verifies."""
        return self._secret, ("HS256",)


class Authenticator:
    """Verifies bearer tokens from gRPC metadata."""

    def __init__(
        self, resolver: KeyResolver, *, leeway_s: float = 5.0, cache_size: int = 4096
    ) -> None:
        self._resolver = resolver
        self._leeway = leeway_s
        # A client sends the same token on every call until it expires;
        # verifying the signature each time costs more than the page query.
        # The cache maps the exact token text to its verified principal and
        # expiry, so a changed byte is a miss and expiry is re-checked on hits.
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal:
        """Returns the caller, or raises Unauthenticated / PermissionDenied."""
        token = _bearer(metadata)
        hit = self._cache.get(token)
        if hit is not None:
            principal, exp = hit
            if time.time() <= exp + self._leeway:
                self._cache.move_to_end(token)
                return principal
            del self._cache[token]
        principal, exp = self._verify(token)
        self._cache[token] = (principal, exp)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
            key, algorithms = self._resolver.resolve(header)
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(algorithms),
                audience=AUDIENCE,
                leeway=self._leeway,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(
                "the bearer token has expired; sign in again", "TOKEN_EXPIRED"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(
                f"the bearer token lacks the required '{exc.claim}' claim", "TOKEN_INVALID"
            ) from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"the bearer token's audience must be '{AUDIENCE}'", "TOKEN_INVALID"
            ) from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated(
                "the bearer token's algorithm is not accepted (HS256 only)", "TOKEN_INVALID"
            ) from None
        except jwt.InvalidTokenError:
            raise Unauthenticated(
                "the bearer token is malformed or its signature does not verify", "TOKEN_INVALID"
            ) from None
        return _principal(claims), float(claims["exp"])


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
    if not values:
        raise Unauthenticated(
            "missing credentials: send metadata 'authorization: Bearer <JWT>'", "TOKEN_MISSING"
        )
    if len(values) > 1:
        raise Unauthenticated("send exactly one 'authorization' metadata entry", "TOKEN_INVALID")
    raw = values[0]
    value = raw.decode() if isinstance(raw, bytes) else raw
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the 'authorization' metadata must be 'Bearer <JWT>'", "TOKEN_INVALID"
        )
    return token.strip()


def _principal(claims: dict[str, Any]) -> Principal:
    sub = claims.get("sub")
    try:
        user_id = uuid.UUID(str(sub))
    except ValueError:
        raise Unauthenticated(
            "the bearer token's 'sub' must be a user UUID", "TOKEN_INVALID"
        ) from None
    try:
        role = Role(claims.get("role", Role.AUTHENTICATED.value))
    except ValueError:
        raise PermissionDenied(
            f"role {claims.get('role')!r} may not call this service "
            "(expected 'authenticated' or 'service_role')",
            "ROLE_NOT_ALLOWED",
        ) from None
    return Principal(user_id=user_id, role=role)


def mint(
    secret: str, user_id: uuid.UUID, *, role: Role = Role.AUTHENTICATED, ttl_s: int = 3600
) -> str:
    """Signs a development token like Supabase's (`guestfeed token`, tests, demo)."""
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "aud": AUDIENCE,
        "role": role.value,
        "iat": now,
        "exp": now + ttl_s,
        "iss": "guestfeed-dev",
    }
    return jwt.encode(claims, secret, algorithm="HS256")
