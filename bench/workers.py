"""`python -m bench workers`: 32 concurrent clients against 1 and 2 worker processes.

On a scratch database (`--scale shape`: the issue's 300-guest, 30,000-message
event in a ~5M-delivery database, as `bench feed`'s concurrency figure), each
round starts a `guestfeed serve` child with GUESTFEED_WORKERS=N, each worker
with the same GUESTFEED_DB_POOL_MAX (10; `--workers 1,2,2x5` adds 2 workers of
5, the connections of 1 of 10), and 32 asyncio clients in this process call
ListMessages (V2, first page of 50, four guests in turn) back to back for
`seconds`. Each client has a connection of its own: the kernel spreads
connections over the workers (SO_REUSEPORT), not calls.

Rounds alternate the setups (1, 2, then 2, 1, ...) so the machine's
drift spreads over both. Per round: requests/s, p50 and p99, and the CPU the
client, the server's processes and PostgreSQL's backends used; the table is
the median of the rounds. Client, server and PostgreSQL share this machine's
cores: the figures say what a second worker gives here, not on a host of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.auth import mint
from guestfeed_server.testing import embedded_server, scratch_database, spawn_server

from . import dataset
from .common import PAGE_SIZE, SECRET, _Progress, set_rollout
from .measure_db import _viewers
from .measure_grpc import _cpu_seconds
from .report import percentile

_Metadata = tuple[tuple[str, str], ...]
# A connection per channel: by default grpc shares one between channels to one target.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
BACKENDS_SQL = "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"


@dataclass(frozen=True)
class WorkersOptions:
    """What to run; the defaults are the documented run's."""

    # (workers, GUESTFEED_DB_POOL_MAX of each): 2 x 5 holds the connections 1 x 10 does.
    setups: tuple[tuple[int, int], ...] = ((1, 10), (2, 10))
    rounds: int = 3
    seconds: float = 15.0
    warmup_s: float = 2.0
    clients: int = 32
    scale: str = "shape"
    viewers: int = 4
    log: bool = True


@dataclass
class Round:
    """One window against one server."""

    workers: int
    pool_max: int
    round: int
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    # CPU seconds per second of the window (1.0 = one core busy).
    client_cores: float
    server_cores: float
    postgres_cores: float | None
    # Calls per worker process (warm-up included), largest first.
    calls_per_worker: list[int]
    # The same window as the server's rpc lines see it (handler start to end):
    # what is missing from the client's figure waited for a turn of a
    # worker's event loop, or for a core.
    server_p50_ms: float
    server_p99_ms: float
    loadavg: float


@dataclass
class WorkersReport:
    """Every round, and the machine."""

    options: dict[str, Any]
    machine: dict[str, Any]
    rounds: list[Round] = field(default_factory=list)


async def run(options: WorkersOptions, server_dsn: str | None) -> WorkersReport:
    """The benchmark on a scratch database (on a temporary embedded server without DSN)."""
    if server_dsn is None:
        with embedded_server() as dsn:
            return await run_on(options, dsn)
    return await run_on(options, server_dsn)


async def run_on(options: WorkersOptions, server_dsn: str) -> WorkersReport:
    """The benchmark on a scratch database of `server_dsn`'s server."""
    async with scratch_database(server_dsn, "guestfeed_bench_workers") as (name, dsn):
        return await run_in(options, name, dsn)


async def run_in(options: WorkersOptions, database: str, dsn: str) -> WorkersReport:
    """The benchmark in the empty database `database` at `dsn` (a superuser's; it is filled)."""
    say = _Progress(options.log)
    conn = await asyncpg.connect(dsn)
    try:
        say(f"generating the {options.scale!r} dataset")
        data = await dataset.generate(conn, options.scale, log=options.log)
        spec = data.events.get("shape") or max(data.events.values(), key=lambda s: s.messages)
        viewers = await _viewers(conn, spec.event_id, options.viewers)
        # Every guest gets V2 (a guest's own token gets the rollout's model).
        await set_rollout(conn, "measure V2 pages", v2_enabled=True, v2_percentage=100)
        pg_version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    report = WorkersReport(
        options=asdict(options),
        machine={"cpus": os.cpu_count(), "postgres": pg_version, "event": spec.key},
    )
    requests: list[tuple[feed_pb2.ListMessagesRequest, _Metadata]] = [
        (
            feed_pb2.ListMessagesRequest(event_id=str(spec.event_id), page_size=PAGE_SIZE),
            (("authorization", f"Bearer {mint(SECRET, v.user_id, ttl_s=6 * 3600)}"),),
        )
        for v in viewers
    ]
    for r in range(options.rounds):
        order = options.setups if r % 2 == 0 else tuple(reversed(options.setups))
        for n, pool in order:
            one = await _round(options, database, dsn, requests, n, pool, r)
            report.rounds.append(one)
            say(
                f"round {r + 1}, {n} worker(s) x pool {pool}: {one.requests_per_s:,.0f} req/s, "
                f"p50 {one.p50_ms:.1f} ms, p99 {one.p99_ms:.1f} ms, calls per worker "
                f"{one.calls_per_worker}, cores: client {one.client_cores:.2f} server "
                f"{one.server_cores:.2f} postgres {one.postgres_cores}; in the server p50 "
                f"{one.server_p50_ms:.1f} ms, p99 {one.server_p99_ms:.1f} ms"
            )
    return report


