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

import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc

from ..auth import mint
from ..model import Cursor, Viewer
from ..pgtypes import Conn
from ..storage import FeedStore, V1DeliveriesStore, V2MessagesStore
from . import dataset, peer
from .procs import ServerProcess, spawn_server
from .scratch import embedded_server, scratch_database

SECRET = "bench-secret-" + "f" * 40
PAGE_SIZE = 50
DEEP_PAGE = 20
QUERY_TIMEOUT_S = 30.0
PEER_TIMEOUT_S = 600.0
# The peer's 20th page needs 19 calls per viewer to find its cursor: only
# where one call is cheap enough for that to finish in reasonable time.
PEER_DEEP_MAX_S = 1.5
STREAM_PAGE_SIZE = 200  # the API's maximum page size: fewest round trips

PEER = "peer (plan v2 SQL)"
PEER_GENERIC = "peer, generic plan"
ADAPTER_V1, ADAPTER_V2 = "adapter v1", "adapter v2"
GRPC_V1, GRPC_V2 = "grpc v1", "grpc v2"
WHATS = (PEER, PEER_GENERIC, ADAPTER_V1, ADAPTER_V2, GRPC_V1, GRPC_V2)

_MODELS = {"v1": feed_pb2.READ_MODEL_V1, "v2": feed_pb2.READ_MODEL_V2}


@dataclass(frozen=True)
class FeedOptions:
    """What to run; defaults are `make bench`'s."""

    scale: str = "small"
    iterations: int = 200
    # Samples per peer figure (default: iterations / 20, at least 5); the peer
    # also stops after `peer_budget_s` of measuring (keeping at least 3).
    peer_iterations: int | None = None
    peer_budget_s: float = 30.0
    stream_1m: bool = False
    concurrency_s: float = 10.0
    clients: int = 32
    channels: int = 4
    warmup: int = 10
    viewers: int = 4
    stream_runs: int = 3
    log: bool = True

    @property
    def peer_samples(self) -> int:
        """Samples per peer figure."""
        if self.peer_iterations is not None:
            return self.peer_iterations
        return max(5, self.iterations // 20)


@dataclass
class Series:
    """The latencies of one (what, scale, page)."""

    what: str
    scale: str
    page: int
    samples_ms: list[float]
    rows: int
    # Which plans PostgreSQL ran (adapters only), e.g. "210 generic / 0 custom plans".
    plans: str = ""

    @property
    def median_ms(self) -> float:
        """Median latency."""
        return statistics.median(self.samples_ms)

    @property
    def p99_ms(self) -> float:
        """99th percentile, nearest rank."""
        return percentile(self.samples_ms, 99)


@dataclass
class FeedReport:
    """Everything one run measured."""

    options: dict[str, Any]
    machine: dict[str, Any]
    dataset: dict[str, Any]
    series: list[Series] = field(default_factory=list)
    stream: dict[str, Any] = field(default_factory=dict)
    concurrency: dict[str, Any] = field(default_factory=dict)
    explain: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def find(self, what: str, scale: str, page: int) -> Series | None:
        """The series of (what, scale, page), if measured."""
        for s in self.series:
            if (s.what, s.scale, s.page) == (what, scale, page):
                return s
        return None


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 2nd largest)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.started:6.1f}s] {msg}", flush=True)


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
        report.explain = await _explain(conn, explain_on, viewers[explain_on.key])
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
    report.elapsed_s = round(time.perf_counter() - say.started, 1)
    report.machine["loadavg_end"] = list(os.getloadavg())
    return report


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


# --- sampling ---------------------------------------------------------------


