"""The service's connection pool: what a released connection keeps and loses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from guestfeed_server.db import create_pool

from . import conftest
from .conftest import scratch_database


@pytest.fixture
async def pool_and_dsn(server_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    async with scratch_database(server_dsn, "guestfeed_pool") as (_, dsn):
        # One connection, so every acquire gets the same session back.
        pool = await create_pool(
            dsn, conftest.test_settings(GUESTFEED_DB_POOL_MIN="1", GUESTFEED_DB_POOL_MAX="1")
        )
        try:
            yield pool, dsn
        finally:
            await pool.close()


async def test_release_sends_no_reset_query_to_the_server(
    pool_and_dsn: tuple[asyncpg.Pool, str],
) -> None:
    pool, dsn = pool_and_dsn
    async with pool.acquire() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.fetchval("SELECT 'the last statement before release'")
    observer = await asyncpg.connect(dsn)
    try:
        # asyncpg's default release would have sent `... RESET ALL` after it.
        last = await observer.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await observer.close()
    assert last == "SELECT 'the last statement before release'"


async def test_a_transaction_left_open_is_rolled_back_on_release(
    pool_and_dsn: tuple[asyncpg.Pool, str],
) -> None:
    pool, _ = pool_and_dsn
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE written (n int)")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO written VALUES (1)")
        # Released without commit or rollback, as after a cancelled RPC.
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM written") == 0
        await conn.execute("INSERT INTO written VALUES (2)")
        assert await conn.fetchval("SELECT count(*) FROM written") == 1
