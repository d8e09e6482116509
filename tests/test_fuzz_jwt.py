"""JOSE headers and claims fuzzed: every header and claim, of every type, signed for real.

Each example starts from a valid token of one of two guests (HS256 with the
project secret, or a key of a real JWKS endpoint) and swaps up to four of its
parts (a header, a claim, the signature) for something else. `verdict` says,
from the rules in `auth/verify.py`'s docstring and not from its code path,
whether the result is genuinely valid and, if not, the words one of which the
refusal must use. Two servers are fuzzed: the shared HS256-only one, and one
with a JWKS, the secret and an issuer (a project mid-migration, the most
paths). Properties: never INTERNAL or UNKNOWN; a token is accepted exactly
when it is valid; a refusal says what is wrong; an accepted token reads its
own guest's feed and never the other's; `jku`/`x5u` URLs are never fetched.
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms

from guestfeed.v1 import feed_pb2
from guestfeed_server.auth import (
    AUDIENCE,
    Authenticator,
    HS256Secret,
    JwksKeys,
    KeySet,
    VerificationKey,
)
from guestfeed_server.auth.jwks import parse_jwks
from guestfeed_server.domain.errors import PermissionDenied, Unauthenticated

from .conftest import SECRET, Client, start_client
from .factory import World
from .helpers import error_info
from .jwks_server import ISSUER, PROJECT_REF, JwksServer, SigningKey, new_key

NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
REASONS = {
    "TOKEN_INVALID",
    "TOKEN_EXPIRED",
    "TOKEN_NOT_YET_VALID",
    "SIGNING_KEY_UNKNOWN",
    "TOKEN_WRONG_ISSUER",
    "ROLE_NOT_ALLOWED",
    "ANONYMOUS_NOT_ALLOWED",
}
# The clock-skew leeway is 5 s; generated times stay a minute clear of it.
MARGIN_S = 60
DROP = object()  # a mutation that removes the header or claim


class Trap:
    """An HTTP server that counts every connection made to it: jku/x5u point here."""

    def __init__(self) -> None:
        owner = self
        self.connections = 0

        class Counting(ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                owner.connections += 1
                return True

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"keys": []}')

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = Counting(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@dataclass
class Keys:
    """The JWKS endpoint's keys, keys nobody published, and the trap."""

    endpoint: JwksServer
    published: list[SigningKey]
    strangers: dict[str, SigningKey]
    trap: Trap


@pytest.fixture(scope="module")
def keys() -> Iterator[Keys]:
    """A JWKS endpoint with an ES256, an RS256 and an EdDSA key; a trap for fetches."""
    endpoint = JwksServer().start()
    published = [endpoint.add(alg, kid) for alg, kid in (("ES256", "es-1"), ("RS256", "rs-1"))]
    published.append(endpoint.add("EdDSA", "ed-1"))
    strangers = {alg: new_key(alg, f"stranger-{alg}") for alg in ("ES256", "RS256", "EdDSA")}
    trap = Trap()
    yield Keys(endpoint, published, strangers, trap)
    assert trap.connections == 0, "a token made the service fetch a URL it named"
    trap.stop()
    endpoint.stop()


@pytest.fixture(scope="module")
async def mixed(admin_dsn: str, keys: Keys) -> AsyncIterator[Client]:
    """A replica with the JWKS, the HS256 secret and an issuer."""
    c = await start_client(
        admin_dsn,
        jwks=JwksKeys(keys.endpoint.url),
        GUESTFEED_JWKS_URL=keys.endpoint.url,
        GUESTFEED_JWT_ISSUER=ISSUER,
    )
    yield c
    await c.stop()


@dataclass(frozen=True)
class Guests:
    """Two guests of one event, each with a direct message only they may read."""

    event: uuid.UUID
    a: uuid.UUID
    b: uuid.UUID
    direct: dict[uuid.UUID, str]
    feeds: dict[uuid.UUID, frozenset[str]]


