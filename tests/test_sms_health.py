"""The SMS pipeline health reading: values, gauges, a bounded index-only query, read-only."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from guestfeed_server.domain.budget import Budget
from guestfeed_server.storage import Database
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.storage.sms import SMS_HEALTH_SQL, sms_snapshot
from guestfeed_server.telemetry import Telemetry
from guestfeed_server.telemetry.metrics import GaugeSources
from guestfeed_server.telemetry.sms import SmsHealthJob

from .conftest import scratch_database

STATUSES = ("pending", "sent", "delivered", "failed", "undelivered")


@pytest.fixture(scope="module")
async def sms_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A migrated database of this module's own: its deliveries table is ours to fill."""
    async with scratch_database(server_dsn, "guestfeed_sms") as (_, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield dsn


@pytest.fixture(scope="module")
async def sms_db(sms_dsn: str) -> AsyncIterator[Database]:
    """The service's database handle on the SMS database."""
    pool = await asyncpg.create_pool(sms_dsn, min_size=1, max_size=2)
    assert pool is not None
    yield Database(pool)
    await pool.close()


@pytest.fixture
async def conn(sms_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the SMS database, its deliveries emptied first."""
    c = await asyncpg.connect(sms_dsn)
    await c.execute("TRUNCATE public.message_deliveries")
    try:
        yield c
    finally:
        await c.close()


def job(pool: asyncpg.Pool, sources: GaugeSources, *, interval_s: float) -> SmsHealthJob:
    """The service's job, reading through `pool` as through the service's own."""
    db = Database(pool)
    return SmsHealthJob(lambda: sms_snapshot(db, Budget(5)), sources, interval_s=interval_s)


async def add(conn: asyncpg.Connection, hours_ago: float, status: str, n: int = 1) -> None:
    """n delivery rows created `hours_ago` before the database's now()."""
    await conn.execute(
        "INSERT INTO public.message_deliveries (phone_number, sms_status, created_at) "
        "SELECT '+15550000000', $2, now() - make_interval(secs => $1) FROM generate_series(1, $3)",
        hours_ago * 3600,
        status,
        n,
    )


BASELINE_DAYS = {2: 3, 3: 5, 4: 2, 5: 4, 6: 6, 7: 1, 8: 7}  # rows on each of the 7 earlier days


async def arrange_known(conn: asyncpg.Connection) -> None:
    """Last 24 h: 6 delivered + 4 not; the 7 days before: 28 rows; older rows ignored."""
    await add(conn, 1, "delivered", 6)
    await add(conn, 1, "failed", 2)
    await add(conn, 23.5, "sent")
    await add(conn, 12, "undelivered")
    for day, n in BASELINE_DAYS.items():
        # Day d covers (d-1 .. d] days ago; the middle of it is safely inside the window.
        await add(conn, 24 * day - 12, "delivered" if day % 2 else "failed", n)
    await add(conn, 24 * 8 + 2, "delivered", 50)  # just outside the 8-day window
    await add(conn, 24 * 40, "failed", 20)


class TestSnapshot:
    async def test_known_rows_give_known_values(
        self, conn: asyncpg.Connection, sms_db: Database
    ) -> None:
        """rows_24h counts the last day; baseline = 7 days before / 7; success = delivered / all."""
        await arrange_known(conn)
        assert await sms_snapshot(sms_db, Budget(5)) == {
            "rows_24h": 10.0,
            "rows_baseline_7d": sum(BASELINE_DAYS.values()) / 7,
            "success_ratio_24h": 0.6,
        }

    async def test_empty_table_is_zero_rows_and_full_success(
        self, conn: asyncpg.Connection, sms_db: Database
    ) -> None:
        """No deliveries at all: 0 rows, baseline 0, success 1.0 (nothing failed)."""
        assert await sms_snapshot(sms_db, Budget(5)) == {
            "rows_24h": 0.0,
            "rows_baseline_7d": 0.0,
            "success_ratio_24h": 1.0,
        }

    async def test_only_old_rows_still_full_success(
        self, conn: asyncpg.Connection, sms_db: Database
    ) -> None:
        """Failures before the last 24 h count toward the baseline, not the success ratio."""
        await add(conn, 30, "failed", 14)
        assert await sms_snapshot(sms_db, Budget(5)) == {
            "rows_24h": 0.0,
            "rows_baseline_7d": 2.0,
            "success_ratio_24h": 1.0,
        }

    @settings(
        max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        rows=st.lists(
            st.tuples(
                # Hours ago, away from the 24 h and 8 d boundaries by an hour.
                st.one_of(st.floats(0.01, 23), st.floats(25, 191), st.floats(193, 2000)),
                st.sampled_from(STATUSES),
            ),
            max_size=30,
        )
    )
    async def test_matches_a_python_count(
        self, conn: asyncpg.Connection, sms_db: Database, rows: Sequence[tuple[float, str]]
    ) -> None:
        """Any mix of times and statuses gives what counting the rows in Python gives."""
        await conn.execute("TRUNCATE public.message_deliveries")
        for hours, status in rows:
            await add(conn, hours, status)
        day = [s for h, s in rows if h < 24]
        baseline = [s for h, s in rows if 24 <= h < 192]
        assert await sms_snapshot(sms_db, Budget(5)) == {
            "rows_24h": float(len(day)),
            "rows_baseline_7d": pytest.approx(len(baseline) / 7),
            "success_ratio_24h": pytest.approx(day.count("delivered") / len(day)) if day else 1.0,
        }


def gauges(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, Any], ...]], float]:
    """(metric name, attributes) -> value of the guestfeed.sms.* gauges."""
    data = reader.get_metrics_data()
    out: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name.startswith("guestfeed.sms."):
                    for p in m.data.data_points:
                        out[(m.name, tuple(sorted((p.attributes or {}).items())))] = p.value
    return out


