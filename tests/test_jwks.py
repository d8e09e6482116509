"""Asymmetric user tokens from a real JWKS endpoint: acceptance, rotation, outages, attacks."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_server.api.server import JWKS_HEALTH_NAME
from guestfeed_server.auth import JwksKeys

from .conftest import Client, start_client
from .factory import World
from .helpers import error_info
from .jwks_server import ISSUER, JwksServer, SigningKey, user_claims

PAGE_KEY = "page-token-key-" + "p" * 40
# JWKS + issuer + page-token secret, and no HS256 secret: a new Supabase project.
JWKS_ONLY = {
    "GUESTFEED_JWT_SECRET": "",
    "GUESTFEED_JWT_ISSUER": ISSUER,
    "GUESTFEED_PAGE_TOKEN_SECRET": PAGE_KEY,
}


@pytest.fixture
def endpoint() -> Iterator[JwksServer]:
    """A JWKS endpoint with one ES256 and one RS256 key."""
    server = JwksServer().start()
    server.add("ES256", "es-1")
    server.add("RS256", "rs-1")
    yield server
    server.stop()


def quick_jwks(endpoint: JwksServer, **overrides: float) -> JwksKeys:
    """The production cache with test-sized intervals (production: 30 s floor and rate)."""
    options: dict[str, float] = {
        "min_refresh_s": 0.2,
        "max_refresh_s": 0.2,
        "default_refresh_s": 0.2,
        "unknown_kid_interval_s": 0.2,
        **overrides,
    }
    return JwksKeys(endpoint.url, **options)  # type: ignore[arg-type]


@pytest.fixture
async def jwks_client(admin_dsn: str, endpoint: JwksServer) -> AsyncIterator[Client]:
    """A server configured with only the JWKS, the issuer and a page-token key."""
    c = await start_client(
        admin_dsn,
        jwks=quick_jwks(endpoint),
        GUESTFEED_JWKS_URL=endpoint.url,
        **JWKS_ONLY,
    )
    yield c
    await c.stop()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def guest_feed(world: World) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """An event with one member and one announcement delivered to them."""
    event = await world.event()
    user, guest = await world.member(event)
    mid = await world.message(event, "announcement")
    await world.deliver(mid, guest_id=guest, user_id=user)
    return event, user, mid


async def list_page(client: Client, event: uuid.UUID, token: str, **kw: Any) -> Any:
    return await client.feed.ListMessages(
        feed_pb2.ListMessagesRequest(event_id=str(event), **kw), metadata=bearer(token)
    )


async def refused(client: Client, event: uuid.UUID, token: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_page(client, event, token)
    return caught.value


def reason(err: grpc.aio.AioRpcError) -> str:
    info = error_info(err)
    assert info is not None, err.details()
    return str(info.reason)


async def eventually(check: Any, timeout_s: float = 5.0) -> None:
    """Retries an async check until it stops raising AssertionError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


