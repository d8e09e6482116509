"""Bearer-token authentication for the JWTs a Supabase project issues.

Three kinds of token are accepted:
  * user access tokens, ES256/RS256/EdDSA with a key of the project's JWKS
    or HS256 with the legacy project secret: `aud` = authenticated, a user
    UUID in `sub`, `role` authenticated or service_role, and `iss` equal to
    GUESTFEED_JWT_ISSUER when that is set;
  * the project's legacy `service_role` API key: HS256 with the project
    secret, `role` service_role, `iss` supabase, no `sub` and no `aud`. It is
    a service caller that names no user;
  * nothing else: the `anon` key and other roles are PERMISSION_DENIED, and
    anonymous sign-ins are too unless GUESTFEED_ALLOW_ANONYMOUS is true.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from ..domain.errors import PermissionDenied, Unauthenticated
from .keys import KeyResolver
from .principal import Principal, Role

# Supabase puts this audience on user sessions.
AUDIENCE = "authenticated"
# What Supabase writes into `iss` of its API keys (anon, service_role).
API_KEY_ISSUER = "supabase"
# Clock skew tolerated on exp, nbf and iat.
LEEWAY_S = 5.0
# The NumericDate claims, checked by type and time in `_check_dates`.
_DATES = ("exp", "nbf", "iat")
# Cache expiry for tokens whose exp is absurdly far off (year 9999).
_FAR_FUTURE_S = 253402300799.0
# Headers that point at keys elsewhere. Keys come only from the configured
# JWKS or secret; a token naming its own key is refused, never followed.
_KEY_POINTERS = ("jku", "x5u", "jwk", "x5c")


class Authenticator:
    """Verifies bearer tokens from gRPC metadata."""

    def __init__(
        self,
        resolver: KeyResolver,
        *,
        issuer: str | None = None,
        allow_anonymous: bool = False,
        leeway_s: float = LEEWAY_S,
        cache_size: int = 4096,
    ) -> None:
        self._resolver = resolver
        self._issuer = issuer
        self._allow_anonymous = allow_anonymous
        self._leeway = leeway_s
        # A client sends the same token on every call until it expires;
        # verifying the signature each time costs more than the page query.
        # The cache maps the exact token text to its verified principal and
        # expiry, so a changed byte is a miss and expiry is re-checked on hits.
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size
        # When the key set changes (a JWKS refresh), every cached
        # verification is dropped, so a revoked key stops working at once.
        self._seen_version = resolver.version

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal:
        """Returns the caller, or raises Unauthenticated / PermissionDenied."""
        token = _bearer(metadata)
        version = self._resolver.version
        if version != self._seen_version:
            self._cache.clear()
            self._seen_version = version
        hit = self._cache.get(token)
        if hit is not None and time.time() <= hit[1] + self._leeway:
            self._cache.move_to_end(token)
            principal = hit[0]
        else:
            if hit is not None:
                del self._cache[token]
            principal, exp = self._verify(token)
            self._cache[token] = (principal, exp)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if principal.anonymous and not self._allow_anonymous:
            raise PermissionDenied(
                "anonymous sign-ins may not read guest feeds here; sign in with your "
                "phone number or email first",
                "ANONYMOUS_NOT_ALLOWED",
            )
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        header = _header(token)
        key = self._resolver.resolve(header)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=list(key.algorithms),
                # aud and iss depend on the kind of token, and the dates are
                # checked below with their types: PyJWT reads "123" or true as
                # a date and leaves a 400-digit exp for float() to crash on.
                options={
                    "require": ["exp"],
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise _missing(exc.claim) from None
        except InvalidSubjectError:
            raise _bad_sub() from None
        except InvalidJTIError:
            raise Unauthenticated(
                "the bearer token's 'jti' must be a string", "TOKEN_INVALID"
            ) from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated(
                f"the bearer token's algorithm {str(header.get('alg'))[:20]!r} does not match "
                f"its key, which accepts {', '.join(key.algorithms)} only",
                "TOKEN_INVALID",
            ) from None
        except jwt.InvalidTokenError:
            raise Unauthenticated(
                "the bearer token is malformed or its signature does not verify", "TOKEN_INVALID"
            ) from None
        exp = self._check_dates(claims)
        # The role first: a verified anon key (or any other role) is a known
        # caller who may not use this service, whatever else it carries.
        role = _role(claims)
        if role is Role.SERVICE_ROLE and "sub" not in claims:
            if key.shared_secret and claims.get("iss") == API_KEY_ISSUER:
                return _api_key(claims), exp
            raise _missing("sub")
        return self._user(claims, role), exp

    def _user(self, claims: dict[str, Any], role: Role) -> Principal:
        if "sub" not in claims:
            raise _missing("sub")
        if "aud" not in claims:
            raise _missing("aud")
        aud = claims["aud"]
        audiences = aud if isinstance(aud, list) else [aud]
        if AUDIENCE not in audiences:
            raise Unauthenticated(
                f"the bearer token's audience must be '{AUDIENCE}'", "TOKEN_INVALID"
            )
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise Unauthenticated(
                f"the bearer token was issued by {str(claims.get('iss'))[:80]!r}, not by "
                f"{self._issuer!r}; use a token of this project",
                "TOKEN_WRONG_ISSUER",
            )
        user_id = _user_id(claims["sub"])
        anonymous = claims.get("is_anonymous", False)
        if not isinstance(anonymous, bool):
            raise Unauthenticated(
                "the bearer token's 'is_anonymous' must be true or false", "TOKEN_INVALID"
            )
        return Principal(user_id=user_id, role=role, anonymous=anonymous)

    def _check_dates(self, claims: dict[str, Any]) -> float:
        """Checks exp, nbf and iat (types, then times); returns exp for the cache."""
        dates = {name: _numeric_date(claims, name) for name in _DATES if name in claims}
        now = time.time()
        if dates["exp"] <= now - self._leeway:
            raise Unauthenticated("the bearer token has expired; sign in again", "TOKEN_EXPIRED")
        for name in ("nbf", "iat"):
            if name in dates and dates[name] > now + self._leeway:
                raise Unauthenticated(
                    f"the bearer token is not valid yet: its '{name}' is in the future "
                    f"(more than {self._leeway:g} s ahead of this server's clock); check the "
                    "issuer's clock, or wait",
                    "TOKEN_NOT_YET_VALID",
                )
        return float(min(dates["exp"], _FAR_FUTURE_S))


def _numeric_date(claims: dict[str, Any], name: str) -> int | float:
    value = claims[name]
    # bool is an int to Python, and NaN or Infinity parse from JSON: neither
    # is a NumericDate (RFC 7519 section 2).
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise Unauthenticated(
            f"the bearer token's '{name}' must be a number of seconds since the epoch",
            "TOKEN_INVALID",
        )
    return value


def _user_id(sub: Any) -> uuid.UUID:
    # uuid.UUID also reads braces, 'urn:uuid:', bare hex, hyphens anywhere,
    # and (through int(..., 16)) '_' or spaces: one user, many spellings. A
    # JWT's sub is an exact string, so only the 8-4-4-4-12 form names a user.
    try:
        user_id = uuid.UUID(sub) if isinstance(sub, str) else None
    except ValueError:
        user_id = None
    if user_id is None or str(user_id) != sub.lower():
        raise _bad_sub()
    return user_id


def _bad_sub() -> Unauthenticated:
    return Unauthenticated("the bearer token's 'sub' must be a user UUID", "TOKEN_INVALID")


def _api_key(claims: dict[str, Any]) -> Principal:
    ref = claims.get("ref")
    return Principal(
        user_id=None, role=Role.SERVICE_ROLE, key_ref=str(ref)[:64] if ref is not None else None
    )


def _role(claims: dict[str, Any]) -> Role:
    role = claims.get("role", Role.AUTHENTICATED.value)
    try:
        return Role(role)
    except (ValueError, TypeError):
        hint = "; the anon key reads nothing, sign in first" if role == "anon" else ""
        raise PermissionDenied(
            f"role {str(role)[:40]!r} may not call this service "
            f"(expected 'authenticated' or 'service_role'){hint}",
            "ROLE_NOT_ALLOWED",
        ) from None


def _missing(claim: str) -> Unauthenticated:
    return Unauthenticated(f"the bearer token lacks the required '{claim}' claim", "TOKEN_INVALID")


def _header(token: str) -> dict[str, Any]:
    try:
        header: dict[str, Any] = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        # PyJWT's exception types do not tell these apart; its messages do
        # ("Unsupported critical extension", "Invalid 'crit' header", "Key ID
        # header parameter must be a string"), and anything else stays generic.
        text = str(exc).lower()
        if "crit" in text:
            raise Unauthenticated(
                "the bearer token's 'crit' header is not accepted: it must be a list naming "
                "extensions this service supports",
                "TOKEN_INVALID",
            ) from None
        if "key id" in text:
            raise Unauthenticated(
                "the bearer token's 'kid' header must be a string", "TOKEN_INVALID"
            ) from None
        raise Unauthenticated(
            "the bearer token is malformed or its signature does not verify", "TOKEN_INVALID"
        ) from None
    for name in _KEY_POINTERS:
        if name in header:
            raise Unauthenticated(
                f"the bearer token's '{name}' header is not accepted: keys come only from "
                "this service's configuration",
                "TOKEN_INVALID",
            )
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise Unauthenticated(
            "the bearer token's header names no algorithm: 'alg' must be a string such as ES256",
            "TOKEN_INVALID",
        )
    if alg.lower() == "none":
        # Named here, before any key lookup, so no configuration can let it by.
        raise Unauthenticated(
            f"the bearer token's algorithm {str(alg)[:20]!r} is not accepted: "
            "unsigned tokens never are",
            "TOKEN_INVALID",
        )
    return header


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
    if not values:
        raise Unauthenticated(
            "missing credentials: send metadata 'authorization: Bearer <JWT>'", "TOKEN_MISSING"
        )
    if len(values) > 1:
        raise Unauthenticated("send exactly one 'authorization' metadata entry", "TOKEN_INVALID")
    raw = values[0]
    value = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the 'authorization' metadata must be 'Bearer <JWT>'", "TOKEN_INVALID"
        )
    return token.strip()


def mint(
    secret: str,
    user_id: uuid.UUID,
    *,
    role: Role = Role.AUTHENTICATED,
    ttl_s: int = 3600,
    issuer: str | None = None,
) -> str:
    """Signs a development token like Supabase's (`guestfeed token`, tests, demo)."""
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "aud": AUDIENCE,
        "role": role.value,
        "iat": now,
        "exp": now + ttl_s,
        "iss": issuer or "guestfeed-dev",
    }
    return jwt.encode(claims, secret, algorithm="HS256")