async def _sample(
    call: Callable[[int], Awaitable[int]],
    *,
    iterations: int,
    warmup: int,
    prepare: Callable[[int], Awaitable[None]] | None = None,
    budget_s: float | None = None,
    min_samples: int = 3,
) -> tuple[list[float], int]:
    """Times `call(i)` (after an untimed `prepare(i)`); returns (ms samples, rows of the last)."""
    rows = 0
    for i in range(warmup):
        if prepare is not None:
            await prepare(i)
        await call(i)
    samples: list[float] = []
    started = time.perf_counter()
    for i in range(iterations):
        if prepare is not None:
            await prepare(i)
        t0 = time.perf_counter()
        rows = await call(i)
        samples.append((time.perf_counter() - t0) * 1000)
        if (
            budget_s is not None
            and len(samples) >= min_samples
            and time.perf_counter() - started > budget_s
        ):
            break
    return samples, rows


# --- adapters, directly -----------------------------------------------------


async def _walk_cursor(
    conn: asyncpg.Connection, store: FeedStore, viewer: Viewer, pages: int
) -> Cursor | None:
    """Our keyset cursor after `pages` pages (as FeedReader: 51 asked, 50 kept), or None."""
    cursor: Cursor | None = None
    for _ in range(pages):
        rows = await store.page(conn, viewer, cursor, PAGE_SIZE + 1, timeout=QUERY_TIMEOUT_S)
        if len(rows) <= PAGE_SIZE:
            return None
        cursor = rows[PAGE_SIZE - 1].cursor
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
    """Each adapter on a fresh connection per event, as `page()` is called by the server.

    asyncpg prepares the statement, and PostgreSQL keeps whichever plan its
    plan cache settles on after five executions (custom, or the generic one
    when it looks no dearer) for the rest of the connection's life. A fresh
    connection per (adapter, event) lets each event's own calls decide,
    instead of the previous event's; the counts are reported with the series.
    """
    for what, store in ((ADAPTER_V1, V1DeliveriesStore()), (ADAPTER_V2, V2MessagesStore())):
        conn = await asyncpg.connect(dsn)
        try:
            deep = [(v, await _walk_cursor(conn, store, v, DEEP_PAGE - 1)) for v in viewers]
            plans: list[tuple[int, list[tuple[Viewer, Cursor | None]]]] = [
                (1, [(v, None) for v in viewers]),
                (DEEP_PAGE, [(v, c) for v, c in deep if c is not None]),
            ]
            for page, targets in plans:
                if not targets:
                    report.notes.append(f"{what} @{spec.key}: no viewer has a page {page}")
                    continue

                async def call(
                    i: int, conn: Any = conn, store: FeedStore = store, targets: Any = targets
                ) -> int:
                    viewer, cursor = targets[i % len(targets)]
                    rows = await store.page(
                        conn, viewer, cursor, PAGE_SIZE + 1, timeout=QUERY_TIMEOUT_S
                    )
                    return min(len(rows), PAGE_SIZE)

                before = await conn.fetchrow(PLAN_COUNTS_SQL)
                samples, rows = await _sample(
                    call, iterations=options.iterations, warmup=options.warmup
                )
                after = await conn.fetchrow(PLAN_COUNTS_SQL)
                assert before is not None and after is not None
                plan = (
                    f"{after['generic'] - before['generic']} generic / "
                    f"{after['custom'] - before['custom']} custom plans"
                )
                _add(report, Series(what, spec.key, page, samples, rows, plan), say)
        finally:
            await conn.close()


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


# --- gRPC end to end ----------------------------------------------------------


def _metadata(viewer: Viewer) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint(SECRET, viewer.user_id, ttl_s=6 * 3600)}"),)


async def _walk_token(
    stub: feed_pb2_grpc.GuestFeedServiceAsyncStub,
    event_id: uuid.UUID,
    viewer: Viewer,
    model: str,
    pages: int,
) -> str:
    """The page token after `pages` pages, or '' when the feed is shorter."""
    token = ""
    for _ in range(pages):
        resp = await stub.ListMessages(
            feed_pb2.ListMessagesRequest(
                event_id=str(event_id),
                page_size=PAGE_SIZE,
                page_token=token,
                read_model=_MODELS[model],
            ),
            metadata=_metadata(viewer),
        )
        token = resp.next_page_token
        if not token:
            return ""
    return token