class TestAcceptance:
    @pytest.mark.parametrize("kid", ["es-1", "rs-1"])
    async def test_es256_and_rs256_users_read_their_feed(
        self, jwks_client: Client, endpoint: JwksServer, world: World, kid: str
    ) -> None:
        """A user token signed with a JWKS key (ES256 or RS256) reads the feed, pages included."""
        event, user, mid = await guest_feed(world)
        await world.message(event, "announcement")  # a second page in v2
        token = endpoint.sign(user_claims(user), endpoint.keys[kid])
        first = await list_page(jwks_client, event, token, page_size=1)
        assert [m.message_id for m in first.messages] == [str(mid)]
        assert first.next_page_token == ""  # v1 by the rollout: one delivered message

    async def test_eddsa_keys_are_accepted_too(
        self, jwks_client: Client, endpoint: JwksServer, world: World
    ) -> None:
        """An Ed25519 key published in the JWKS verifies EdDSA tokens."""
        key = endpoint.add("EdDSA", "ed-1")
        event, user, _ = await guest_feed(world)
        token = endpoint.sign(user_claims(user), key)

        async def accepted() -> None:
            try:
                await list_page(jwks_client, event, token)
            except grpc.aio.AioRpcError as err:
                raise AssertionError(err.details()) from None

        await eventually(accepted)

    async def test_wrong_issuer_is_refused(
        self, jwks_client: Client, endpoint: JwksServer, world: World
    ) -> None:
        """A token from another project (other iss) is UNAUTHENTICATED, naming both issuers."""
        event, user, _ = await guest_feed(world)
        other = "https://otherproject.supabase.co/auth/v1"
        token = endpoint.sign(user_claims(user, issuer=other), endpoint.keys["es-1"])
        err = await refused(jwks_client, event, token)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(err) == "TOKEN_WRONG_ISSUER"
        assert other in (err.details() or "") and ISSUER in (err.details() or "")

    async def test_wrong_audience_is_refused(
        self, jwks_client: Client, endpoint: JwksServer, world: World
    ) -> None:
        """A JWKS-signed token for another audience is UNAUTHENTICATED."""
        event, user, _ = await guest_feed(world)
        token = endpoint.sign(user_claims(user, aud="anon"), endpoint.keys["es-1"])
        err = await refused(jwks_client, event, token)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "audience must be 'authenticated'" in (err.details() or "")

    @pytest.mark.parametrize(
        ("claim", "text"), [("nbf", "'nbf' is in the future"), ("iat", "'iat' is in the future")]
    )
    async def test_tokens_from_the_future_say_so(
        self, jwks_client: Client, endpoint: JwksServer, world: World, claim: str, text: str
    ) -> None:
        """nbf or iat beyond the leeway is UNAUTHENTICATED TOKEN_NOT_YET_VALID, naming the claim."""
        event, user, _ = await guest_feed(world)
        claims = user_claims(user, **{claim: int(time.time()) + 300})
        err = await refused(jwks_client, event, endpoint.sign(claims, endpoint.keys["es-1"]))
        assert reason(err) == "TOKEN_NOT_YET_VALID"
        assert text in (err.details() or "")

    async def test_expired_token_is_refused(
        self, jwks_client: Client, endpoint: JwksServer, world: World
    ) -> None:
        """An expired JWKS-signed token is TOKEN_EXPIRED."""
        event, user, _ = await guest_feed(world)
        claims = user_claims(user, exp=int(time.time()) - 60, iat=int(time.time()) - 700)
        err = await refused(jwks_client, event, endpoint.sign(claims, endpoint.keys["rs-1"]))
        assert reason(err) == "TOKEN_EXPIRED"


class TestRotation:
    async def test_unknown_kid_is_refused_and_names_the_cause(
        self, jwks_client: Client, endpoint: JwksServer, world: World
    ) -> None:
        """A token whose kid is in no JWKS is UNAUTHENTICATED SIGNING_KEY_UNKNOWN."""
        from .jwks_server import new_key

        event, user, _ = await guest_feed(world)
        stranger = new_key("ES256", "never-published")
        token = endpoint.sign(user_claims(user), stranger)
        err = await refused(jwks_client, event, token)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(err) == "SIGNING_KEY_UNKNOWN"

    async def test_a_key_added_later_is_accepted_without_a_restart(
        self, jwks_client: Client, endpoint: JwksServer, world: World
    ) -> None:
        """A standby key published after start-up verifies tokens once the JWKS is re-read."""
        event, user, _ = await guest_feed(world)
        standby = endpoint.add("ES256", "es-2")
        token = endpoint.sign(user_claims(user), standby)

        async def accepted() -> None:
            try:
                await list_page(jwks_client, event, token)
            except grpc.aio.AioRpcError as err:
                raise AssertionError(err.details()) from None

        await eventually(accepted)

    async def test_a_removed_key_is_refused_after_the_next_refresh(
        self, jwks_client: Client, endpoint: JwksServer, world: World
    ) -> None:
        """A revoked key's tokens, accepted (and cached) before, are refused after a refresh."""
        event, user, _ = await guest_feed(world)
        token = endpoint.sign(user_claims(user), endpoint.keys["rs-1"])
        await list_page(jwks_client, event, token)  # accepted, and now in the verified cache
        endpoint.remove("rs-1")

        async def refused_now() -> None:
            try:
                await list_page(jwks_client, event, token)
            except grpc.aio.AioRpcError as err:
                assert reason(err) == "SIGNING_KEY_UNKNOWN"
            else:
                raise AssertionError("the revoked key's token was still accepted")

        await eventually(refused_now)