async def _round(
    options: WorkersOptions,
    database: str,
    dsn: str,
    requests: list[tuple[feed_pb2.ListMessagesRequest, _Metadata]],
    workers: int,
    pool_max: int,
    index: int,
) -> Round:
    log_file = Path(tempfile.gettempdir()) / f"guestfeed-bench-workers-{os.getpid()}.log"
    loadavg = os.getloadavg()[0]
    server = await spawn_server(
        {
            "GUESTFEED_DATABASE_URL": dsn,
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_LISTEN": "127.0.0.1:0",
            "GUESTFEED_DB_POOL_MAX": str(pool_max),
            "GUESTFEED_WORKERS": str(workers),
            "GUESTFEED_PROMETHEUS_PORT": "",
            "GUESTFEED_LOG_FORMAT": "json",
        },
        # Every RPC is logged, as in production, to a file the client never reads.
        log_file=log_file,
    )
    channels = [
        grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION)
        for _ in range(options.clients)
    ]
    conn = await asyncpg.connect(dsn)
    try:
        stubs = [feed_pb2_grpc.GuestFeedServiceStub(c) for c in channels]
        first = await stubs[0].ListMessages(requests[0][0], metadata=requests[0][1])
        if first.read_model != feed_pb2.READ_MODEL_V2:
            raise RuntimeError(f"pages are {feed_pb2.ReadModel.Name(first.read_model)}, not V2")
        await _load(stubs, requests, options.warmup_s)
        pids = _server_pids(server.proc.pid, log_file)
        cpu0 = await _cpu(conn, database, pids)
        window = time.time()
        latencies, errors, elapsed = await _load(stubs, requests, options.seconds)
        window_end = time.time()
        cpu1 = await _cpu(conn, database, pids)
    finally:
        await conn.close()
        for c in channels:
            await c.close(None)
        code = await server.stop(timeout_s=30)
    calls = _calls_per_pid(log_file)
    handled = _server_ms(log_file, window, window_end)
    log_file.unlink(missing_ok=True)
    if code != 0:
        errors["server exit code"] = code
    pg = None
    if cpu1["pg"] is not None and cpu0["pg"] is not None:
        pg = round((cpu1["pg"] - cpu0["pg"]) / elapsed, 2)
    return Round(
        workers=workers,
        pool_max=pool_max,
        round=index + 1,
        requests=len(latencies),
        seconds=round(elapsed, 2),
        requests_per_s=round(len(latencies) / elapsed, 1),
        p50_ms=round(statistics.median(latencies), 2),
        p99_ms=round(percentile(latencies, 99), 2),
        errors=dict(errors),
        client_cores=round((cpu1["client"] - cpu0["client"]) / elapsed, 2),
        server_cores=round((cpu1["server"] - cpu0["server"]) / elapsed, 2),
        postgres_cores=pg,
        calls_per_worker=sorted(calls.values(), reverse=True),
        server_p50_ms=round(statistics.median(handled), 2) if handled else 0.0,
        server_p99_ms=round(percentile(handled, 99), 2) if handled else 0.0,
        loadavg=round(loadavg, 2),
    )