async def _measure_grpc(
    server: ServerProcess,
    report: FeedReport,
    data: dataset.Dataset,
    events: list[dataset.EventSpec],
    viewers: dict[str, list[Viewer]],
    options: FeedOptions,
    say: _Progress,
) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = feed_pb2_grpc.GuestFeedServiceStub(channel)
        for spec in events:
            for what, model in ((GRPC_V1, "v1"), (GRPC_V2, "v2")):
                tokens = [
                    (v, await _walk_token(stub, spec.event_id, v, model, DEEP_PAGE - 1))
                    for v in viewers[spec.key]
                ]
                for page, targets in (
                    (1, [(v, "") for v in viewers[spec.key]]),
                    (DEEP_PAGE, [(v, t) for v, t in tokens if t]),
                ):
                    if not targets:
                        report.notes.append(f"{what} @{spec.key}: no viewer has a page {page}")
                        continue
                    requests = [
                        (
                            feed_pb2.ListMessagesRequest(
                                event_id=str(spec.event_id),
                                page_size=PAGE_SIZE,
                                page_token=token,
                                read_model=_MODELS[model],
                            ),
                            _metadata(v),
                        )
                        for v, token in targets
                    ]

                    async def call(i: int, requests: Any = requests) -> int:
                        request, metadata = requests[i % len(requests)]
                        resp = await stub.ListMessages(request, metadata=metadata)
                        return len(resp.messages)

                    samples, rows = await _sample(
                        call, iterations=options.iterations, warmup=options.warmup
                    )
                    _add(report, Series(what, spec.key, page, samples, rows), say)
        await _measure_stream(stub, server, report, data, events, viewers, options, say)
    await _measure_concurrency(server, report, data, events, viewers, options, say)


def _widest(viewers: list[Viewer]) -> Viewer:
    # The guest with the most tags sees the most channel messages.
    return max(viewers, key=lambda v: len(v.tags))


async def _stream(
    stub: feed_pb2_grpc.GuestFeedServiceAsyncStub,
    event_id: uuid.UUID,
    viewer: Viewer,
    *,
    max_messages: int = 0,
    on_page: Callable[[int], None] | None = None,
) -> tuple[int, float]:
    """Streams a V2 feed; returns (messages received, seconds)."""
    started = time.perf_counter()
    received = 0
    call = stub.StreamMessages(
        feed_pb2.StreamMessagesRequest(
            event_id=str(event_id),
            page_size=STREAM_PAGE_SIZE,
            read_model=feed_pb2.READ_MODEL_V2,
            max_messages=max_messages,
        ),
        metadata=_metadata(viewer),
    )
    async for response in call:
        received += len(response.messages)
        if on_page is not None:
            on_page(received)
    return received, time.perf_counter() - started


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process, from /proc (Linux)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 (utime, stime) are the 12th and 13th after the command.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0, `clear_refs` 5); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


