"""The feed benchmark's database side: viewers, the peer, our adapters directly, and EXPLAIN."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from guestfeed_server.domain.budget import Budget
from guestfeed_server.domain.model import Cursor, ReadModel, Viewer
from guestfeed_server.settings import PoolMode, Settings
from guestfeed_server.storage import (
    Database,
    FeedStore,
    V1DeliveriesStore,
    V2MessagesStore,
    make_store,
)
from guestfeed_server.storage.base import START

from . import dataset, peer
from .common import (
    ADAPTER_V1,
    ADAPTER_V2,
    DEEP_PAGE,
    PAGE_SIZE,
    PEER,
    PEER_DEEP_MAX_S,
    PEER_GENERIC,
    PEER_TIMEOUT_S,
    QUERY_TIMEOUT_S,
    SECRET,
    FeedOptions,
    _Progress,
    _sample,
)
from .report import FeedReport, Series, _add

# --- viewers ----------------------------------------------------------------

VIEWERS_SQL = """
SELECT user_id FROM (
    SELECT user_id, cardinality(guest_tags) AS tags,
           row_number() OVER (PARTITION BY cardinality(guest_tags) ORDER BY created_at, id) AS rn
      FROM public.event_guests
     WHERE event_id = $1 AND user_id IS NOT NULL AND removed_at IS NULL
) q
ORDER BY rn, tags
LIMIT $2
"""


# The caller as the service sees them: their active guest rows in the event,
# ids and tags united (kept here so the bench does not depend on where the
# service looks this up).
VIEWER_SQL = """
SELECT array_agg(id ORDER BY created_at, id) AS guest_ids,
       ARRAY(SELECT DISTINCT t FROM public.event_guests g2, unnest(g2.guest_tags) AS t
              WHERE g2.event_id = $1 AND g2.user_id = $2 AND g2.removed_at IS NULL
              ORDER BY 1) AS tags,
       (array_agg(guest_name ORDER BY created_at, id)
           FILTER (WHERE guest_name IS NOT NULL))[1] AS guest_name
  FROM public.event_guests
 WHERE event_id = $1 AND user_id = $2 AND removed_at IS NULL
"""


async def _viewers(conn: asyncpg.Connection, event_id: uuid.UUID, n: int) -> list[Viewer]:
    """The earliest guests to join with 0, 1, 2, 3 tags (then the next ones)."""
    out = []
    for row in await conn.fetch(VIEWERS_SQL, event_id, n):
        v = await conn.fetchrow(VIEWER_SQL, event_id, row["user_id"])
        assert v is not None
        out.append(
            Viewer(
                user_id=row["user_id"],
                event_id=event_id,
                guest_ids=tuple(v["guest_ids"]),
                tags=tuple(v["tags"]),
                guest_name=v["guest_name"],
            )
        )
    if not out:
        raise RuntimeError(f"event {event_id} has no active guest with an account")
    return out


# --- adapters, directly -----------------------------------------------------


BUDGET = Budget(QUERY_TIMEOUT_S)


async def single_connection(dsn: str, mode: PoolMode = PoolMode.SESSION) -> Database:
    """The service's own database handle on a pool of exactly one connection."""
    settings = Settings.from_env(
        {
            "GUESTFEED_DATABASE_URL": "postgresql://unused",
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_DB_POOL_MIN": "1",
            "GUESTFEED_DB_POOL_MAX": "1",
            "GUESTFEED_DB_POOL_MODE": mode.value,
            "GUESTFEED_QUERY_TIMEOUT_S": str(QUERY_TIMEOUT_S),
        }
    )
    return await Database.open(dsn, settings)


async def _walk_cursor(store: FeedStore, viewer: Viewer, pages: int) -> Cursor | None:
    """Our keyset cursor after `pages` pages (as FeedReader: 51 asked, 50 kept), or None."""
    cursor: Cursor | None = None
    for _ in range(pages):
        read = await store.read(viewer.event_id, viewer.user_id, cursor, PAGE_SIZE + 1, BUDGET)
        if len(read.messages) <= PAGE_SIZE:
            return None
        cursor = read.messages[PAGE_SIZE - 1].cursor
    return cursor