@pytest.fixture
async def guests(world: World) -> Guests:
    """Guests A and B: a direct message to each, one announcement to both."""
    event = await world.event()
    a, guest_a = await world.member(event)
    b, guest_b = await world.member(event)
    shared = str(await world.message(event, "announcement"))
    direct: dict[uuid.UUID, str] = {}
    for guest, user in ((guest_a, a), (guest_b, b)):
        dm = await world.message(event, "direct")
        await world.deliver(dm, guest_id=guest, user_id=user)
        await world.deliver(uuid.UUID(shared), guest_id=guest, user_id=user)
        direct[user] = str(dm)
    feeds = {u: frozenset({direct[u], shared}) for u in (a, b)}
    return Guests(event, a, b, direct, feeds)


@dataclass
class Setting:
    """What a generated token may use, and how the server under test is configured."""

    a: uuid.UUID
    b: uuid.UUID
    keys: Keys
    mixed: bool  # JWKS + secret + issuer, or the secret alone

    @property
    def issuer(self) -> str | None:
        return ISSUER if self.mixed else None


@dataclass
class Spec:
    """A token before signing: its header, its claims, and what signs it."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signer: str  # secret | other-secret | none | junk | jwks:<kid> | stranger:<alg>


# Values of every JSON type, including ones no claim or header should hold.
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.lists(st.integers() | st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)
ALGS = ["HS256", "RS256", "ES256", "EdDSA", "none", "None", "NONE", "HS512", "PS256", "", "hs256"]
PATHS = ["../../etc/passwd", "/dev/zero", "file:///etc/passwd", "..\\..\\x", "%2e%2e%2f", "es-1 "]


def dates(now: int) -> st.SearchStrategy[Any]:
    """exp, nbf or iat values: past, future, huge, negative, and wrong types.

    Offsets from `now` are drawn and added after: hypothesis replays an example
    and demands the same draws, so no strategy's bounds may move with the clock
    (a second ticking between two runs of one example made it flaky).
    """
    return st.one_of(
        st.integers(MARGIN_S, 10**6).map(lambda d: now + d),
        st.integers(MARGIN_S, 10**12).map(lambda d: now - d),
        st.floats(MARGIN_S, 10**6).map(lambda d: now + d),
        st.floats(MARGIN_S, 1e12).map(lambda d: now - d),
        st.sampled_from([10**30, 10**400, -(10**400), 1e300, 0, -1]),
        st.integers(-(10**6), 10**6).map(lambda d: str(now + d)),
        junk,
    )


def header_values(setting: Setting, name: str) -> st.SearchStrategy[Any]:
    trap = setting.keys.trap.url
    kids = [k.kid for k in setting.keys.published]
    urls = st.sampled_from([f"{trap}/jwks.json", f"{trap}/cert.pem", f"{trap}/?x=1"])
    choices: dict[str, st.SearchStrategy[Any]] = {
        "alg": st.sampled_from(ALGS) | junk,
        "kid": st.one_of(
            st.sampled_from(kids),
            st.text(max_size=40),
            st.sampled_from(PATHS),
            st.text(st.characters(codec="utf-8"), min_size=1, max_size=20),
            st.text("abcdef0123456789", min_size=1000, max_size=3000),
            junk,
        ),
        "typ": st.sampled_from(["JWT", "at+jwt", "JWS", "jwt"]) | junk,
        "jku": urls | junk,
        "x5u": urls | junk,
        "x5c": st.lists(st.sampled_from(["MIIB", "MIIBIjANBgkq"]), max_size=2) | junk,
        "x5t": st.text(max_size=30) | junk,
        "crit": st.lists(
            st.sampled_from(["b64", "exp", "jku", "foo", "http://example.com/ext", ""]), max_size=3
        )
        | junk,
        "b64": st.booleans() | junk,
    }
    return choices[name]


def claim_values(setting: Setting, name: str, now: int) -> st.SearchStrategy[Any]:
    a = setting.a
    subs = st.one_of(
        st.sampled_from([str(setting.b), str(a).upper(), f"{{{a}}}", f"urn:uuid:{a}", a.hex]),
        st.uuids().map(str),
        st.sampled_from([str(a)[:-1], str(a) + " ", " " + str(a), str(a).replace("-", "_")]),
        junk,
    )
    choices: dict[str, st.SearchStrategy[Any]] = {
        "sub": subs,
        "aud": st.sampled_from([AUDIENCE, [AUDIENCE, "x"], ["x"], "anon", [[AUDIENCE]], []]) | junk,
        "role": st.sampled_from(["authenticated", "service_role", "anon", "AUTHENTICATED", ""])
        | st.lists(st.sampled_from(["authenticated", "service_role"]), max_size=2)
        | junk,
        "exp": dates(now),
        "nbf": dates(now),
        "iat": dates(now),
        "iss": st.sampled_from([ISSUER, "supabase", "guestfeed-dev", ISSUER + "/"]) | junk,
        "jti": st.text(max_size=20) | junk,
        "is_anonymous": st.sampled_from([True, True, False, "false", 0, 1]) | junk,
        "app_metadata": junk,
    }
    return choices[name]


HEADER_FIELDS = ["alg", "kid", "typ", "jku", "x5u", "x5c", "x5t", "crit", "b64"]
CLAIM_FIELDS = ["sub", "aud", "role", "exp", "nbf", "iat", "iss", "jti", "is_anonymous"]
FIELDS = [*HEADER_FIELDS, *CLAIM_FIELDS, "app_metadata", "signer", "jwk"]


def specs(setting: Setting) -> st.SearchStrategy[Spec]:
    """A valid token (guest A or B, or the service_role API key), up to four parts replaced."""

    @st.composite
    def draw(draw: st.DrawFn) -> Spec:
        now = int(time.time())
        user = draw(st.sampled_from([setting.a, setting.b]))
        header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
        signer = "secret"
        if setting.mixed and draw(st.booleans()):
            key = draw(st.sampled_from(setting.keys.published))
            header = {"alg": key.alg, "typ": "JWT", "kid": key.kid}
            signer = f"jwks:{key.kid}"
        claims: dict[str, Any] = {
            "sub": str(user),
            "aud": AUDIENCE,
            "role": "authenticated",
            "iat": now - 10,
            "exp": now + 600,
            "iss": setting.issuer or "guestfeed-dev",
            "is_anonymous": False,
        }
        if signer == "secret" and draw(st.sampled_from([False, False, False, True])):
            # The legacy service_role API key: no sub, no aud, iss supabase.
            claims = {"iss": "supabase", "ref": PROJECT_REF, "role": "service_role"}
            claims.update(iat=now - 3600, exp=now + 10 * 365 * 86400)
        for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
            if name == "signer":
                strangers = [f"stranger:{alg}" for alg in setting.keys.strangers]
                published = [f"jwks:{k.kid}" for k in setting.keys.published]
                options = ["secret", "other-secret", "none", "junk", *strangers, *published]
                signer = draw(st.sampled_from(options))
            elif name == "jwk":
                # The classic attack: sign with your own key and embed it.
                key = draw(st.sampled_from(list(setting.keys.strangers.values())))
                header.update(alg=key.alg, kid=key.kid, jwk=key.public_jwk)
                signer = f"stranger:{key.alg}"
            else:
                target = header if name in HEADER_FIELDS else claims
                values = (
                    header_values(setting, name)
                    if name in HEADER_FIELDS
                    else claim_values(setting, name, now)
                )
                drop = draw(st.sampled_from([False, False, False, True]))
                value = DROP if drop else draw(values)
                if value is DROP:
                    target.pop(name, None)
                else:
                    target[name] = value
        return Spec(header, claims, signer)

    return draw()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(spec: Spec, keys: Keys | None = None) -> str:
    """The compact JWS: any header and claims (NaN, 400-digit ints), any signer."""
    header = b64url(json.dumps(spec.header).encode())
    payload = b64url(json.dumps(spec.claims).encode())
    signing_input = f"{header}.{payload}".encode()
    kind, _, name = spec.signer.partition(":")
    if kind in ("secret", "other-secret"):
        secret = SECRET if kind == "secret" else "another-secret-" + "y" * 40
        signature = hmac.digest(secret.encode(), signing_input, "sha256")
    elif kind == "none":
        signature = b""
    elif kind == "junk":
        signature = b"\x01" * 64
    else:
        assert keys is not None, spec.signer
        by_kid = {k.kid: k for k in keys.published}
        key = by_kid[name] if kind == "jwks" else keys.strangers[name]
        signature = get_default_algorithms()[key.alg].sign(signing_input, key.private)
    return f"{header}.{payload}.{b64url(signature)}"


@dataclass
class Verdict:
    """What the service must make of a token."""

    user: uuid.UUID | None = None  # accepted as this user
    api_key: bool = False  # accepted as the legacy service_role API key
    hints: set[str] = field(default_factory=set)  # refused: one of these is in the message
    denied: bool = False  # a verified token refused for who it is (PERMISSION_DENIED)
    unauthenticated: bool = False  # refused before the claims count (UNAUTHENTICATED)

    @property
    def accepted(self) -> bool:
        return self.user is not None or self.api_key


def is_date(value: Any) -> bool:
    """A NumericDate: a JSON number, not a bool, not NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def canonical_uuid(text: str) -> uuid.UUID | None:
    """The UUID `text` spells in 8-4-4-4-12 hex digits (either case), or None."""
    parts = text.split("-")
    if [len(p) for p in parts] != [8, 4, 4, 4, 12]:
        return None
    if any(c not in "0123456789abcdefABCDEF" for c in "".join(parts)):
        return None
    return uuid.UUID(text)


