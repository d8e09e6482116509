"""Coverage-guided fuzzing (atheris) of bearer-token verification and metadata parsing.

No network and no server: `Authenticator.authenticate` on an HS256-only key
set and on a JWKS + secret + issuer one, `api.convert.principal` on a stub
context, and `auth.jwks.parse_jwks` on arbitrary bytes. Only the errors the
service expects may escape (`GuestFeedError` subclasses; `JwksError` from
parse_jwks); anything else is a crash libFuzzer reports and saves. Every
accepted token is also checked against the rules: a user token's `sub` is
that user's canonical UUID, an API key has no sub, role service_role and iss
supabase, and only tokens signed by a configured key get that far.

Not collected by pytest (its files are test_*.py); run with `make fuzz`, or
    .venv/bin/python tests/fuzz/fuzz_token.py -max_total_time=60
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import sys
import time
import uuid
from typing import Any, cast

import atheris

# Coverage feedback from the code under test only, not the whole service.
with atheris.instrument_imports(
    include=["jwt", "guestfeed_server.auth", "guestfeed_server.api.convert"]
):
    import grpc
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    from guestfeed_server.api.convert import principal
    from guestfeed_server.auth import Authenticator, HS256Secret, KeySet, Principal
    from guestfeed_server.auth.jwks import JwksError, parse_jwks
    from guestfeed_server.auth.keys import VerificationKey
    from guestfeed_server.domain.errors import GuestFeedError

SECRET = "fuzz-secret-" + "x" * 40
ISSUER = "https://fuzz.supabase.co/auth/v1"
USER = uuid.UUID("3f2c1a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f")
_EC = ec.generate_private_key(ec.SECP256R1())
_JWK = {**json.loads(ECAlgorithm.to_jwk(_EC.public_key())), "kid": "es-1", "alg": "ES256"}

HEADER_NAMES = ["alg", "kid", "typ", "crit", "b64", "jku", "x5u", "jwk", "x5c", "cty", "zip"]
CLAIM_NAMES = ["sub", "aud", "role", "exp", "nbf", "iat", "iss", "jti", "is_anonymous", "ref"]
STRINGS = [
    "HS256",
    "ES256",
    "RS256",
    "EdDSA",
    "none",
    "es-1",
    "b64",
    "authenticated",
    "service_role",
    "anon",
    "supabase",
    ISSUER,
    str(USER),
    str(USER).upper(),
    USER.hex,
    "http://127.0.0.1:9/jwks.json",
]


class StaticJwks:
    """One published ES256 key, never refetched."""

    version = 1

    def __init__(self) -> None:
        self._keys = parse_jwks(json.dumps({"keys": [_JWK]}).encode())

    def get(self, kid: str) -> VerificationKey | None:
        return self._keys.get(kid)

    def note_unknown_kid(self, kid: str) -> None:
        pass


JWKS = StaticJwks()


class StubContext:
    """What `principal` reads of a grpc.aio.ServicerContext."""

    def __init__(self, metadata: list[tuple[str, str | bytes]]) -> None:
        self._metadata = tuple(metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    """A JSON value of any type, biased towards what JWTs hold."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        # Huge magnitudes from two bytes: past float's range at 10**309.
        return fdp.ConsumeInt(2) * 10 ** fdp.ConsumeIntInRange(0, 450)
    if kind == 3:
        return int(time.time()) + fdp.ConsumeIntInRange(-(10**6), 10**6)
    if kind == 4:
        return fdp.ConsumeFloat()  # NaN and infinities included
    if kind == 5:
        return fdp.PickValueInList(STRINGS)
    if kind == 6:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 64))
    if kind == 7:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return {
        name(fdp, CLAIM_NAMES): value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))
    }