# Plan-cache counters of the page statements (PostgreSQL >= 14).
PLAN_COUNTS_SQL = """
SELECT coalesce(sum(generic_plans), 0) AS generic, coalesce(sum(custom_plans), 0) AS custom
  FROM pg_prepared_statements
 WHERE statement LIKE '%public.messages%' AND statement NOT LIKE '%pg_prepared_statements%'
"""


async def _measure_adapters(
    dsn: str,
    report: FeedReport,
    spec: dataset.EventSpec,
    viewers: list[Viewer],
    options: FeedOptions,
    say: _Progress,
) -> None:
    """Each adapter read as the server reads it (`store.read` through the service's
    database handle), on a fresh one-connection pool per (adapter, event).

    asyncpg prepares the statement, and PostgreSQL keeps whichever plan its
    plan cache settles on after five executions (custom, or the generic one
    when it looks no dearer) for the rest of the connection's life. A fresh
    connection per (adapter, event) lets each event's own calls decide,
    instead of the previous event's; the counts are reported with the series.
    """
    for what, model in ((ADAPTER_V1, ReadModel.V1), (ADAPTER_V2, ReadModel.V2)):
        db = await single_connection(dsn)
        store = make_store(model, db)
        try:
            deep = [(v, await _walk_cursor(store, v, DEEP_PAGE - 1)) for v in viewers]
            plans: list[tuple[int, list[tuple[Viewer, Cursor | None]]]] = [
                (1, [(v, None) for v in viewers]),
                (DEEP_PAGE, [(v, c) for v, c in deep if c is not None]),
            ]
            for page, targets in plans:
                if not targets:
                    report.notes.append(f"{what} @{spec.key}: no viewer has a page {page}")
                    continue

                async def call(i: int, store: FeedStore = store, targets: Any = targets) -> int:
                    viewer, cursor = targets[i % len(targets)]
                    read = await store.read(
                        viewer.event_id, viewer.user_id, cursor, PAGE_SIZE + 1, BUDGET
                    )
                    return min(len(read.messages), PAGE_SIZE)

                before = await _plan_counts(db)
                samples, rows = await _sample(
                    call, iterations=options.iterations, warmup=options.warmup
                )
                after = await _plan_counts(db)
                plan = (
                    f"{after['generic'] - before['generic']} generic / "
                    f"{after['custom'] - before['custom']} custom plans"
                )
                _add(report, Series(what, spec.key, page, samples, rows, plan), say)
        finally:
            await db.close()


async def _plan_counts(db: Database) -> asyncpg.Record:
    async with db.acquire(BUDGET) as conn:
        row = await conn.fetchrow(PLAN_COUNTS_SQL)
    assert row is not None
    return row


# --- the peer ---------------------------------------------------------------


