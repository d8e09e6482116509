"""The project's API keys and anonymous sign-ins: who they are, what they may do."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import jwt
import pytest

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_server.auth import Authenticator, HS256Secret

from .conftest import SECRET, Client, start_client
from .factory import World
from .helpers import error_info
from .jwks_server import ISSUER, PROJECT_REF, JwksServer, api_key, user_claims
from .rollout_helpers import Own, get_config, history, pb_config

R = rollout_pb2


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def reason_of(err: grpc.aio.AioRpcError) -> str:
    info = error_info(err)
    assert info is not None, err.details()
    return str(info.reason)


class TestLegacyServiceRoleKey:
    async def test_it_administers_the_rollout_and_the_audit_log_names_the_key(
        self, own: Own
    ) -> None:
        """The service_role key reads and updates the config; the audit row says which key."""
        key = bearer(api_key("service_role", SECRET))
        c = own.client
        current = (
            await c.rollout.GetRolloutConfig(R.GetRolloutConfigRequest(), metadata=key)
        ).config
        req = R.UpdateRolloutConfigRequest(
            config=pb_config(pct=10), expected_revision=current.revision, reason="phase 3 start"
        )
        got = await c.rollout.UpdateRolloutConfig(req, metadata=key)
        who = f"service_role key (ref {PROJECT_REF})"
        assert got.config.updated_by == who
        [change] = await history(c)
        assert (change.changed_by, change.reason) == (who, "phase 3 start")
        assert (await get_config(c)).v2_percentage == 10

    async def test_it_asks_about_any_pair(self, client: Client) -> None:
        """GetReadModel answers the service key for any (event, user)."""
        resp = await client.rollout.GetReadModel(
            R.GetReadModelRequest(event_id=str(uuid.uuid4()), user_id=str(uuid.uuid4())),
            metadata=bearer(api_key("service_role", SECRET)),
        )
        assert resp.read_model == feed_pb2.READ_MODEL_V1

    @pytest.mark.parametrize("rpc", ["list", "stream"])
    async def test_it_cannot_read_a_guest_feed(
        self, client: Client, world: World, rpc: str
    ) -> None:
        """A key that names no user gets PERMISSION_DENIED USER_REQUIRED from the feed RPCs."""
        event = await world.event()
        await world.member(event)
        key = bearer(api_key("service_role", SECRET))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if rpc == "list":
                await client.feed.ListMessages(
                    feed_pb2.ListMessagesRequest(event_id=str(event)), metadata=key
                )
            else:
                async for _ in client.feed.StreamMessages(
                    feed_pb2.StreamMessagesRequest(event_id=str(event)), metadata=key
                ):
                    raise AssertionError("no page may be streamed")
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(caught.value) == "USER_REQUIRED"

    async def test_a_key_signed_with_another_secret_is_refused(self, client: Client) -> None:
        """Another project's service key does not verify."""
        token = api_key("service_role", "another-project-" + "q" * 40)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.rollout.GetRolloutConfig(
                R.GetRolloutConfigRequest(), metadata=bearer(token)
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_a_keyless_service_token_not_from_supabase_still_needs_a_sub(
        self, client: Client
    ) -> None:
        """role service_role without sub and without iss 'supabase' is not an API key."""
        token = api_key("service_role", SECRET, iss="someone-else")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.rollout.GetRolloutConfig(
                R.GetRolloutConfigRequest(), metadata=bearer(token)
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "lacks the required 'sub' claim" in (caught.value.details() or "")


class TestAnonKeyAndOtherRoles:
    @pytest.mark.parametrize("rpc", ["feed", "read_model", "config"])
    async def test_the_anon_key_reads_nothing(self, client: Client, world: World, rpc: str) -> None:
        """The anon key is PERMISSION_DENIED ROLE_NOT_ALLOWED on every RPC."""
        key = bearer(api_key("anon", SECRET))
        event = await world.event()
        calls = {
            "feed": lambda: client.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(event)), metadata=key
            ),
            "read_model": lambda: client.rollout.GetReadModel(
                R.GetReadModelRequest(event_id=str(event), user_id=str(uuid.uuid4())),
                metadata=key,
            ),
            "config": lambda: client.rollout.GetRolloutConfig(
                R.GetRolloutConfigRequest(), metadata=key
            ),
        }
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await calls[rpc]()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(caught.value) == "ROLE_NOT_ALLOWED"


