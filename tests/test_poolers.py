"""guestfeed behind a real PgBouncer, in session and in transaction mode.

In transaction mode PgBouncer's 3 server connections are shared by the
service's 10 pooled ones between transactions, as Supavisor on 6543 shares
them: named statements, session SETs and LISTEN would break here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.propagation import flip_and_wait, start_replicas
from guestfeed.v1 import rollout_pb2_grpc
from guestfeed_server.api.server import ROLLOUT_NOTIFY_HEALTH_NAME
from guestfeed_server.auth import Role, mint
from guestfeed_server.settings import PoolMode
from guestfeed_server.storage import V2MessagesStore
from guestfeed_server.storage.database import create_pool
from guestfeed_server.storage.migrate import migrate

from .conftest import SECRET, Client, scratch_database, start_client
from .conftest import test_settings as settings_for
from .contract.visibility import as_expected, stream_all
from .factory import World
from .helpers import read_all
from .oracle import feed
from .pgbouncer import Bouncer, needs_pgbouncer, running_pgbouncer

pytestmark = needs_pgbouncer
MODES = ["session", "transaction"]


@pytest.fixture(scope="module", params=MODES)
def bouncer(request: pytest.FixtureRequest, server_dsn: str) -> Iterator[Bouncer]:
    """PgBouncer in front of the test server, in each mode. A session pooler pins a server
    connection per client, so there it has room for the service's whole pool."""
    size = 3 if request.param == "transaction" else 40
    with running_pgbouncer(server_dsn, request.param, server_pool=size) as b:
        yield b


@pytest.fixture(scope="module")
async def pooled(bouncer: Bouncer, admin_dsn: str) -> AsyncIterator[Client]:
    """A server whose database URL is PgBouncer, told its pool mode."""
    c = await start_client(bouncer.dsn(admin_dsn), GUESTFEED_DB_POOL_MODE=bouncer.mode)
    yield c
    await c.stop()


class TestFeedThroughThePooler:
    @pytest.mark.parametrize("model", ["v1", "v2"])
    async def test_pages_with_tied_timestamps_lose_and_repeat_nothing(
        self, pooled: Client, world: World, model: str
    ) -> None:
        """A bulk send (25 messages, one timestamp) pages in 7s exactly as the oracle orders it."""
        event = await world.event()
        user, guest = await world.member(event, tags=["family"])
        at = datetime(2026, 6, 1, 18, 0, tzinfo=UTC)
        for i in range(25):
            kind = "announcement" if i % 2 else "channel"
            if kind == "channel":
                mid = await world.channel(event, ["family"], created_at=at)
            else:
                mid = await world.message(event, kind, created_at=at)
            await world.deliver(mid, guest_id=guest, user_id=user)
        want = [e.message_id for e in feed(world, event, user, model)]
        listed = await read_all(pooled, event, user, model, page_size=7)
        streamed = await stream_all(pooled, event, user, model, page_size=7)
        assert [uuid.UUID(m.message_id) for m in listed] == want
        assert [uuid.UUID(m.message_id) for m in streamed] == want
        assert [as_expected(m) for m in listed] == feed(world, event, user, model)

    async def test_concurrent_callers_each_get_their_own_feed(
        self, pooled: Client, world: World
    ) -> None:
        """48 concurrent reads by 8 guests with different feeds: each gets exactly its own."""
        event = await world.event()
        members = [await world.member(event, tags=[f"t{i}"]) for i in range(8)]
        for i, (user, guest) in enumerate(members):
            direct = await world.message(event, "direct")
            await world.deliver(direct, guest_id=guest, user_id=user)
            await world.channel(event, [f"t{i}"])
        await world.message(event, "announcement")

        async def check(user: uuid.UUID, model: str) -> None:
            got = await read_all(pooled, event, user, model, page_size=2)
            assert [as_expected(m) for m in got] == feed(world, event, user, model)

        await asyncio.gather(
            *(check(user, model) for user, _ in members for model in ("v1", "v2") for _ in range(3))
        )


