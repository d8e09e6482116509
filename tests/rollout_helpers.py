"""Helpers and fixtures for tests that change the rollout config: each on a
database of its own, with its own server (the shared `client` relies on its
database's config: v2 enabled at 0 %, so service callers can read either model)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_server.auth import Role
from guestfeed_server.domain.model import ReadModel
from guestfeed_server.storage.migrate import migrate

from .conftest import Client, scratch_database, start_client
from .factory import World

R = rollout_pb2
PB_MODEL = {ReadModel.V1: feed_pb2.READ_MODEL_V1, ReadModel.V2: feed_pb2.READ_MODEL_V2}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ADMIN = uuid.UUID("5e7a1c00-0000-4000-8000-00000000ad01")
# Fast re-reads and health probes, so the live tests wait well under a second.
LIVE = {"GUESTFEED_ROLLOUT_REFRESH_S": "0.3", "GUESTFEED_HEALTH_INTERVAL_S": "0.2"}


def admin(sub: uuid.UUID = ADMIN) -> list[tuple[str, str]]:
    return Client.auth(sub, Role.SERVICE_ROLE)


def pb_config(
    enabled: bool = True,
    pct: int = 0,
    users: Mapping[Any, Any] | None = None,
    events: Mapping[Any, Any] | None = None,
    **kw: Any,
) -> R.RolloutConfig:
    """A proposed config; override values may be ReadModel or raw proto ints."""

    def keyed(m: Mapping[Any, Any] | None) -> dict[str, int]:
        return {str(k): PB_MODEL.get(v, v) for k, v in (m or {}).items()}

    return R.RolloutConfig(
        v2_enabled=enabled,
        v2_percentage=pct,
        user_overrides=keyed(users),
        event_overrides=keyed(events),
        **kw,
    )


async def get_config(c: Client) -> R.RolloutConfig:
    return (await c.rollout.GetRolloutConfig(R.GetRolloutConfigRequest(), metadata=admin())).config


async def update(
    c: Client,
    expected: int,
    config: R.RolloutConfig | None = None,
    reason: str = "test",
    metadata: list[tuple[str, str]] | None = None,
) -> R.RolloutConfig:
    req = R.UpdateRolloutConfigRequest(expected_revision=expected, reason=reason)
    if config is not None:
        req.config.CopyFrom(config)
    resp = await c.rollout.UpdateRolloutConfig(req, metadata=metadata or admin())
    return resp.config


async def history(c: Client) -> list[R.RolloutChange]:
    resp = await c.rollout.ListRolloutChanges(
        R.ListRolloutChangesRequest(page_size=200), metadata=admin()
    )
    assert resp.next_page_token == ""
    return list(resp.changes)


async def read_model(c: Client, event: uuid.UUID, user: uuid.UUID) -> R.GetReadModelResponse:
    return await c.rollout.GetReadModel(
        R.GetReadModelRequest(event_id=str(event), user_id=str(user)), metadata=admin()
    )


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def health(c: Client, service: str) -> int:
    resp = await health_pb2_grpc.HealthStub(c.channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(resp.status)


async def eventually(
    probe: Callable[[], Awaitable[Any]], want: Any, within_s: float = 5.0
) -> float:
    """Polls `probe()` until it returns `want`; returns the seconds it took."""
    start = time.monotonic()
    last: Any = None
    while time.monotonic() - start < within_s:
        last = await probe()
        if last == want:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {want!r} within {within_s}s (last: {last!r})")


def decision(r: R.GetReadModelResponse) -> tuple[int, int, int]:
    return r.read_model, r.reason, r.config_revision


async def stop(c: Client) -> None:
    await c.stop()


@contextlib.asynccontextmanager
async def serving(dsn: str, **env: str) -> AsyncIterator[Client]:
    """Another server on `dsn`, stopped at the end."""
    c = await start_client(dsn, **{**LIVE, **env})
    try:
        yield c
    finally:
        await stop(c)


@dataclass
class Own:
    """A migrated database of the test's own, a server on it and a superuser pool."""

    name: str
    dsn: str
    pool: asyncpg.Pool
    client: Client

    def world(self) -> World:
        return World(self.pool)


@pytest.fixture
async def own_db(server_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """(name, dsn) of a fresh migrated database: config at revision 1, v2 disabled."""
    async with scratch_database(server_dsn, "guestfeed_rollout") as (name, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name, dsn


@pytest.fixture
async def own(own_db: tuple[str, str]) -> AsyncIterator[Own]:
    name, dsn = own_db
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    try:
        async with serving(dsn) as c:
            yield Own(name, dsn, pool, c)
    finally:
        await pool.close()


async def decision_of(c: Client, event: uuid.UUID, user: uuid.UUID) -> tuple[int, int, int]:
    return decision(await read_model(c, event, user))


async def preview(
    c: Client, config: R.RolloutConfig, max_events: int = 0
) -> R.PreviewRolloutChangeResponse:
    return await c.rollout.PreviewRolloutChange(
        R.PreviewRolloutChangeRequest(config=config, max_events=max_events), metadata=admin()
    )