def verdict(spec: Spec, setting: Setting) -> Verdict:
    """The service's contract for this token, written from the rules, not the code."""
    header, claims, out = spec.header, spec.claims, Verdict()
    now = time.time()
    # The header: no key pointers, crit only for extensions PyJWT implements
    # (b64, RFC 7797) and then present, a string kid, a real algorithm.
    for name in ("jku", "x5u", "jwk", "x5c"):
        if name in header:
            out.hints.add(f"'{name}' header")
    if "crit" in header:
        crit = header["crit"]
        listed = isinstance(crit, list) and bool(crit) and all(c == "b64" for c in crit)
        if not (listed and "b64" in header):
            out.hints.add("'crit'")
    if header.get("b64", True) is False:
        out.hints.add("malformed")  # an unencoded payload; this service reads none
    kid, alg = header.get("kid"), header.get("alg")
    if "kid" in header and not isinstance(kid, str):
        out.hints.add("'kid'")
    if not isinstance(alg, str) or not alg:
        out.hints.add("algorithm")
    elif alg.lower() == "none":
        out.hints.add("unsigned")
    # The key: the JWKS key the kid names (mixed server), else the secret for HS256.
    published = {k.kid: k for k in setting.keys.published} if setting.mixed else {}
    if isinstance(kid, str) and kid in published:
        trusted = alg == published[kid].alg and spec.signer == f"jwks:{kid}"
    else:
        trusted = alg == "HS256" and spec.signer == "secret"
    if not trusted:
        out.hints |= {"algorithm", "signature", "'kid'", "key this service does not know"}
        out.hints.add("malformed")
    out.unauthenticated = bool(out.hints)
    # Claims of every token: exp required, dates typed and current, sub and jti strings.
    if claims.get("exp") is None or not is_date(claims["exp"]):
        out.hints.add("'exp'")
    elif claims["exp"] <= now - 5:
        out.hints.add("expired")
    for name in ("nbf", "iat"):
        if name in claims and not is_date(claims[name]):
            out.hints.add(f"'{name}'")
        elif name in claims and claims[name] > now + 5:
            out.hints.add(f"'{name}' is in the future")
    if "sub" in claims and not isinstance(claims["sub"], str):
        out.hints.add("'sub'")
    if "jti" in claims and not isinstance(claims["jti"], str):
        out.hints.add("'jti'")
    role = claims.get("role", "authenticated")
    if not (isinstance(role, str) and role in ("authenticated", "service_role")):
        out.hints.add("role")
        out.denied = not out.hints - {"role"}
    api_key = role == "service_role" and "sub" not in claims
    if api_key and not (spec.signer == "secret" and claims.get("iss") == "supabase"):
        out.hints.add("'sub'")
    # A user token: a canonical user UUID, the audience, the issuer, a boolean is_anonymous.
    user: uuid.UUID | None = None
    if not api_key:
        sub = claims.get("sub")
        user = canonical_uuid(sub) if isinstance(sub, str) else None
        if user is None:
            out.hints.add("'sub'")
        aud = claims.get("aud", DROP)
        if aud is DROP:
            out.hints.add("'aud'")
        elif AUDIENCE not in (aud if isinstance(aud, list) else [aud]):
            out.hints.add("audience")
        if setting.issuer is not None and claims.get("iss") != setting.issuer:
            out.hints.add("issued by")
        anonymous = claims.get("is_anonymous", False)
        if not isinstance(anonymous, bool):
            out.hints.add("'is_anonymous'")
        elif anonymous:
            out.hints.add("anonymous")
            out.denied = out.hints == {"anonymous"}
    if not out.hints:
        out.user, out.api_key = user, api_key
    return out