def name(fdp: atheris.FuzzedDataProvider, known: list[str]) -> str:
    if fdp.ConsumeIntInRange(0, 3):
        return fdp.PickValueInList(known)
    return fdp.ConsumeUnicodeNoSurrogates(8)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def structured(fdp: atheris.FuzzedDataProvider) -> tuple[str, dict[str, Any], str]:
    """A token from fuzzed header and claims (starting from valid ones), validly signed."""
    now = int(time.time())
    es256 = fdp.ConsumeBool()
    header: dict[str, Any] = {"alg": "ES256", "kid": "es-1"} if es256 else {"alg": "HS256"}
    claims: dict[str, Any] = {"sub": str(USER), "aud": "authenticated", "exp": now + 600}
    claims["iss"] = ISSUER
    if not es256 and fdp.ConsumeIntInRange(0, 3) == 0:
        # The legacy service_role API key: no sub, no aud, iss supabase.
        claims = {"role": "service_role", "iss": "supabase", "ref": "abc", "exp": now + 600}
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        if fdp.ConsumeBool():
            header[name(fdp, HEADER_NAMES)] = value(fdp)
        else:
            claims[name(fdp, CLAIM_NAMES)] = value(fdp)
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        claims.pop(fdp.PickValueInList(CLAIM_NAMES), None)
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    if es256:
        signature = jwt.get_algorithm_by_name("ES256").sign(signing_input.encode(), _EC)
        signer = "jwks"
    else:
        signature = hmac.digest(SECRET.encode(), signing_input.encode(), "sha256")
        signer = "secret"
    return f"{signing_input}.{b64url(signature)}", claims, signer


def raw_json(fdp: atheris.FuzzedDataProvider) -> str:
    """Arbitrary header and payload text (JSON or not) under a valid HS256 signature."""
    header = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80))
    if fdp.ConsumeBool():
        header = '{"alg":"HS256"' + header
    payload = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200))
    signing_input = f"{b64url(header.encode())}.{b64url(payload.encode())}"
    signature = hmac.digest(SECRET.encode(), signing_input.encode(), "sha256")
    return f"{signing_input}.{b64url(signature)}"


def metadata(fdp: atheris.FuzzedDataProvider, token: str) -> list[tuple[str, str | bytes]]:
    """0-3 entries: authorization (text or -bin) and others, carrying the token or not."""
    out: list[tuple[str, str | bytes]] = []
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        key = fdp.PickValueInList(["authorization", "authorization-bin", "x", "traceparent"])
        if fdp.ConsumeBool():
            text = fdp.PickValueInList(["Bearer ", "bearer  ", "Basic ", "", " Bearer "]) + token
        else:
            text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
        out.append((key, text.encode("utf-8", "surrogatepass") if key.endswith("-bin") else text))
    return out


def check(who: Principal, claims: dict[str, Any] | None, signer: str, issuer: str | None) -> None:
    """An accepted token is one the rules accept."""
    assert claims is not None and signer in ("secret", "jwks"), (who, claims, signer)
    if who.user_id is None:
        assert signer == "secret", claims
        assert claims.get("role") == "service_role" and "sub" not in claims, claims
        assert claims.get("iss") == "supabase", claims
        return
    assert isinstance(claims.get("sub"), str) and claims["sub"].lower() == str(who.user_id)
    aud = claims.get("aud")
    assert "authenticated" in (aud if isinstance(aud, list) else [aud]), claims
    assert claims.get("role", "authenticated") in ("authenticated", "service_role"), claims
    assert claims.get("is_anonymous", False) is False, claims
    assert issuer is None or claims.get("iss") == issuer, claims
    exp = claims["exp"]
    assert isinstance(exp, int | float) and not isinstance(exp, bool) and exp > time.time() - 5


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 4)
    if mode == 4:
        with contextlib.suppress(JwksError):
            parse_jwks(fdp.ConsumeBytes(fdp.remaining_bytes()))
        return
    claims: dict[str, Any] | None = None
    signer = "none"
    if mode == 0:
        token = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))
    elif mode == 1:
        token = raw_json(fdp)
        signer = "secret"
    else:
        token, claims, signer = structured(fdp)
    entries = metadata(fdp, token) if fdp.ConsumeBool() else [("authorization", f"Bearer {token}")]
    issuer = ISSUER if fdp.ConsumeBool() else None
    # Fresh authenticators: a verified-token cache shared across inputs would
    # make a crash depend on the inputs before it.
    hs_only = Authenticator(HS256Secret(SECRET), issuer=issuer)
    mixed = Authenticator(KeySet(JWKS, SECRET), issuer=issuer)
    for auth in (hs_only, mixed):
        try:
            if fdp.ConsumeBool():
                context = cast("grpc.aio.ServicerContext[Any, Any]", StubContext(entries))
                who = principal(auth, context)
            else:
                who = auth.authenticate(entries)
        except GuestFeedError:
            continue
        if mode == 1:
            # The payload is only known to be JSON once accepted.
            claims = jwt.decode(token, options={"verify_signature": False})
        assert sum(k == "authorization" for k, _ in entries) == 1, entries
        check(who, claims, signer, issuer)
        assert auth is mixed or signer == "secret", "the HS256-only server took a JWKS token"


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