async def _measure_stream(
    stub: feed_pb2_grpc.GuestFeedServiceAsyncStub,
    server: ServerProcess,
    report: FeedReport,
    data: dataset.Dataset,
    events: list[dataset.EventSpec],
    viewers: dict[str, list[Viewer]],
    options: FeedOptions,
    say: _Progress,
) -> None:
    # Throughput on the longest measured history (growth_100k when present).
    spec = max(events, key=lambda s: s.messages)
    viewer = _widest(viewers[spec.key])
    await _stream(stub, spec.event_id, viewer, max_messages=5_000)  # warm-up
    # Where the time goes: CPU seconds of the server process and of this
    # client process (both Python, on the same cores as PostgreSQL).
    server_cpu0, client_cpu0 = _cpu_seconds(server.proc.pid), time.process_time()
    runs = [await _stream(stub, spec.event_id, viewer) for _ in range(options.stream_runs)]
    server_cpu = _cpu_seconds(server.proc.pid) - server_cpu0
    client_cpu = time.process_time() - client_cpu0
    rates = [n / s for n, s in runs]
    report.stream["throughput"] = {
        "event": spec.key,
        "event_messages": spec.messages,
        "feed_messages_streamed": runs[0][0],
        "page_size": STREAM_PAGE_SIZE,
        "runs": len(runs),
        "seconds": [round(s, 3) for _, s in runs],
        "messages_per_s_median": round(statistics.median(rates)),
        "messages_per_s_runs": [round(r) for r in rates],
        "wall_s": round(sum(s for _, s in runs), 2),
        "server_cpu_s": round(server_cpu, 2),
        "client_cpu_s": round(client_cpu, 2),
    }
    say(
        f"stream @{spec.key}: {runs[0][0]} messages, "
        f"median {statistics.median(rates):,.0f} messages/s over {len(runs)} runs"
    )
    big = data.events.get("stream_1m")
    if big is None:
        report.notes.append("1M-message stream not run (pass --stream-1m or --scale all)")
        return
    big_viewer = viewers[big.key][0]
    pid = server.proc.pid
    # First 100,000 of the 1M event: the "100,000-message history".
    n, s = await _stream(stub, big.event_id, big_viewer, max_messages=100_000)
    report.stream["throughput_100k_of_1m"] = {
        "messages": n,
        "seconds": round(s, 3),
        "messages_per_s": round(n / s),
    }
    before = _proc_status(pid)
    reset = _reset_peak_rss(pid)
    samples: list[int] = []

    async def sample_rss() -> None:
        while True:
            samples.append(_proc_status(pid)["VmRSS"])
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample_rss())
    try:
        n, s = await _stream(stub, big.event_id, big_viewer)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    after = _proc_status(pid)
    report.stream["one_million"] = {
        "event": big.key,
        "messages": n,
        "seconds": round(s, 2),
        "messages_per_s": round(n / s),
        "server_pid": pid,
        "rss_before_mb": round(before["VmRSS"] / 1024, 1),
        "peak_rss_mb": round(after["VmHWM"] / 1024, 1),
        "peak_rss_source": "VmHWM, reset before the stream"
        if reset
        else "VmHWM since the server started (reset refused)",
        "max_sampled_rss_mb": round(max(samples, default=0) / 1024, 1),
        "rss_after_mb": round(after["VmRSS"] / 1024, 1),
    }
    say(
        f"stream @{big.key}: {n:,} messages in {s:.1f}s ({n / s:,.0f}/s), server peak RSS "
        f"{after['VmHWM'] / 1024:.0f} MB (before {before['VmRSS'] / 1024:.0f} MB)"
    )


# --- concurrency ----------------------------------------------------------------