def assert_refusal(v: Verdict, denied: bool, message: str, reason: str) -> None:
    """A refusal of the right kind, whose message names one of the token's defects."""
    assert not v.accepted, f"a valid token was refused: {message}"
    assert reason in REASONS, reason
    assert any(hint in message for hint in v.hints), (message, v.hints)
    if v.unauthenticated:
        assert not denied, message
    if v.denied:
        assert denied, message


class TestVerifier:
    """The Authenticator alone: many examples, no network."""

    @settings(max_examples=400, deadline=None)
    @given(data=st.data(), mixed=st.booleans())
    def test_tokens_are_accepted_exactly_when_valid(
        self, keys: Keys, data: st.DataObject, mixed: bool
    ) -> None:
        """Any header, claims and signer: a principal iff valid, else a domain error saying why."""
        setting = Setting(uuid.uuid4(), uuid.uuid4(), keys, mixed)
        spec = data.draw(specs(setting))
        v = verdict(spec, setting)
        auth = verifier(keys, mixed)
        try:
            who = auth.authenticate([("authorization", f"Bearer {sign(spec, keys)}")])
        except (Unauthenticated, PermissionDenied) as exc:
            event(f"refused {exc.reason}")
            assert_refusal(v, isinstance(exc, PermissionDenied), exc.message, exc.reason)
            return
        event("accepted")
        assert v.accepted, f"accepted an invalid token: {spec} ({v.hints})"
        assert who.user_id == v.user and who.is_api_key == v.api_key
        assert keys.trap.connections == 0