async def _load(
    stubs: list[feed_pb2_grpc.GuestFeedServiceAsyncStub],
    requests: list[tuple[feed_pb2.ListMessagesRequest, _Metadata]],
    seconds: float,
) -> tuple[list[float], Counter[str], float]:
    """Every client calls back to back on its own connection for `seconds`."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    stop_at = time.perf_counter() + seconds

    async def client(k: int) -> None:
        stub = stubs[k]
        i = k
        while time.perf_counter() < stop_at:
            request, metadata = requests[i % len(requests)]
            i += 1
            t0 = time.perf_counter()
            try:
                await stub.ListMessages(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] += 1
                continue
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(len(stubs))))
    return latencies, errors, time.perf_counter() - started


def _server_pids(parent: int, log_file: Path) -> list[int]:
    """The serving processes: the workers the parent logged, else the process itself."""
    pids = [
        int(line["pid"])
        for line in _lines(log_file)
        if str(line.get("msg", "")).startswith("guestfeed worker ")
    ]
    return [parent, *pids]


async def _cpu(conn: asyncpg.Connection, database: str, pids: list[int]) -> dict[str, Any]:
    server = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            server += _cpu_seconds(pid)
    pg: float | None = 0.0
    try:
        for row in await conn.fetch(BACKENDS_SQL, database):
            assert pg is not None
            pg += _cpu_seconds(int(row["pid"]))
    except OSError:  # another user's PostgreSQL (--dsn) may hide its processes
        pg = None
    return {"server": server, "client": time.process_time(), "pg": pg}


def _server_ms(log_file: Path, start: float, end: float) -> list[float]:
    """duration_ms of the rpc lines written within [start, end] (wall clock)."""
    out = []
    for line in _lines(log_file):
        if line.get("msg") == "rpc" and "duration_ms" in line:
            ts = datetime.fromisoformat(str(line["ts"])).timestamp()
            if start <= ts <= end:
                out.append(float(line["duration_ms"]))
    return out


def _calls_per_pid(log_file: Path) -> Counter[int]:
    return Counter(int(line.get("pid", 0)) for line in _lines(log_file) if line.get("msg") == "rpc")


def _lines(log_file: Path) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(FileNotFoundError), log_file.open() as f:
        for raw in f:
            if raw.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(raw))
    return out


# --- report -----------------------------------------------------------------------


def markdown(report: WorkersReport) -> str:
    """The medians per worker count against the first, then every round."""
    counts = list(dict.fromkeys((r.workers, r.pool_max) for r in report.rounds))
    med: dict[tuple[int, int], dict[str, float]] = {}
    for n in counts:
        rs = [r for r in report.rounds if (r.workers, r.pool_max) == n]
        med[n] = {
            "rps": statistics.median(r.requests_per_s for r in rs),
            "p50": statistics.median(r.p50_ms for r in rs),
            "p99": statistics.median(r.p99_ms for r in rs),
            "client": statistics.median(r.client_cores for r in rs),
            "server": statistics.median(r.server_cores for r in rs),
            "pg": statistics.median(r.postgres_cores or 0.0 for r in rs),
            "s50": statistics.median(r.server_p50_ms for r in rs),
            "s99": statistics.median(r.server_p99_ms for r in rs),
            "rounds": len(rs),
        }
    base = med[counts[0]]
    o = report.options
    out = [
        f"{o['clients']} clients, ListMessages V2 first page of {PAGE_SIZE} "
        f"@{report.machine['event']}, {o['seconds']:g} s rounds; "
        f"{report.machine['cpus']} CPUs shared by client, server and PostgreSQL "
        f"{report.machine['postgres']}",
        "",
        "| workers x pool | rounds | requests/s | p50 ms | p99 ms | req/s vs 1st | p50 vs 1st "
        "| p99 vs 1st | in the server: p50 / p99 ms | cores: client / server / PostgreSQL |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in counts:
        m = med[n]
        out.append(
            f"| {n[0]} x {n[1]} | {m['rounds']:.0f} | {m['rps']:,.0f} | {m['p50']:.1f} "
            f"| {m['p99']:.1f} "
            f"| {m['rps'] / base['rps']:.2f} | {m['p50'] / base['p50']:.2f} "
            f"| {m['p99'] / base['p99']:.2f} | {m['s50']:.1f} / {m['s99']:.1f} "
            f"| {m['client']:.2f} / {m['server']:.2f} / "
            f"{m['pg']:.2f} |"
        )
    out += [
        "",
        "| round | workers x pool | requests/s | p50 ms | p99 ms | in the server: p50 / p99 ms "
        "| calls per worker | errors | load avg at start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rounds:
        out.append(
            f"| {r.round} | {r.workers} x {r.pool_max} | {r.requests_per_s:,.0f} | {r.p50_ms:.1f} "
            f"| {r.p99_ms:.1f} | {r.server_p50_ms:.1f} / {r.server_p99_ms:.1f} "
            f"| {' / '.join(map(str, r.calls_per_worker))} "
            f"| {sum(r.errors.values()) or ''} | {r.loadavg:.2f} |"
        )
    return "\n".join(out)


def write_json(report: WorkersReport, path: Path) -> None:
    """Every round's figures, as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