async def _measure_concurrency(
    server: ServerProcess,
    report: FeedReport,
    data: dataset.Dataset,
    events: list[dataset.EventSpec],
    viewers: dict[str, list[Viewer]],
    options: FeedOptions,
    say: _Progress,
) -> None:
    spec = data.events.get("shape") or max(events, key=lambda s: s.messages)
    long_spec = data.events.get("stream_1m") or max(events, key=lambda s: s.messages)
    requests = [
        (
            feed_pb2.ListMessagesRequest(
                event_id=str(spec.event_id), page_size=PAGE_SIZE, read_model=feed_pb2.READ_MODEL_V2
            ),
            _metadata(v),
        )
        for v in viewers[spec.key]
    ]
    long_viewer = _widest(viewers[long_spec.key])
    channels = [grpc.aio.insecure_channel(server.target) for _ in range(options.channels)]
    stream_channel = grpc.aio.insecure_channel(server.target)
    try:
        stubs = [feed_pb2_grpc.GuestFeedServiceStub(c) for c in channels]

        async def load(duration_s: float) -> tuple[list[float], float]:
            latencies: list[float] = []
            stop_at = time.perf_counter() + duration_s

            async def client(k: int) -> None:
                stub = stubs[k % len(stubs)]
                i = k
                while time.perf_counter() < stop_at:
                    request, metadata = requests[i % len(requests)]
                    i += 1
                    t0 = time.perf_counter()
                    await stub.ListMessages(request, metadata=metadata)
                    latencies.append((time.perf_counter() - t0) * 1000)

            started = time.perf_counter()
            await asyncio.gather(*(client(k) for k in range(options.clients)))
            return latencies, time.perf_counter() - started

        def summary(latencies: list[float], elapsed: float) -> dict[str, Any]:
            return {
                "requests": len(latencies),
                "seconds": round(elapsed, 2),
                "requests_per_s": round(len(latencies) / elapsed, 1),
                "p50_ms": round(statistics.median(latencies), 3),
                "p99_ms": round(percentile(latencies, 99), 3),
                "max_ms": round(max(latencies), 3),
            }

        await load(min(1.0, options.concurrency_s))  # warm-up: connections, caches
        alone = summary(*await load(options.concurrency_s))
        say(f"concurrency {options.clients} clients, alone: {alone}")

        streamed = 0
        stream_stub = feed_pb2_grpc.GuestFeedServiceStub(stream_channel)

        async def long_stream() -> None:
            nonlocal streamed
            while True:
                base = streamed

                def seen(n: int, base: int = base) -> None:
                    nonlocal streamed
                    streamed = base + n

                await _stream(stream_stub, long_spec.event_id, long_viewer, on_page=seen)

        streaming = asyncio.create_task(long_stream())
        await asyncio.sleep(0.2)  # the stream is under way before the clients start
        try:
            t0 = time.perf_counter()
            beside = summary(*await load(options.concurrency_s))
            stream_s = time.perf_counter() - t0
        finally:
            streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streaming
        beside["stream_messages_per_s"] = round(streamed / stream_s)
        say(f"concurrency {options.clients} clients, beside a stream: {beside}")
        report.concurrency = {
            "event": spec.key,
            "rpc": "ListMessages V2, first page of 50",
            "clients": options.clients,
            "channels": options.channels,
            "stream_event": long_spec.key,
            "alone": alone,
            "with_stream": beside,
            "p99_with_over_without": round(beside["p99_ms"] / alone["p99_ms"], 2),
        }
    finally:
        for c in channels:
            await c.close(None)
        await stream_channel.close(None)


# --- EXPLAIN ----------------------------------------------------------------


class _Recorder:
    """A connection stand-in that records the statements an adapter runs.

    The EXPLAIN below then shows whatever the adapters execute, whichever way
    their SQL is built.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any, timeout: float | None = None) -> Any:
        self.statements.append((sql, args))
        return await self._conn.fetch(sql, *args, timeout=timeout)

    async def fetchrow(self, sql: str, *args: Any, timeout: float | None = None) -> Any:
        self.statements.append((sql, args))
        return await self._conn.fetchrow(sql, *args, timeout=timeout)

    async def fetchval(self, sql: str, *args: Any, timeout: float | None = None) -> Any:
        self.statements.append((sql, args))
        return await self._conn.fetchval(sql, *args, timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def _explain(
    conn: asyncpg.Connection, spec: dataset.EventSpec, viewers: list[Viewer]
) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of our page statements, page 1 and 20, custom and generic.

    asyncpg prepares every statement, and PostgreSQL switches a prepared
    statement to its generic plan after five executions when that looks no
    dearer, so the server may well run the generic one.
    """
    # A viewer with tags (channels filtered) and, preferably, direct messages.
    viewer = next((v for v in viewers if v.tags), viewers[0])
    out: dict[str, str] = {}
    for model, store in (("v1", V1DeliveriesStore()), ("v2", V2MessagesStore())):
        deep = await _walk_cursor(conn, store, viewer, DEEP_PAGE - 1)
        for page, cursor in ((1, None), (DEEP_PAGE, deep)):
            if page != 1 and cursor is None:
                continue
            recorder = _Recorder(conn)
            await store.page(
                cast(Conn, recorder), viewer, cursor, PAGE_SIZE + 1, timeout=QUERY_TIMEOUT_S
            )
            for k, (sql, args) in enumerate(recorder.statements):
                head = f"{model} page {page} @{spec.key}, viewer tags {list(viewer.tags)}" + (
                    f", statement {k + 1}" if len(recorder.statements) > 1 else ""
                )
                rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
                out[f"{head}: custom plan"] = "\n".join(r[0] for r in rows)
                out[f"{head}: generic plan"] = await _explain_generic(conn, sql, args)
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