@pytest.fixture
def endpoint() -> Iterator[JwksServer]:
    server = JwksServer().start()
    server.add("ES256", "es-1")
    yield server
    server.stop()


@pytest.fixture
async def mixed(admin_dsn: str, endpoint: JwksServer) -> AsyncIterator[Client]:
    """A project in the middle of the move: JWKS and the legacy secret, both accepted."""
    c = await start_client(admin_dsn, GUESTFEED_JWKS_URL=endpoint.url, GUESTFEED_JWT_ISSUER=ISSUER)
    yield c
    await c.stop()


class TestAnonymousSignIns:
    async def test_anonymous_users_are_refused_by_default(
        self, mixed: Client, endpoint: JwksServer, world: World
    ) -> None:
        """is_anonymous: true is PERMISSION_DENIED ANONYMOUS_NOT_ALLOWED, guest or not."""
        event = await world.event()
        user, _ = await world.member(event)
        token = endpoint.sign(user_claims(user, is_anonymous=True), endpoint.keys["es-1"])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await mixed.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(event)), metadata=bearer(token)
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(caught.value) == "ANONYMOUS_NOT_ALLOWED"
        assert "anonymous" in (caught.value.details() or "")

    async def test_allowing_them_leads_to_the_normal_guest_check(
        self, admin_dsn: str, endpoint: JwksServer, world: World
    ) -> None:
        """GUESTFEED_ALLOW_ANONYMOUS=true: an anonymous guest reads, a non-guest is denied."""
        c = await start_client(
            admin_dsn,
            GUESTFEED_JWKS_URL=endpoint.url,
            GUESTFEED_JWT_ISSUER=ISSUER,
            GUESTFEED_ALLOW_ANONYMOUS="true",
        )
        try:
            event = await world.event()
            user, guest = await world.member(event)
            mid = await world.message(event, "announcement")
            await world.deliver(mid, guest_id=guest, user_id=user)
            token = endpoint.sign(user_claims(user, is_anonymous=True), endpoint.keys["es-1"])
            got = await c.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(event)), metadata=bearer(token)
            )
            assert [m.message_id for m in got.messages] == [str(mid)]
            stranger = endpoint.sign(
                user_claims(uuid.uuid4(), is_anonymous=True), endpoint.keys["es-1"]
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await c.feed.ListMessages(
                    feed_pb2.ListMessagesRequest(event_id=str(event)), metadata=bearer(stranger)
                )
            assert reason_of(caught.value) == "NOT_EVENT_GUEST"
        finally:
            await c.stop()


class TestMidMigrationProject:
    async def test_both_key_kinds_work_side_by_side(
        self, mixed: Client, endpoint: JwksServer, world: World
    ) -> None:
        """ES256 users, HS256 users (with the configured issuer) and the service key all work."""
        event = await world.event()
        user, guest = await world.member(event)
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=guest, user_id=user)
        es = endpoint.sign(user_claims(user), endpoint.keys["es-1"])
        hs = jwt.encode(user_claims(user), SECRET, "HS256")
        for token in (es, hs):
            got = await mixed.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(event)), metadata=bearer(token)
            )
            assert [m.message_id for m in got.messages] == [str(mid)]
        cfg = await mixed.rollout.GetRolloutConfig(
            R.GetRolloutConfigRequest(), metadata=bearer(api_key("service_role", SECRET))
        )
        assert cfg.config.revision >= 1


class TestAuthenticatorUnit:
    def test_api_key_principal_has_no_user_and_names_its_ref(self) -> None:
        """The key's principal is a service caller with no user, audited by its project ref."""
        who = Authenticator(HS256Secret(SECRET)).authenticate(
            bearer(api_key("service_role", SECRET))
        )
        assert (who.user_id, who.is_service, who.actor) == (
            None,
            True,
            f"service_role key (ref {PROJECT_REF})",
        )
