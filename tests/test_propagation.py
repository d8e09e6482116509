"""Two `guestfeed serve` processes on one database stay in step on the rollout."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest

from bench.propagation import flip_and_wait, start_replicas
from guestfeed.v1 import feed_pb2, feed_pb2_grpc, rollout_pb2, rollout_pb2_grpc
from guestfeed_server.auth import Role, mint
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.testing.procs import ServerProcess

from .conftest import SECRET, scratch_database


@dataclass
class Replicas:
    a: ServerProcess
    b: ServerProcess
    dsn: str


@pytest.fixture
async def replicas(server_dsn: str) -> AsyncIterator[Replicas]:
    """Two server processes on a scratch database; the periodic re-read is 60 s,
    so only LISTEN/NOTIFY can make a change show up within a second."""
    async with scratch_database(server_dsn, "guestfeed_prop") as (_, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        a, b = await start_replicas(dsn, SECRET, refresh_s=60)
        try:
            yield Replicas(a, b, dsn)
        finally:
            code_b, code_a = await b.stop(), await a.stop()
            assert code_b == 0, b"".join(b.log).decode()
            assert code_a == 0, b"".join(a.log).decode()


class TestTwoReplicas:
    async def test_change_through_one_replica_reaches_the_other_within_a_second(
        self, replicas: Replicas
    ) -> None:
        """Flips made through A are answered by B within 1 s, in both directions, each time."""
        a, b = replicas.a, replicas.b
        token = mint(SECRET, uuid.uuid4(), role=Role.SERVICE_ROLE)
        metadata = (("authorization", f"Bearer {token}"),)
        async with (
            grpc.aio.insecure_channel(a.target) as ca,
            grpc.aio.insecure_channel(b.target) as cb,
        ):
            sa, sb = (
                rollout_pb2_grpc.RolloutServiceStub(ca),
                rollout_pb2_grpc.RolloutServiceStub(cb),
            )
            for enable in (True, False, True, False, True):
                _, seen_after = await flip_and_wait(sa, sb, metadata, enable, timeout_s=1.0)
                assert seen_after < 1.0
            # Both directions: a change made through B reaches A as well.
            _, seen_after = await flip_and_wait(sb, sa, metadata, False, timeout_s=1.0)
            assert seen_after < 1.0

    async def test_feed_read_model_follows_a_change_made_elsewhere(
        self, replicas: Replicas
    ) -> None:
        """A feed request with read_model UNSPECIFIED on B is served by V2 once A enables 100%."""
        a, b = replicas.a, replicas.b
        service = (
            ("authorization", f"Bearer {mint(SECRET, uuid.uuid4(), role=Role.SERVICE_ROLE)}"),
        )
        conn = await asyncpg.connect(replicas.dsn)
        try:
            host = uuid.uuid4()
            event = uuid.uuid4()
            await conn.execute("INSERT INTO public.users (id) VALUES ($1)", host)
            await conn.execute(
                "INSERT INTO public.events (id, title, host_user_id) VALUES ($1, 't', $2)",
                event,
                host,
            )
            await conn.execute(
                "INSERT INTO public.event_guests (event_id, user_id) VALUES ($1, $2)", event, host
            )
        finally:
            await conn.close()
        guest = (("authorization", f"Bearer {mint(SECRET, host)}"),)
        request = feed_pb2.ListMessagesRequest(event_id=str(event))
        async with (
            grpc.aio.insecure_channel(a.target) as ca,
            grpc.aio.insecure_channel(b.target) as cb,
        ):
            feed_b = feed_pb2_grpc.GuestFeedServiceStub(cb)
            before = await feed_b.ListMessages(request, metadata=guest)
            assert before.read_model == feed_pb2.READ_MODEL_V1
            sa, sb = (
                rollout_pb2_grpc.RolloutServiceStub(ca),
                rollout_pb2_grpc.RolloutServiceStub(cb),
            )
            await flip_and_wait(sa, sb, service, True, timeout_s=1.0)
            after = await feed_b.ListMessages(request, metadata=guest)
            assert after.read_model == feed_pb2.READ_MODEL_V2
            answer = await sb.GetReadModel(
                rollout_pb2.GetReadModelRequest(event_id=str(event), user_id=str(host)),
                metadata=guest,
            )
            assert answer.reason == rollout_pb2.DECISION_REASON_PERCENTAGE