@pytest.fixture
async def read_only_pool(sms_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool whose sessions cannot write: the job must work on it."""
    pool = await asyncpg.create_pool(
        sms_dsn,
        min_size=1,
        max_size=2,
        server_settings={"default_transaction_read_only": "on"},
    )
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


def telemetry() -> tuple[Telemetry, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return Telemetry.create(
        trace.NoOpTracerProvider(), MeterProvider(metric_readers=[reader])
    ), reader


async def checksum(conn: asyncpg.Connection) -> tuple[int, str]:
    row = await conn.fetchrow(
        "SELECT count(*) AS n, md5(coalesce(string_agg(d::text, ',' ORDER BY id), '')) AS sum "
        "FROM public.message_deliveries d"
    )
    assert row is not None
    return int(row["n"]), str(row["sum"])


class TestSmsHealthJob:
    async def test_run_once_publishes_to_the_gauges(
        self, conn: asyncpg.Connection, sms_db: Database, read_only_pool: asyncpg.Pool
    ) -> None:
        """Before a reading the gauges report nothing; after one they report its values."""
        await arrange_known(conn)
        t, reader = telemetry()
        reading = job(read_only_pool, t.sources, interval_s=60)
        assert gauges(reader) == {}
        values = await reading.run_once()
        assert t.sources.sms == values == await sms_snapshot(sms_db, Budget(5))
        assert gauges(reader) == {
            ("guestfeed.sms.deliveries", (("window", "24h"),)): 10.0,
            ("guestfeed.sms.deliveries", (("window", "baseline_7d"),)): 4.0,
            ("guestfeed.sms.delivery_success_ratio", ()): 0.6,
        }

    async def test_schedule_refreshes_and_keeps_the_last_reading_on_failure(
        self, conn: asyncpg.Connection, sms_dsn: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The schedule picks up new rows; a failed query keeps the previous reading."""
        pool = await asyncpg.create_pool(sms_dsn, min_size=1, max_size=1)
        assert pool is not None
        sources = GaugeSources()
        schedule = job(pool, sources, interval_s=0.05)
        schedule.start()
        try:

            async def until(rows: float) -> None:
                deadline = time.monotonic() + 5
                while sources.sms.get("rows_24h") != rows:
                    assert time.monotonic() < deadline, sources.sms
                    await asyncio.sleep(0.02)

            await until(0.0)
            await add(conn, 2, "delivered", 3)
            await until(3.0)
            with caplog.at_level(logging.WARNING, logger="guestfeed_server.telemetry.sms"):
                await pool.close()  # every later run fails
                await asyncio.sleep(0.3)
            assert sources.sms == {
                "rows_24h": 3.0,
                "rows_baseline_7d": 0.0,
                "success_ratio_24h": 1.0,
            }
            failures = [r.getMessage() for r in caplog.records if "SMS health" in r.getMessage()]
            assert failures and all(m.startswith("SMS health query failed: ") for m in failures)
        finally:
            await schedule.stop()
            pool.terminate()

    async def test_job_never_writes(
        self, conn: asyncpg.Connection, read_only_pool: asyncpg.Pool
    ) -> None:
        """Readings on read-only sessions succeed and leave every delivery row as it was."""
        await arrange_known(conn)
        before = await checksum(conn)
        reading = job(read_only_pool, GaugeSources(), interval_s=60)
        for _ in range(3):
            await reading.run_once()
        assert await checksum(conn) == before


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *[n for child in plan.get("Plans", []) for n in plan_nodes(child)]]


class TestQueryPlan:
    async def test_uses_the_created_at_index_only(self, conn: asyncpg.Connection) -> None:
        """On ~20k rows over 60 days the query is an Index Only Scan on gf_deliveries_created_at."""
        await conn.execute(
            "INSERT INTO public.message_deliveries (phone_number, sms_status, created_at) "
            "SELECT '+15550000000', (ARRAY['delivered','failed','sent'])[1 + i % 3], "
            "       now() - make_interval(secs => i * 259.2) "
            "FROM generate_series(1, 20000) AS i"
        )
        await conn.execute("VACUUM ANALYZE public.message_deliveries")
        raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + SMS_HEALTH_SQL)
        nodes = plan_nodes(json.loads(raw)[0]["Plan"])
        scans = [n for n in nodes if "Scan" in n["Node Type"]]
        assert [(n["Node Type"], n.get("Index Name")) for n in scans] == [
            ("Index Only Scan", "gf_deliveries_created_at")
        ]
        analyzed = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + SMS_HEALTH_SQL)
        scan = next(
            n for n in plan_nodes(json.loads(analyzed)[0]["Plan"]) if "Scan" in n["Node Type"]
        )
        # 8 of 60 days: the scan reads its range, not the table.
        assert 2000 < scan["Actual Rows"] < 3500
        assert scan["Heap Fetches"] == 0