# --- report -----------------------------------------------------------------


def _add(report: FeedReport, series: Series, say: _Progress) -> None:
    report.series.append(series)
    say(
        f"{series.what:<20} @{series.scale:<12} page {series.page:>2}: "
        f"median {series.median_ms:9.3f} ms  p99 {series.p99_ms:9.3f} ms  "
        f"({len(series.samples_ms)} samples, {series.rows} rows"
        + (f"; {series.plans})" if series.plans else ")")
    )


def ratios(report: FeedReport, s: Series) -> dict[str, float | None]:
    """peer/this, page20/page1, this/growth_1k and v1/v2 for one series (None: n/a)."""
    out: dict[str, float | None] = {
        "peer_over_this": None,
        "page20_over_page1": None,
        "over_growth_1k": None,
        "v1_over_v2": None,
    }
    if s.what not in (PEER, PEER_GENERIC):
        p = report.find(PEER, s.scale, s.page)
        if p is not None:
            out["peer_over_this"] = p.median_ms / s.median_ms
    if s.page == DEEP_PAGE:
        first = report.find(s.what, s.scale, 1)
        if first is not None:
            out["page20_over_page1"] = s.median_ms / first.median_ms
    if s.scale.startswith("growth_") and s.scale != "growth_1k":
        base = report.find(s.what, "growth_1k", s.page)
        if base is not None:
            out["over_growth_1k"] = s.median_ms / base.median_ms
    if s.what in (ADAPTER_V1, GRPC_V1):
        v2 = report.find(s.what.replace("v1", "v2"), s.scale, s.page)
        if v2 is not None:
            out["v1_over_v2"] = s.median_ms / v2.median_ms
    return out


def targets(report: FeedReport) -> list[tuple[str, str, bool | None]]:
    """The issue's targets that this run can judge: (target, value, met or None)."""
    out: list[tuple[str, str, bool | None]] = []
    g1 = report.find(GRPC_V2, "shape", 1)
    if g1 is not None:
        out.append(("grpc v2 page 1 @shape median <= 2 ms", f"{g1.median_ms:.3f} ms",
                    g1.median_ms <= 2.0))  # fmt: skip
        out.append(("grpc v2 page 1 @shape p99 <= 10 ms", f"{g1.p99_ms:.3f} ms", g1.p99_ms <= 10.0))
        p1 = report.find(PEER, "shape", 1)
        if p1 is not None:
            r = p1.median_ms / g1.median_ms
            out.append(("peer / grpc v2, page 1 @shape >= 300x", f"{r:,.0f}x", r >= 300))
        g20 = report.find(GRPC_V2, "shape", DEEP_PAGE)
        if g20 is not None:
            r = g20.median_ms / g1.median_ms
            out.append(("grpc v2 page 20 / page 1 @shape: the same (<= 1.5x)", f"{r:.2f}x",
                        r <= 1.5))  # fmt: skip
    for what in (GRPC_V2, ADAPTER_V2):
        small, big = report.find(what, "growth_1k", 1), report.find(what, "growth_100k", 1)
        if small is not None and big is not None:
            r = big.median_ms / small.median_ms
            out.append((f"{what} page 1, 100k / 1k messages <= 1.5x", f"{r:.2f}x", r <= 1.5))
    # The target is about a 100,000-message history: judged on the first
    # 100,000 of the 1M event, or else on growth_100k's feed.
    t100 = report.stream.get("throughput_100k_of_1m")
    tp = report.stream.get("throughput")
    if t100 is not None:
        rate, where = t100["messages_per_s"], f"first {t100['messages']:,} of stream_1m"
    elif tp is not None and tp["event_messages"] >= 100_000:
        rate, where = tp["messages_per_s_median"], f"{tp['event']} V2 feed"
    else:
        rate = None
    if rate is not None:
        out.append(
            (f"StreamMessages >= 50,000 messages/s ({where})", f"{rate:,}/s", rate >= 50_000)
        )
    big = report.stream.get("one_million")
    if big is not None:
        rss = f"{big['peak_rss_mb']} MB (before {big['rss_before_mb']} MB)"
        out.append(("server peak RSS streaming 1M messages (reported)", rss, None))
    if report.concurrency:
        c = report.concurrency
        out.append((
            f"{c['clients']} clients: p99 beside a long stream (reported)",
            f"{c['with_stream']['p99_ms']} ms vs {c['alone']['p99_ms']} ms alone "
            f"({c['p99_with_over_without']}x)",
            None,
        ))  # fmt: skip
    return out