class StaticJwks:
    """The JWKS source `KeySet` reads, holding the endpoint's keys (no fetching)."""

    version = 1

    def __init__(self, found: dict[str, VerificationKey]) -> None:
        self._keys = found

    def get(self, kid: str) -> VerificationKey | None:
        return self._keys.get(kid)

    def note_unknown_kid(self, kid: str) -> None:
        pass


def verifier(keys: Keys, mixed: bool) -> Authenticator:
    if not mixed:
        return Authenticator(HS256Secret(SECRET))
    found = parse_jwks(keys.endpoint.document())
    return Authenticator(KeySet(StaticJwks(found), SECRET), issuer=ISSUER)


async def call(client: Client, guests: Guests, token: str) -> frozenset[str]:
    response = await client.feed.ListMessages(
        feed_pb2.ListMessagesRequest(event_id=str(guests.event)),
        metadata=[("authorization", f"Bearer {token}")],
        timeout=10,
    )
    return frozenset(m.message_id for m in response.messages)


async def check_on_the_wire(client: Client, guests: Guests, setting: Setting, spec: Spec) -> None:
    """One token against a real server: the verdict's outcome, and nobody else's messages."""
    v = verdict(spec, setting)
    token = sign(spec, setting.keys)
    try:
        got = await call(client, guests, token)
    except grpc.aio.AioRpcError as err:
        code, details = err.code(), err.details() or ""
        assert code not in NEVER, (code, details, spec)
        info = error_info(err)
        assert info is not None and info.domain == "guestfeed.v1", details
        event(f"{code.name} {info.reason}")
        if code is grpc.StatusCode.PERMISSION_DENIED and info.reason == "NOT_EVENT_GUEST":
            assert v.user is not None and v.user not in (guests.a, guests.b), details
        elif code is grpc.StatusCode.PERMISSION_DENIED and info.reason == "USER_REQUIRED":
            assert v.api_key, details
        else:
            denied = code is grpc.StatusCode.PERMISSION_DENIED
            assert denied or code is grpc.StatusCode.UNAUTHENTICATED, (code, details)
            assert_refusal(v, denied, details, info.reason)
        for part in token.split("."):
            assert len(part) < 16 or part not in details, "the error quotes the token"
    else:
        event("served")
        assert v.user in (guests.a, guests.b), f"served an invalid token: {spec} ({v.hints})"
        other = guests.b if v.user == guests.a else guests.a
        assert guests.direct[other] not in got, "another guest's direct message"
        assert got == guests.feeds[v.user]
    assert setting.keys.trap.connections == 0, "the service fetched a URL a token named"