class TestEndpointFailures:
    async def test_last_good_keys_keep_working_while_the_endpoint_is_down(
        self, jwks_client: Client, endpoint: JwksServer, world: World
    ) -> None:
        """503s: tokens still verify, health reports the JWKS NOT_SERVING, then SERVING again."""
        event, user, _ = await guest_feed(world)
        token = endpoint.sign(user_claims(user), endpoint.keys["es-1"])
        health = health_pb2_grpc.HealthStub(jwks_client.channel)

        async def jwks_status(expected: int) -> None:
            got = await health.Check(health_pb2.HealthCheckRequest(service=JWKS_HEALTH_NAME))
            assert got.status == expected

        await eventually(lambda: jwks_status(health_pb2.HealthCheckResponse.SERVING))
        endpoint.status = 503
        await eventually(lambda: jwks_status(health_pb2.HealthCheckResponse.NOT_SERVING))
        fresh = endpoint.sign(user_claims(user), endpoint.keys["es-1"])  # not in the cache
        assert (await list_page(jwks_client, event, fresh)).messages
        assert (await list_page(jwks_client, event, token)).messages
        endpoint.status = 200
        await eventually(lambda: jwks_status(health_pb2.HealthCheckResponse.SERVING))
        overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert overall.status == health_pb2.HealthCheckResponse.SERVING

    async def test_a_flood_of_unknown_kids_costs_one_fetch_per_interval(
        self, admin_dsn: str, endpoint: JwksServer, world: World
    ) -> None:
        """300 tokens with forged kids in a burst make at most one extra JWKS request."""
        c = await start_client(
            admin_dsn,
            # The production rate limit (30 s) and refresh floor.
            jwks=JwksKeys(endpoint.url),
            GUESTFEED_JWKS_URL=endpoint.url,
            **JWKS_ONLY,
        )
        try:
            event, user, _ = await guest_feed(world)
            from .jwks_server import new_key

            forged = [new_key("ES256", f"forged-{i}") for i in range(3)]
            before = endpoint.hits
            for i in range(300):
                token = endpoint.sign(user_claims(user), forged[i % 3])
                err = await refused(c, event, token)
                assert reason(err) == "SIGNING_KEY_UNKNOWN"
            await asyncio.sleep(0.3)  # let the one allowed refetch finish
            assert endpoint.hits - before == 1
        finally:
            await c.stop()


def hs256_by_hand(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """An HS256 token with any header and key (PyJWT refuses to HMAC with a public key)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.digest(key, signing_input.encode(), "sha256")
    return f"{signing_input}.{b64(mac)}"


class TestAttacks:
    async def test_hs256_keyed_with_the_public_key_is_refused(
        self, jwks_client: Client, endpoint: JwksServer, world: World
    ) -> None:
        """Algorithm confusion: HS256 'signed' with the ES256 key's public PEM is refused."""
        event, user, _ = await guest_feed(world)
        key: SigningKey = endpoint.keys["es-1"]
        for header in ({"alg": "HS256", "kid": key.kid}, {"alg": "HS256"}):
            token = hs256_by_hand(header, user_claims(user), key.public_pem)
            err = await refused(jwks_client, event, token)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
            assert reason(err) == "TOKEN_INVALID"

    async def test_alg_none_is_refused(
        self, jwks_client: Client, endpoint: JwksServer, world: World
    ) -> None:
        """An unsigned token naming a real kid is refused before any key is looked up."""
        event, user, _ = await guest_feed(world)

        def b64(d: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

        token = f"{b64({'alg': 'none', 'kid': 'es-1'})}.{b64(user_claims(user))}."
        err = await refused(jwks_client, event, token)
        assert "unsigned tokens never are" in (err.details() or "")

    @pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
    async def test_headers_pointing_at_other_keys_are_refused(
        self, jwks_client: Client, endpoint: JwksServer, world: World, header: str
    ) -> None:
        """jku/x5u/jwk/x5c headers are refused (never followed), even on a correct signature."""
        event, user, _ = await guest_feed(world)
        value: Any = (
            endpoint.keys["es-1"].public_jwk if header == "jwk" else "http://127.0.0.1:9/keys"
        )
        if header == "x5c":
            value = ["MIIB"]
        before = endpoint.hits
        token = endpoint.sign(user_claims(user), endpoint.keys["es-1"], **{header: value})
        err = await refused(jwks_client, event, token)
        assert reason(err) == "TOKEN_INVALID"
        assert f"'{header}' header is not accepted" in (err.details() or "")
        assert endpoint.hits == before or header != "jku"


class TestRolloutWithJwks:
    async def test_service_role_user_token_administers_the_rollout(
        self, jwks_client: Client, endpoint: JwksServer
    ) -> None:
        """A JWKS-signed user token with role service_role may read the rollout config."""
        admin = uuid.uuid4()
        token = endpoint.sign(user_claims(admin, role="service_role"), endpoint.keys["es-1"])
        got = await jwks_client.rollout.GetRolloutConfig(
            rollout_pb2.GetRolloutConfigRequest(), metadata=bearer(token)
        )
        assert got.config.revision >= 1
