"""Which key verifies a token: the JWKS's asymmetric keys, the legacy HS256 secret, or none.

The algorithms a key accepts come from the key (its JWK, or HS256 for the
shared secret), never from the token: a token cannot talk its way into
another algorithm (an HS256 token "signed" with a public key fails here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..domain.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key and the only algorithms it may verify."""

    key: Any
    algorithms: tuple[str, ...]
    # True for the project's shared HS256 secret: only tokens verified by it
    # may be the legacy service_role API key.
    shared_secret: bool = False


class JwksSource(Protocol):
    """What `KeySet` needs of the JWKS cache (`auth.jwks.JwksKeys`)."""

    # Changes whenever the published key set does.
    version: int

    def get(self, kid: str) -> VerificationKey | None:
        """The key published under `kid`, if any."""
        ...

    def note_unknown_kid(self, kid: str) -> None:
        """A token named a key we lack: maybe refetch (rate-limited)."""
        ...


class KeyResolver(Protocol):
    """Finds the verification key for a token header."""

    @property
    def version(self) -> int:
        """Changes whenever the keys do (verified-token caches drop then)."""
        ...

    def resolve(self, header: dict[str, Any]) -> VerificationKey:
        """Returns the key for this token, or raises Unauthenticated."""
        ...


class HS256Secret:
    """Only the project's shared JWT secret (the legacy path)."""

    def __init__(self, secret: str) -> None:
        self._key = VerificationKey(secret, ("HS256",), shared_secret=True)

    @property
    def version(self) -> int:
        """A secret never changes while the process runs."""
        return 0

    def resolve(self, header: dict[str, Any]) -> VerificationKey:
        """The secret; only HS256 verifies with it."""
        return self._key


class KeySet:
    """The JWKS's keys by `kid`, and the legacy HS256 secret, either or both.

    Supabase projects in the middle of the move to asymmetric keys have both:
    new sessions are ES256/RS256 with a `kid` from the JWKS, older sessions
    and the API keys are HS256 with the shared secret.
    """

    def __init__(self, jwks: JwksSource | None, secret: str | None) -> None:
        if jwks is None and secret is None:
            raise ValueError("KeySet needs a JWKS, a secret, or both")
        self._jwks = jwks
        self._secret = HS256Secret(secret) if secret is not None else None

    @property
    def version(self) -> int:
        """The JWKS's version (0 without one)."""
        return self._jwks.version if self._jwks is not None else 0

    def resolve(self, header: dict[str, Any]) -> VerificationKey:
        """See `KeyResolver.resolve`."""
        alg = header.get("alg")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated(
                "the bearer token's 'kid' header must be a string", "TOKEN_INVALID"
            )
        if self._jwks is not None and kid:
            key = self._jwks.get(kid)
            if key is not None:
                return key
        if alg == "HS256" and self._secret is not None:
            return self._secret.resolve(header)
        if self._jwks is not None and kid and alg != "HS256":
            self._jwks.note_unknown_kid(kid)
            raise Unauthenticated(
                "the bearer token is signed with a key this service does not know (its 'kid' "
                "is not in the project's JWKS); if the project's keys were just rotated, "
                "retry in a minute",
                "SIGNING_KEY_UNKNOWN",
            )
        if self._jwks is not None and not kid and alg != "HS256":
            raise Unauthenticated(
                "the bearer token has no 'kid' header; tokens signed with the project's "
                "asymmetric keys name their key",
                "TOKEN_INVALID",
            )
        raise Unauthenticated(
            f"the bearer token's algorithm {str(alg)[:20]!r} is not accepted ({self.accepted()})",
            "TOKEN_INVALID",
        )

    def accepted(self) -> str:
        """What this key set verifies, for error messages."""
        if self._jwks is None:
            return "HS256 only"
        text = "ES256, RS256 or EdDSA with a key of the project's JWKS"
        return text + (", or HS256 with the project's JWT secret" if self._secret else "")
