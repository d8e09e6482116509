"""Bearer-token authentication over the wire: what is refused, how, and what is not leaked."""

from __future__ import annotations

import base64
import hmac
import json
import time
import uuid
from typing import Any

import grpc
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_server.auth import AUDIENCE, Authenticator, HS256Secret, Role
from guestfeed_server.domain.errors import PermissionDenied, Unauthenticated

from .conftest import SECRET, Client
from .helpers import error_info, rich_status

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid Supabase-like claims; an override of None drops the claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": str(uuid.uuid4()),
        "aud": AUDIENCE,
        "role": "authenticated",
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=algorithm)


def b64url(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256_raw(payload: dict[str, Any], secret: str = SECRET) -> str:
    """Signs any JSON payload with HS256 by hand; PyJWT's encoder rejects some claim types."""
    signing_input = f"{b64url({'alg': 'HS256', 'typ': 'JWT'})}.{b64url(payload)}"
    mac = hmac.digest(secret.encode(), signing_input.encode(), "sha256")
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def unsigned(payload: dict[str, Any], header: dict[str, Any], signature: str = "") -> str:
    """A hand-made token with any header; PyJWT refuses to build these."""
    return f"{b64url(header)}.{b64url(payload)}.{signature}"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def rejection(client: Client, metadata: list[tuple[str, str]] | None) -> grpc.aio.AioRpcError:
    """The error ListMessages ends with for this metadata (auth precedes everything else)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(event_id=str(uuid.uuid4())), metadata=metadata
        )
    return caught.value


def assert_unauthenticated(err: grpc.aio.AioRpcError, hint: str, reason: str, token: str) -> None:
    """UNAUTHENTICATED, a message containing `hint`, ErrorInfo, and no trace of the token."""
    assert err.code() == UNAUTHENTICATED, err.details()
    assert hint in (err.details() or "")
    info = error_info(err)
    assert info is not None
    assert (info.domain, info.reason) == ("guestfeed.v1", reason)
    status = rich_status(err)
    assert status is not None
    if token:
        assert token not in (err.details() or "")
        assert token not in status.SerializeToString().decode("latin-1")
        # Nor any of its parts (a signature or payload is as good as the token to a log reader).
        for part in token.split("."):
            if len(part) >= 8:
                assert part not in (err.details() or "")


class TestMissingOrMalformedHeader:
    async def test_missing_authorization_is_unauthenticated(self, client: Client) -> None:
        """No authorization metadata: UNAUTHENTICATED, telling the caller which header to send."""
        err = await rejection(client, None)
        assert_unauthenticated(err, "authorization: Bearer <JWT>", "TOKEN_MISSING", "")

    @pytest.mark.parametrize("scheme", ["Basic", "Token", "JWT", "Bearer:"])
    async def test_non_bearer_scheme_is_unauthenticated(self, client: Client, scheme: str) -> None:
        """A scheme other than Bearer is refused, naming the expected form."""
        token = Client.token(uuid.uuid4())
        err = await rejection(client, [("authorization", f"{scheme} {token}")])
        assert_unauthenticated(err, "'Bearer <JWT>'", "TOKEN_INVALID", token)

    async def test_bare_token_without_scheme_is_unauthenticated(self, client: Client) -> None:
        """A token sent without the 'Bearer ' prefix is refused, naming the expected form."""
        token = Client.token(uuid.uuid4())
        err = await rejection(client, [("authorization", token)])
        assert_unauthenticated(err, "'Bearer <JWT>'", "TOKEN_INVALID", token)

    @pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer    "])
    async def test_empty_token_is_unauthenticated(self, client: Client, value: str) -> None:
        """'Bearer' with nothing after it is refused, naming the expected form."""
        err = await rejection(client, [("authorization", value)])
        assert_unauthenticated(err, "'Bearer <JWT>'", "TOKEN_INVALID", "")

    async def test_two_authorization_entries_are_unauthenticated(self, client: Client) -> None:
        """Two authorization entries are ambiguous and refused, even if both are valid."""
        token = Client.token(uuid.uuid4())
        err = await rejection(client, bearer(token) + bearer(token))
        assert_unauthenticated(err, "exactly one 'authorization'", "TOKEN_INVALID", token)

    async def test_lowercase_bearer_scheme_is_accepted(self, client: Client) -> None:
        """The scheme is case-insensitive, as HTTP auth schemes are."""
        user = uuid.uuid4()
        resp = await client.rollout.GetReadModel(
            rollout_pb2.GetReadModelRequest(event_id=str(uuid.uuid4()), user_id=str(user)),
            metadata=[("authorization", f"bearer {Client.token(user)}")],
        )
        assert resp.read_model == feed_pb2.READ_MODEL_V1


class TestTokenVerification:
    async def test_alg_none_is_unauthenticated(self, client: Client) -> None:
        """An unsigned `alg: none` token is refused as a wrong algorithm."""
        token = unsigned(claims(), {"alg": "none", "typ": "JWT"})
        err = await rejection(client, bearer(token))
        assert_unauthenticated(err, "unsigned tokens never are", "TOKEN_INVALID", token)

    @pytest.mark.parametrize("alg", ["None", "NONE", "nOnE"])
    async def test_alg_none_in_any_case_is_unauthenticated(self, client: Client, alg: str) -> None:
        """Case variants of `none` are refused too."""
        token = unsigned(claims(), {"alg": alg, "typ": "JWT"})
        err = await rejection(client, bearer(token))
        assert_unauthenticated(err, "unsigned tokens never are", "TOKEN_INVALID", token)

    @pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
    async def test_hs512_token_is_unauthenticated(self, client: Client) -> None:
        """A token signed with the right secret but HS512 is refused: only HS256 is accepted."""
        token = sign(claims(), algorithm="HS512")
        err = await rejection(client, bearer(token))
        assert_unauthenticated(err, "not accepted (HS256 only)", "TOKEN_INVALID", token)

    @pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA"])
    async def test_asymmetric_alg_header_is_unauthenticated(self, client: Client, alg: str) -> None:
        """An asymmetric alg header (key-confusion attempt) is refused as a wrong algorithm."""
        sig = base64.urlsafe_b64encode(b"\x01" * 64).rstrip(b"=").decode()
        token = unsigned(claims(), {"alg": alg, "typ": "JWT"}, sig)
        err = await rejection(client, bearer(token))
        assert_unauthenticated(err, "not accepted (HS256 only)", "TOKEN_INVALID", token)

    async def test_wrong_signature_is_unauthenticated(self, client: Client) -> None:
        """A token signed with another secret is refused as not verifying."""
        token = sign(claims(), secret="another-secret-" + "y" * 40)
        err = await rejection(client, bearer(token))
        assert_unauthenticated(err, "signature does not verify", "TOKEN_INVALID", token)

    async def test_tampered_payload_is_unauthenticated(self, client: Client) -> None:
        """Swapping the payload of a valid token (e.g. to service_role) breaks its signature."""
        header, _, signature = sign(claims()).split(".")
        token = f"{header}.{b64url(claims(role='service_role'))}.{signature}"
        err = await rejection(client, bearer(token))
        assert_unauthenticated(err, "signature does not verify", "TOKEN_INVALID", token)

    @pytest.mark.parametrize(
        "garbage", ["not-a-jwt", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9"]
    )
    async def test_garbage_token_is_unauthenticated(self, client: Client, garbage: str) -> None:
        """Strings that are not JWTs are refused as malformed."""
        err = await rejection(client, bearer(garbage))
        assert err.code() == UNAUTHENTICATED
        assert "malformed" in (err.details() or "")


class TestClaims:
    async def test_expired_token_is_unauthenticated(self, client: Client) -> None:
        """A token whose exp is past (beyond the leeway) is refused with 'sign in again'."""
        token = sign(claims(exp=int(time.time()) - 60, iat=int(time.time()) - 700))
        err = await rejection(client, bearer(token))
        assert_unauthenticated(err, "expired; sign in again", "TOKEN_EXPIRED", token)

    async def test_exp_within_leeway_is_accepted(self, client: Client) -> None:
        """A token that expired a moment ago (inside the 5 s clock-skew leeway) still works."""
        user = uuid.uuid4()
        token = sign(claims(sub=str(user), exp=int(time.time()) - 1))
        resp = await client.rollout.GetReadModel(
            rollout_pb2.GetReadModelRequest(event_id=str(uuid.uuid4()), user_id=str(user)),
            metadata=bearer(token),
        )
        assert resp.read_model == feed_pb2.READ_MODEL_V1

    @pytest.mark.parametrize("claim", ["exp", "sub", "aud"])
    async def test_missing_required_claim_is_unauthenticated(
        self, client: Client, claim: str
    ) -> None:
        """A token without exp, sub or aud is refused, naming the missing claim."""
        token = sign(claims(**{claim: None}))
        err = await rejection(client, bearer(token))
        assert_unauthenticated(err, f"lacks the required '{claim}' claim", "TOKEN_INVALID", token)

    @pytest.mark.parametrize("sub", ["alice", "12345", "", "00000000-0000-0000-0000-00000000000"])
    async def test_sub_not_a_uuid_is_unauthenticated(self, client: Client, sub: str) -> None:
        """A sub that is not a user UUID is refused, saying what sub must be."""
        token = sign(claims(sub=sub))
        err = await rejection(client, bearer(token))
        assert_unauthenticated(err, "'sub' must be a user UUID", "TOKEN_INVALID", token)

    @pytest.mark.parametrize("aud", ["anon", "service_role", "authenticated-x", ["other"]])
    async def test_wrong_audience_is_unauthenticated(self, client: Client, aud: Any) -> None:
        """A token for another audience is refused, naming the expected one."""
        token = sign(claims(aud=aud))
        err = await rejection(client, bearer(token))
        assert_unauthenticated(err, "audience must be 'authenticated'", "TOKEN_INVALID", token)

    @pytest.mark.parametrize("role", ["anon", "supabase_admin", "AUTHENTICATED", ""])
    async def test_unknown_role_is_permission_denied(self, client: Client, role: str) -> None:
        """A verified token with a role the service does not serve is PERMISSION_DENIED."""
        token = sign(claims(role=role))
        err = await rejection(client, bearer(token))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "expected 'authenticated' or 'service_role'" in (err.details() or "")
        info = error_info(err)
        assert info is not None
        assert (info.domain, info.reason) == ("guestfeed.v1", "ROLE_NOT_ALLOWED")
        assert token not in (err.details() or "")


class TestEveryRpcAuthenticates:
    async def test_stream_messages_requires_a_token(self, client: Client) -> None:
        """StreamMessages without a token fails UNAUTHENTICATED before any response."""
        call = client.feed.StreamMessages(
            feed_pb2.StreamMessagesRequest(event_id=str(uuid.uuid4()))
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                raise AssertionError("no response may precede the auth failure")
        assert_unauthenticated(caught.value, "authorization: Bearer <JWT>", "TOKEN_MISSING", "")

    async def test_get_read_model_rejects_a_bad_signature(self, client: Client) -> None:
        """GetReadModel refuses a token that does not verify."""
        user = uuid.uuid4()
        token = sign(claims(sub=str(user)), secret="nope-" + "z" * 40)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.rollout.GetReadModel(
                rollout_pb2.GetReadModelRequest(event_id=str(uuid.uuid4()), user_id=str(user)),
                metadata=bearer(token),
            )
        assert_unauthenticated(caught.value, "signature does not verify", "TOKEN_INVALID", token)


# Metadata values must be printable ASCII; the client library refuses anything else.
printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300)


# Claim values of every JSON type, including ones a claim should never hold.
junk = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.text(max_size=40)
    | st.lists(st.text(max_size=10), max_size=3)
)


class TestArbitraryTokens:
    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        token=printable
        | printable.map(lambda s: "eyJ" + s)
        | st.lists(printable, min_size=3, max_size=3).map(".".join)
    )
    async def test_arbitrary_bearer_token_is_only_ever_unauthenticated(
        self, client: Client, token: str
    ) -> None:
        """Any string as the bearer token ends in UNAUTHENTICATED, never INTERNAL or UNKNOWN."""
        err = await rejection(client, [("authorization", f"Bearer {token}")])
        assert err.code() == UNAUTHENTICATED, (err.code(), err.details())
        info = error_info(err)
        assert info is not None and info.domain == "guestfeed.v1"
        if len(token) >= 12:
            assert token not in (err.details() or "")

    @settings(max_examples=25, deadline=None)
    @given(
        payload=st.fixed_dictionaries(
            {},
            optional={
                "sub": st.uuids().map(str) | junk,
                "aud": st.just(AUDIENCE) | junk,
                "exp": st.just(int(time.time()) + 600) | junk,
                "role": st.sampled_from([r.value for r in Role]) | junk,
                "iat": junk,
                "nbf": junk,
                "iss": junk,
            },
        )
    )
    def test_authenticator_raises_only_domain_errors(self, payload: dict[str, Any]) -> None:
        """Signed tokens with arbitrary claim values yield a principal or a domain error."""
        auth = Authenticator(HS256Secret(SECRET))
        token = hs256_raw(payload)
        try:
            who = auth.authenticate([("authorization", f"Bearer {token}")])
        except (Unauthenticated, PermissionDenied):
            return
        assert who.user_id == uuid.UUID(str(payload["sub"]))
        assert who.role in (Role.AUTHENTICATED, Role.SERVICE_ROLE)