async def _measure_peer(
    conn: asyncpg.Connection,
    report: FeedReport,
    spec: dataset.EventSpec,
    viewers: list[Viewer],
    options: FeedOptions,
    say: _Progress,
) -> None:
    """The plan's function, on a connection of its own.

    PL/pgSQL caches the plan of its RETURN QUERY per connection, and after
    five calls PostgreSQL settles on the generic plan, which for this query
    is several times slower (measured: ~0.4-0.8 s custom, ~2-6 s generic at
    the shape scale). The main peer figures force custom plans: the peer at
    its best, so every ratio against it is conservative. The generic plan,
    what a long-lived PostgREST connection ends up running, gets its own
    first-page row.
    """

    async def prepare(i: int, targets: Any) -> None:
        await peer.set_caller(conn, targets[i % len(targets)][0].user_id)

    async def call(i: int, targets: Any) -> int:
        _, before = targets[i % len(targets)]
        rows = await conn.fetch(
            peer.CALL_SQL, spec.event_id, PAGE_SIZE, before, timeout=PEER_TIMEOUT_S
        )
        return len(rows)

    async def measure(
        what: str, page: int, targets: list[tuple[Viewer, datetime | None]]
    ) -> Series:
        samples, rows = await _sample(
            lambda i: call(i, targets),
            iterations=options.peer_samples,
            warmup=min(2, len(targets)),
            prepare=lambda i: prepare(i, targets),
            budget_s=options.peer_budget_s,
        )
        series = Series(what, spec.key, page, samples, rows)
        _add(report, series, say)
        return series

    say(f"peer @{spec.key}: page 1 (up to {options.peer_samples} samples)")
    first: list[tuple[Viewer, datetime | None]] = [(v, None) for v in viewers]
    await conn.execute("SET plan_cache_mode = force_custom_plan")
    page1 = await measure(PEER, 1, first)
    if page1.median_ms / 1000 > PEER_DEEP_MAX_S:
        report.notes.append(
            f"peer @{spec.key}: page {DEEP_PAGE} and generic plan not measured (a call takes "
            f"{page1.median_ms / 1000:.1f}s; the 20th page's p_before needs {DEEP_PAGE - 1} "
            "calls per viewer)"
        )
        return
    deep: list[tuple[Viewer, datetime | None]] = []
    for viewer in viewers:
        before: datetime | None = None
        for _ in range(DEEP_PAGE - 1):
            rows = await peer.call(
                conn, viewer.user_id, spec.event_id, PAGE_SIZE, before, timeout=PEER_TIMEOUT_S
            )
            if len(rows) < PAGE_SIZE:
                break
            before = rows[-1]["created_at"]
        else:
            deep.append((viewer, before))
    if deep:
        await measure(PEER, DEEP_PAGE, deep)
    else:
        report.notes.append(f"peer @{spec.key}: no viewer has a page {DEEP_PAGE}")
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        await measure(PEER_GENERIC, 1, first)
    finally:
        await conn.execute("RESET plan_cache_mode")


# --- EXPLAIN ----------------------------------------------------------------


async def _explain(
    conn: asyncpg.Connection, dsn: str, spec: dataset.EventSpec, viewers: list[Viewer]
) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of our page statements, page 1 and 20, custom and generic.

    asyncpg prepares every statement, and PostgreSQL switches a prepared
    statement to its generic plan after five executions when that looks no
    dearer, so the server may well run the generic one.
    """
    # A viewer with tags (channels filtered) and, preferably, direct messages.
    viewer = next((v for v in viewers if v.tags), viewers[0])
    out: dict[str, str] = {}
    for model, store_class in (("v1", V1DeliveriesStore), ("v2", V2MessagesStore)):
        db = await single_connection(dsn)
        try:
            deep = await _walk_cursor(store_class(db), viewer, DEEP_PAGE - 1)
        finally:
            await db.close()
        for page, cursor in ((1, None), (DEEP_PAGE, deep)):
            if page != 1 and cursor is None:
                continue
            at = cursor or START
            args = (viewer.event_id, viewer.user_id, at.created_at, at.message_id, PAGE_SIZE + 1)
            head = f"{model} page {page} @{spec.key}, viewer tags {list(viewer.tags)}"
            rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + store_class.sql, *args)
            out[f"{head}: custom plan"] = "\n".join(r[0] for r in rows)
            out[f"{head}: generic plan"] = await _explain_generic(conn, store_class.sql, args)
    return out


async def _explain_generic(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> str:
    await conn.execute("PREPARE gf_bench_explain AS " + sql)
    try:
        types = await conn.fetchval(
            "SELECT parameter_types::text[] FROM pg_prepared_statements "
            "WHERE name = 'gf_bench_explain'"
        )
        # EXPLAIN EXECUTE takes no bind parameters: the values go in as literals.
        literals = await conn.fetchrow(
            "SELECT "
            + ", ".join(f"quote_nullable(${i + 1}::{t}::text)" for i, t in enumerate(types)),
            *args,
        )
        assert literals is not None
        params = ", ".join(f"{lit}::{t}" for lit, t in zip(literals, types, strict=True))
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE gf_bench_explain({params})")
        return "\n".join(r[0] for r in rows)
    finally:
        await conn.execute("RESET plan_cache_mode")
        await conn.execute("DEALLOCATE gf_bench_explain")