def _git_label(git: dict[str, Any] | None) -> str:
    if not git:
        return ""
    return f", commit {git['commit'][:10]}" + (" + uncommitted changes" if git["dirty"] else "")


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2f}x"


def table(report: FeedReport) -> str:
    """The printed report: latencies with ratios, streaming, concurrency, targets."""
    head = (
        f"{'what':<20} {'scale':<12} {'page':>4} {'n':>5} {'median ms':>11} {'p99 ms':>11} "
        f"{'peer/this':>10} {'p20/p1':>8} {'vs 1k':>7} {'v1/v2':>7}"
    )
    lines = [
        f"guestfeed bench feed --scale {report.dataset['scale']}: "
        f"{report.machine['cpu_count']} cpu {report.machine['cpu_model']}, "
        f"PostgreSQL {report.machine['postgres']['server_version']}, "
        f"dataset {report.dataset['generation_s']:.1f}s "
        f"({report.dataset['counts']['messages']:,} messages, "
        f"{report.dataset['counts']['message_deliveries']:,} deliveries)"
        + _git_label(report.machine.get("git")),
        "",
        head,
        "-" * len(head),
    ]
    order = {w: i for i, w in enumerate(WHATS)}
    scales = list(dict.fromkeys(s.scale for s in report.series))
    for s in sorted(report.series, key=lambda s: (scales.index(s.scale), order[s.what], s.page)):
        r = ratios(report, s)
        lines.append(
            f"{s.what:<20} {s.scale:<12} {s.page:>4} {len(s.samples_ms):>5} "
            f"{s.median_ms:>11.3f} {s.p99_ms:>11.3f} "
            f"{_fmt_ratio(r['peer_over_this']):>10} {_fmt_ratio(r['page20_over_page1']):>8} "
            f"{_fmt_ratio(r['over_growth_1k']):>7} {_fmt_ratio(r['v1_over_v2']):>7}"
        )
    lines.append("")
    tp = report.stream.get("throughput")
    if tp:
        lines.append(
            f"StreamMessages V2 @{tp['event']}: {tp['feed_messages_streamed']:,} messages, "
            f"median {tp['messages_per_s_median']:,} messages/s ({tp['runs']} runs, page size "
            f"{tp['page_size']}; CPU over {tp['wall_s']}s: server {tp['server_cpu_s']}s, "
            f"client {tp['client_cpu_s']}s)"
        )
    t100 = report.stream.get("throughput_100k_of_1m")
    if t100:
        lines.append(
            f"StreamMessages V2 @stream_1m, first {t100['messages']:,}: "
            f"{t100['messages_per_s']:,} messages/s"
        )
    big = report.stream.get("one_million")
    if big:
        lines.append(
            f"StreamMessages V2 @stream_1m: {big['messages']:,} messages in {big['seconds']}s "
            f"({big['messages_per_s']:,}/s); server peak RSS {big['peak_rss_mb']} MB "
            f"(before {big['rss_before_mb']} MB, after {big['rss_after_mb']} MB; "
            f"{big['peak_rss_source']})"
        )
    if report.concurrency:
        c = report.concurrency
        for label, key in (("alone", "alone"), ("beside a long stream", "with_stream")):
            x = c[key]
            extra = (
                f", stream {x['stream_messages_per_s']:,} messages/s"
                if "stream_messages_per_s" in x
                else ""
            )
            lines.append(
                f"{c['clients']} clients x {c['rpc']} @{c['event']}, {label}: "
                f"{x['requests_per_s']:,} req/s, p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms"
                f"{extra}"
            )
    lines.append("")
    lines.append("targets:")
    for name, value, met in targets(report):
        mark = "  --  " if met is None else (" MET  " if met else " MISSED")
        lines.append(f"  [{mark}] {name}: {value}")
    for note in report.notes:
        lines.append(f"note: {note}")
    lines.append(f"(whole run {report.elapsed_s:.0f}s)")
    return "\n".join(lines)


