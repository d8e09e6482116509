"""`guestfeed bench feed`: our read paths against the plan's SQL, in one run on one database.

On a scratch database filled by `dataset.py` it measures, for a few viewers
(guests with 0, 1, 2 and 3 tags, the earliest to join, so their feeds are
long), taking turns:

* the peer: the plan's `get_guest_event_messages_v2` as written (`peer.sql`),
  with its Phase 1 indexes, first page (p_limit 50) and 20th page (p_before =
  the 19th page's last `created_at`, the plan's own cursor); then the plan's
  indexes are dropped, so ours run with production's and `migrate`'s only;
* our V1 and V2 adapters called directly on an asyncpg connection, first and
  20th page (our keyset cursor), each asking 51 rows as the server does;
* ListMessages end to end over gRPC against a `guestfeed serve` child
  process, V1 and V2, first page of 50 and the 20th page by following tokens;
* StreamMessages throughput (messages/s to a Python client) and, with the
  1M-message event, the server's peak RSS while streaming it;
* 32 concurrent clients doing ListMessages for a while, alone and beside one
  long StreamMessages.

After a warm-up, each figure is the median and p99 of its samples. The peer
is slow, so it gets fewer samples and a time budget (see `FeedOptions`).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import asyncpg

from guestfeed_server.testing import embedded_server, scratch_database, spawn_server

from . import dataset, peer
from .common import (
    DEEP_PAGE,
    PAGE_SIZE,
    PEER_GENERIC,
    SECRET,
    WHATS,
    FeedOptions,
    _Progress,
    set_rollout,
)
from .machine import _dataset_json, _machine, _options_json
from .measure_db import (
    _explain,
    _measure_adapters,
    _measure_peer,
    _viewers,
)
from .measure_grpc import _measure_grpc
from .poolers import measure_poolers
from .report import (
    FeedReport,
    Series,
    explain_text,
    table,
    to_json,
    write_json,
)

# What `guestfeed bench feed` and its tests use as `feed.<name>`; the
# pieces are defined in the modules beside this one.
__all__ = [
    "DEEP_PAGE",
    "PAGE_SIZE",
    "PEER_GENERIC",
    "WHATS",
    "FeedOptions",
    "FeedReport",
    "Series",
    "explain_text",
    "run",
    "run_in",
    "run_on",
    "table",
    "to_json",
    "write_json",
]


# --- entry points -----------------------------------------------------------


async def run(options: FeedOptions, server_dsn: str | None) -> FeedReport:
    """The whole benchmark on a scratch database (on a temporary embedded server without DSN)."""
    if server_dsn is None:
        with embedded_server() as dsn:
            return await run_on(options, dsn)
    return await run_on(options, server_dsn)


async def run_on(options: FeedOptions, server_dsn: str) -> FeedReport:
    """The whole benchmark on a scratch database of `server_dsn`'s server."""
    async with scratch_database(server_dsn, "guestfeed_bench_feed") as (_, dsn):
        return await run_in(options, dsn)


async def run_in(options: FeedOptions, dsn: str) -> FeedReport:
    """The whole benchmark in the empty database `dsn` (a superuser's; it is filled)."""
    say = _Progress(options.log)
    # Before our own dataset load raises it: other work on the machine.
    load_before = list(os.getloadavg())
    conn = await asyncpg.connect(dsn)
    try:
        say(f"generating the {options.scale!r} dataset")
        data = await dataset.generate(
            conn, options.scale, stream_1m=options.stream_1m, log=options.log
        )
        say(f"dataset ready in {data.total_s:.1f}s: {data.counts}")
        # The stored kill switch starts on (v2_enabled false), and it wins over
        # a named model: switch it off so each model is measured by name.
        await set_rollout(conn, "the feed benchmark reads both models by name", v2_enabled=True)
        await peer.install(conn)
        report = FeedReport(
            options=_options_json(options),
            machine=await _machine(conn),
            dataset=_dataset_json(data),
        )
        report.machine["loadavg_start"] = load_before
        if load_before[0] > 0.7:
            report.notes.append(
                f"the machine was busy when the run started (load average "
                f"{load_before[0]:.2f}): figures may be inflated"
            )
        if peer.plan_function_matches() is False:
            report.notes.append("peer.sql's function differs from the plan's (see peer.py)")
        events = [s for k, s in data.events.items() if k != "stream_1m"]
        viewers = {
            s.key: await _viewers(conn, s.event_id, options.viewers) for s in data.events.values()
        }
        peer_conn = await asyncpg.connect(dsn)
        try:
            for spec in events:
                await _measure_peer(peer_conn, report, spec, viewers[spec.key], options, say)
        finally:
            await peer_conn.close()
        # Each side runs with its own indexes only: the plan's Phase 1 indexes
        # are not in production (nor in `migrate`), and left in place the
        # planner picks them for our queries too.
        await peer.drop_indexes(conn)
        report.notes.append(
            "the plan's Phase 1 indexes were dropped after the peer's measurements: "
            "ours ran with the production indexes and migrate's only"
        )
        for spec in events:
            await _measure_adapters(dsn, report, spec, viewers[spec.key], options, say)
        explain_on = data.events.get("shape") or events[0]
        report.explain = await _explain(conn, dsn, explain_on, viewers[explain_on.key])
    finally:
        await conn.close()
    say("starting `guestfeed serve`")
    server = await spawn_server(
        {
            "GUESTFEED_DATABASE_URL": dsn,
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_LISTEN": "127.0.0.1:0",
            # No background v1/v2 comparisons: they would add load.
            "GUESTFEED_CONSISTENCY_SAMPLE_RATE": "0",
        },
        # The server still logs every RPC, to a file, as in production.
        log_file=Path(tempfile.gettempdir()) / f"guestfeed-bench-serve-{os.getpid()}.log",
    )
    try:
        await _measure_grpc(server, report, data, events, viewers, options, say)
    finally:
        code = await server.stop()
        if code != 0:
            report.notes.append(f"guestfeed serve exited with {code}")
    pooled_on = data.events.get("shape") or events[0]
    await measure_poolers(dsn, report, pooled_on, viewers[pooled_on.key], options, say)
    report.elapsed_s = round(time.perf_counter() - say.started, 1)
    report.machine["loadavg_end"] = list(os.getloadavg())
    return report