class TestPlannerSettings:
    async def test_pages_run_without_jit_or_parallel_workers_and_nothing_leaks(
        self, bouncer: Bouncer, admin_dsn: str
    ) -> None:
        """Session mode: the pool's connections have jit off and no parallel workers.
        Transaction mode: the page functions carry both settings themselves, and no
        session setting reaches the next client of a shared server connection."""
        mode = PoolMode(bouncer.mode)
        cfg = settings_for(GUESTFEED_DB_POOL_MODE=mode.value)
        pool = await create_pool(bouncer.dsn(admin_dsn), cfg)
        try:
            async with pool.acquire() as conn:
                settings = (
                    await conn.fetchval("SHOW jit"),
                    await conn.fetchval("SHOW max_parallel_workers_per_gather"),
                )
                configs = await conn.fetch(
                    "SELECT proconfig FROM pg_proc WHERE oid = to_regprocedure($1)",
                    f"{V2MessagesStore.function_name()}(uuid, uuid, timestamptz, uuid, integer)",
                )
        finally:
            await pool.close()
        if mode is PoolMode.SESSION:
            assert settings == ("off", "0")
        else:
            assert settings[1] != "0"  # the server's default: nothing was SET on the session
            assert [sorted(r["proconfig"]) for r in configs] == [
                ["jit=off", "max_parallel_workers_per_gather=0"]
            ]

    async def test_transaction_mode_reads_pages_through_the_functions(
        self, bouncer: Bouncer, pooled: Client, world: World, admin_pool: asyncpg.Pool
    ) -> None:
        """Behind a transaction pooler pages are read through the page functions: with the
        v2 function renamed away, v2 pages fail there (and only there) while v1 still works."""
        event = await world.event()
        user, _ = await world.member(event)
        await world.message(event, "announcement")
        name = V2MessagesStore.function_name()
        signature = f"{name}(uuid, uuid, timestamptz, uuid, integer)"
        await admin_pool.execute(f"ALTER FUNCTION {signature} RENAME TO hidden_page_fn")
        try:
            assert await read_all(pooled, event, user, "v1") == []
            try:
                await read_all(pooled, event, user, "v2")
                failed = False
            except grpc.aio.AioRpcError:
                failed = True
        finally:
            await admin_pool.execute(
                "ALTER FUNCTION guestfeed.hidden_page_fn(uuid, uuid, timestamptz, uuid, integer) "
                f"RENAME TO {name.split('.')[1]}"
            )
        assert failed == (bouncer.mode == "transaction")
        assert len(await read_all(pooled, event, user, "v2")) == 1


@pytest.fixture
async def migrated(server_dsn: str) -> AsyncIterator[str]:
    async with scratch_database(server_dsn, "guestfeed_pooler") as (_, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield dsn


class TestRolloutBehindThePooler:
    async def test_two_replicas_see_a_change_within_a_second(
        self, bouncer: Bouncer, migrated: str
    ) -> None:
        """Two `guestfeed serve` behind PgBouncer (transaction mode: LISTEN on the direct URL)
        answer a change made through either within 1 s; the re-read is 60 s."""
        env = {"GUESTFEED_DB_POOL_MODE": bouncer.mode}
        if bouncer.mode == "transaction":
            env["GUESTFEED_DIRECT_DATABASE_URL"] = migrated
        a, b = await start_replicas(bouncer.dsn(migrated), SECRET, refresh_s=60, extra_env=env)
        try:
            token = mint(SECRET, uuid.uuid4(), role=Role.SERVICE_ROLE)
            metadata = (("authorization", f"Bearer {token}"),)
            async with (
                grpc.aio.insecure_channel(a.target) as ca,
                grpc.aio.insecure_channel(b.target) as cb,
            ):
                sa = rollout_pb2_grpc.RolloutServiceStub(ca)
                sb = rollout_pb2_grpc.RolloutServiceStub(cb)
                for enable in (True, False, True):
                    _, seen_after = await flip_and_wait(sa, sb, metadata, enable, timeout_s=1.0)
                    assert seen_after < 1.0
                _, seen_after = await flip_and_wait(sb, sa, metadata, False, timeout_s=1.0)
                assert seen_after < 1.0
        finally:
            assert await b.stop() == 0, b"".join(b.log).decode()
            assert await a.stop() == 0, b"".join(a.log).decode()

    @pytest.mark.parametrize("bouncer", ["transaction"], indirect=True)
    async def test_without_a_direct_url_changes_arrive_by_re_read_and_health_says_so(
        self, bouncer: Bouncer, migrated: str
    ) -> None:
        """Transaction mode, no direct URL: a warning at start-up, guestfeed.rollout.notify
        NOT_SERVING, and a change still reaches the other replica by the re-read."""
        env = {"GUESTFEED_DB_POOL_MODE": "transaction"}
        a, b = await start_replicas(bouncer.dsn(migrated), SECRET, refresh_s=0.5, extra_env=env)
        try:
            assert b"periodic re-read only" in b"".join(b.log)
            token = mint(SECRET, uuid.uuid4(), role=Role.SERVICE_ROLE)
            metadata = (("authorization", f"Bearer {token}"),)
            async with (
                grpc.aio.insecure_channel(a.target) as ca,
                grpc.aio.insecure_channel(b.target) as cb,
            ):
                notify = await health_pb2_grpc.HealthStub(cb).Check(
                    health_pb2.HealthCheckRequest(service=ROLLOUT_NOTIFY_HEALTH_NAME)
                )
                assert notify.status == health_pb2.HealthCheckResponse.NOT_SERVING
                overall = await health_pb2_grpc.HealthStub(cb).Check(
                    health_pb2.HealthCheckRequest(service="")
                )
                assert overall.status == health_pb2.HealthCheckResponse.SERVING
                sa = rollout_pb2_grpc.RolloutServiceStub(ca)
                sb = rollout_pb2_grpc.RolloutServiceStub(cb)
                _, seen_after = await flip_and_wait(sa, sb, metadata, True, timeout_s=3.0)
                assert seen_after < 3.0
        finally:
            assert await b.stop() == 0
            assert await a.stop() == 0