def to_json(report: FeedReport) -> dict[str, Any]:
    """The report as JSON-ready data (the same figures as the table, plus samples)."""
    return {
        "options": report.options,
        "machine": report.machine,
        "dataset": report.dataset,
        "rows": [
            {
                "what": s.what,
                "scale": s.scale,
                "page": s.page,
                "samples": len(s.samples_ms),
                "rows_returned": s.rows,
                "plans": s.plans or None,
                "median_ms": round(s.median_ms, 4),
                "p99_ms": round(s.p99_ms, 4),
                "min_ms": round(min(s.samples_ms), 4),
                "max_ms": round(max(s.samples_ms), 4),
                **{
                    k: (round(v, 3) if v is not None else None)
                    for k, v in ratios(report, s).items()
                },
            }
            for s in report.series
        ],
        "stream": report.stream,
        "concurrency": report.concurrency,
        "targets": [{"target": n, "value": v, "met": m} for n, v, m in targets(report)],
        "notes": report.notes,
        "explain": report.explain,
        "elapsed_s": report.elapsed_s,
    }


def write_json(report: FeedReport, path: Path) -> None:
    """Writes `to_json(report)` to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(report), indent=2, default=str) + "\n")


def explain_text(report: FeedReport) -> str:
    """The EXPLAIN plans, one after another."""
    return "\n\n".join(f"== {k}\n{v}" for k, v in report.explain.items())


# --- context ----------------------------------------------------------------


def _options_json(options: FeedOptions) -> dict[str, Any]:
    return {
        "scale": options.scale,
        "iterations": options.iterations,
        "peer_samples": options.peer_samples,
        "peer_budget_s": options.peer_budget_s,
        "stream_1m": options.stream_1m or options.scale == "all",
        "concurrency_s": options.concurrency_s,
        "clients": options.clients,
        "channels": options.channels,
        "warmup": options.warmup,
        "viewers": options.viewers,
    }


def _dataset_json(data: dataset.Dataset) -> dict[str, Any]:
    return {
        "scale": data.scale,
        "generation_s": round(data.total_s, 1),
        "timings_s": data.timings_s,
        "counts": data.counts,
        "events": {
            k: {
                "event_id": str(s.event_id),
                "guests": s.guests,
                "messages": s.messages,
                "scheduled_messages": s.scheduled,
                "deliveries": s.deliveries,
            }
            for k, s in data.events.items()
        },
    }


def _host() -> tuple[str, float | None]:
    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return cpu_model, mem_gb


async def _machine(conn: asyncpg.Connection) -> dict[str, Any]:
    cpu_model, mem_gb = _host()
    from google.protobuf.internal import api_implementation

    settings = {}
    for name in (
        "server_version",
        "shared_buffers",
        "work_mem",
        "effective_cache_size",
        "random_page_cost",
        "max_parallel_workers_per_gather",
        "jit",
        "plan_cache_mode",
    ):
        settings[name] = await conn.fetchval(f"SHOW {name}")
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "mem_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "protobuf_backend": api_implementation.Type(),
        "asyncpg": asyncpg.__version__,
        "postgres": settings,
        "git": _git(),
    }


def _git() -> dict[str, Any] | None:
    """The checkout measured: commit and whether it had uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}
