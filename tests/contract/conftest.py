"""The contract suite runs against PostgreSQL directly and through a real PgBouncer in each
pool mode: every test here gets each of those servers as `client`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ..conftest import Client, start_client
from ..pgbouncer import MISSING, PGBOUNCER, running_pgbouncer


@pytest.fixture(scope="package", params=["direct", "pgbouncer-session", "pgbouncer-transaction"])
async def client(
    request: pytest.FixtureRequest, client: Client, server_dsn: str, admin_dsn: str
) -> AsyncIterator[Client]:
    """The whole suite runs straight against PostgreSQL and through a real PgBouncer in
    each pool mode (skipped where pgbouncer is not installed)."""
    if request.param == "direct":
        yield client
        return
    if PGBOUNCER is None:
        pytest.skip(MISSING)
    mode = request.param.removeprefix("pgbouncer-")
    with running_pgbouncer(server_dsn, mode, server_pool=3 if mode == "transaction" else 40) as b:
        pooled = await start_client(b.dsn(admin_dsn), GUESTFEED_DB_POOL_MODE=mode)
        try:
            yield pooled
        finally:
            await pooled.stop()