class TestOverTheWire:
    @FUZZ
    @given(data=st.data())
    async def test_hs256_server(
        self, client: Client, guests: Guests, keys: Keys, data: st.DataObject
    ) -> None:
        """HS256-only server: exactly the valid tokens read, each its own guest's feed only."""
        setting = Setting(guests.a, guests.b, keys, mixed=False)
        await check_on_the_wire(client, guests, setting, data.draw(specs(setting)))

    @FUZZ
    @given(data=st.data())
    async def test_jwks_and_secret_server(
        self, mixed: Client, guests: Guests, keys: Keys, data: st.DataObject
    ) -> None:
        """JWKS + secret + issuer: exactly the valid tokens read, each its own guest's feed only."""
        setting = Setting(guests.a, guests.b, keys, mixed=True)
        await check_on_the_wire(mixed, guests, setting, data.draw(specs(setting)))


def hs256(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token signed with the project secret; the header and claims as given."""
    return sign(Spec(header, claims, "secret"))


def user_claims(user: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": str(user), "aud": AUDIENCE, "role": "authenticated", "iat": now}
    claims["exp"] = now + 600
    claims.update(overrides)
    return claims


async def refusal(client: Client, guests: Guests, token: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(client, guests, token)
    return caught.value


HS = {"alg": "HS256", "typ": "JWT"}


class TestRegressions:
    """What fuzzing found, pinned by name (each was INTERNAL or a misleading message)."""

    async def test_exp_beyond_float_range_is_served_not_internal(
        self, client: Client, guests: Guests
    ) -> None:
        """A 400-digit exp was INTERNAL (float() overflow); it is a valid far-future date."""
        token = hs256(HS, user_claims(guests.a, exp=10**400))
        assert await call(client, guests, token) == guests.feeds[guests.a]

    @pytest.mark.parametrize(
        ("claim", "value"),
        [
            ("exp", "99999999999"),
            ("exp", True),
            ("exp", float("nan")),
            ("exp", float("inf")),
            ("nbf", "0"),
            ("nbf", None),
            ("iat", False),
            ("iat", float("-inf")),
        ],
    )
    async def test_dates_must_be_json_numbers(
        self, client: Client, guests: Guests, claim: str, value: Any
    ) -> None:
        """A string, bool, NaN or infinite date is refused, naming the claim (was taken)."""
        token = hs256(HS, user_claims(guests.a, **{claim: value}))
        err = await refusal(client, guests, token)
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        assert f"'{claim}' must be a number of seconds since the epoch" in (err.details() or "")

    @pytest.mark.parametrize("spelling", ["braces", "urn", "hex", "moved-hyphens"])
    async def test_sub_must_be_a_canonical_uuid(
        self, client: Client, guests: Guests, spelling: str
    ) -> None:
        """Another spelling of a guest's UUID in sub is refused (it read that guest's feed)."""
        hex_ = guests.a.hex
        sub = {
            "braces": f"{{{guests.a}}}",
            "urn": f"urn:uuid:{guests.a}",
            "hex": hex_,
            "moved-hyphens": f"{hex_[:4]}-{hex_[4:20]}-{hex_[20:]}",
        }[spelling]
        err = await refusal(client, guests, hs256(HS, user_claims(guests.a, sub=sub)))
        assert "'sub' must be a user UUID" in (err.details() or "")

    async def test_upper_case_sub_is_the_same_guest(self, client: Client, guests: Guests) -> None:
        """The canonical form in upper case is still that guest (UUIDs are case-insensitive)."""
        token = hs256(HS, user_claims(guests.a, sub=str(guests.a).upper()))
        assert await call(client, guests, token) == guests.feeds[guests.a]

    @pytest.mark.parametrize("sub", [5, None, ["x"], {"id": 1}])
    async def test_non_string_sub_names_sub(self, client: Client, guests: Guests, sub: Any) -> None:
        """A sub of another JSON type is refused naming sub (was 'malformed or signature')."""
        err = await refusal(client, guests, hs256(HS, user_claims(guests.a, sub=sub)))
        assert "'sub' must be a user UUID" in (err.details() or "")

    @pytest.mark.parametrize(
        "header",
        [
            {**HS, "crit": ["exp"]},
            {**HS, "crit": ["http://example.com/ext"], "http://example.com/ext": 1},
            {**HS, "crit": []},
            {**HS, "crit": "b64"},
            {**HS, "crit": [1]},
            {**HS, "crit": ["b64"]},
        ],
    )
    async def test_crit_naming_what_is_not_understood_is_refused(
        self, client: Client, guests: Guests, header: dict[str, Any]
    ) -> None:
        """RFC 7515 4.1.11: unknown, empty, mistyped or absent crit extensions are refused."""
        err = await refusal(client, guests, hs256(header, user_claims(guests.a)))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "'crit' header is not accepted" in (err.details() or "")

    @pytest.mark.parametrize(
        ("header", "text"),
        [
            ({**HS, "kid": 7}, "'kid' header must be a string"),
            ({"typ": "JWT"}, "names no algorithm"),
            ({"alg": ["HS256"]}, "names no algorithm"),
            ({"alg": ""}, "names no algorithm"),
        ],
    )
    async def test_mistyped_kid_or_alg_is_named(
        self, client: Client, guests: Guests, header: dict[str, Any], text: str
    ) -> None:
        """A non-string kid or a missing/non-string alg is refused naming it (was generic)."""
        err = await refusal(client, guests, hs256(header, user_claims(guests.a)))
        assert text in (err.details() or "")

    @pytest.mark.parametrize("name", ["jku", "x5u"])
    async def test_key_urls_are_never_fetched(
        self, mixed: Client, guests: Guests, keys: Keys, name: str
    ) -> None:
        """jku/x5u naming a live server, with a known or unknown kid, cause no request to it."""
        for kid in ("es-1", "never-published"):
            header = {"alg": "ES256", "kid": kid, name: f"{keys.trap.url}/jwks.json"}
            spec = Spec(header, user_claims(guests.a, iss=ISSUER), "jwks:es-1")
            err = await refusal(mixed, guests, sign(spec, keys))
            assert f"'{name}' header is not accepted" in (err.details() or "")
        assert keys.trap.connections == 0
