"""What a connection pooler costs a page: direct, PgBouncer session mode, transaction mode.

Per page, the store's read through each path (the service's own pool, as
the server borrows it), and ListMessages end to end against a `guestfeed
serve` child whose database URL is the pooler. Transaction mode is measured
as the service runs it (the page statement inside a PL/pgSQL function, whose
plan PostgreSQL caches in the server session) and, for comparison only, as
the page statement itself sent unnamed, which PostgreSQL then parses and
plans on every call (and which would run without the planner's SETs).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.domain.budget import Budget
from guestfeed_server.domain.model import Viewer
from guestfeed_server.settings import PoolMode, Settings
from guestfeed_server.storage import Database, V2MessagesStore
from guestfeed_server.testing import PGBOUNCER, running_pgbouncer, spawn_server
from guestfeed_server.testing.pgbouncer import MISSING

from . import dataset
from .common import PAGE_SIZE, QUERY_TIMEOUT_S, SECRET, FeedOptions, _Progress, _sample
from .measure_grpc import _metadata
from .report import FeedReport, Series

ADAPTER_DIRECT = "adapter v2 direct"
ADAPTER_SESSION = "adapter v2 pgb-session"
ADAPTER_TXN = "adapter v2 pgb-txn"
ADAPTER_TXN_STATEMENT = "adapter v2 pgb-txn, no fn"
GRPC_SESSION = "grpc v2 pgb-session"
GRPC_TXN = "grpc v2 pgb-txn"


def _add(report: FeedReport, series: Series, say: _Progress) -> None:
    report.poolers.append(series)
    say(f"{series.what:<28} @{series.scale}: median {series.median_ms:.3f} ms")


def _settings(mode: PoolMode) -> Settings:
    return Settings.from_env(
        {
            "GUESTFEED_DATABASE_URL": "postgresql://unused",
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_DB_POOL_MODE": mode.value,
            "GUESTFEED_DB_POOL_MAX": "2",
        }
    )


async def _adapter(
    dsn: str,
    what: str,
    mode: PoolMode,
    spec: dataset.EventSpec,
    viewers: list[Viewer],
    options: FeedOptions,
    report: FeedReport,
    say: _Progress,
    *,
    server_side: bool = False,
) -> None:
    db = await Database.open(dsn, _settings(mode))
    store = V2MessagesStore(db, server_side=server_side)
    budget = Budget(QUERY_TIMEOUT_S)
    try:

        async def call(i: int) -> int:
            viewer = viewers[i % len(viewers)]
            read = await store.read(spec.event_id, viewer.user_id, None, PAGE_SIZE + 1, budget)
            return min(len(read.messages), PAGE_SIZE)

        samples, rows = await _sample(call, iterations=options.iterations, warmup=options.warmup)
        _add(report, Series(what, spec.key, 1, samples, rows), say)
    finally:
        await db.close()


async def _grpc(
    dsn: str,
    direct_dsn: str,
    what: str,
    mode: PoolMode,
    spec: dataset.EventSpec,
    viewers: list[Viewer],
    options: FeedOptions,
    report: FeedReport,
    say: _Progress,
) -> None:
    server = await spawn_server(
        {
            "GUESTFEED_DATABASE_URL": dsn,
            "GUESTFEED_DIRECT_DATABASE_URL": direct_dsn,
            "GUESTFEED_DB_POOL_MODE": mode.value,
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_LISTEN": "127.0.0.1:0",
        },
        log_file=Path(tempfile.gettempdir()) / f"guestfeed-bench-pooler-{os.getpid()}.log",
    )
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = feed_pb2_grpc.GuestFeedServiceStub(channel)
            requests: list[Any] = [
                (
                    feed_pb2.ListMessagesRequest(
                        event_id=str(spec.event_id),
                        page_size=PAGE_SIZE,
                        read_model=feed_pb2.READ_MODEL_V2,
                    ),
                    _metadata(v),
                )
                for v in viewers
            ]

            async def call(i: int) -> int:
                request, metadata = requests[i % len(requests)]
                return len((await stub.ListMessages(request, metadata=metadata)).messages)

            samples, rows = await _sample(
                call, iterations=options.iterations, warmup=options.warmup
            )
            _add(report, Series(what, spec.key, 1, samples, rows), say)
    finally:
        await server.stop()


async def measure_poolers(
    dsn: str,
    report: FeedReport,
    spec: dataset.EventSpec,
    viewers: list[Viewer],
    options: FeedOptions,
    say: _Progress,
) -> None:
    """The v2 first page directly and through PgBouncer in both modes (skipped without it)."""
    if PGBOUNCER is None:
        report.notes.append(f"pooler figures skipped: {MISSING}")
        return
    await _adapter(dsn, ADAPTER_DIRECT, PoolMode.SESSION, spec, viewers, options, report, say)
    for mode in PoolMode:
        # A session pooler pins a server connection per client; a transaction
        # pooler shares fewer server connections than it has clients.
        size = 3 if mode is PoolMode.TRANSACTION else 20
        with running_pgbouncer(dsn, mode.value, server_pool=size) as bouncer:
            pooled = bouncer.dsn(dsn)
            if mode is PoolMode.SESSION:
                await _adapter(pooled, ADAPTER_SESSION, mode, spec, viewers, options, report, say)
                await _grpc(pooled, dsn, GRPC_SESSION, mode, spec, viewers, options, report, say)
            else:
                await _adapter(
                    pooled, ADAPTER_TXN, mode, spec, viewers, options, report, say, server_side=True
                )
                await _adapter(
                    pooled, ADAPTER_TXN_STATEMENT, mode, spec, viewers, options, report, say
                )
                await _grpc(pooled, dsn, GRPC_TXN, mode, spec, viewers, options, report, say)
