"""`python -m bench soak`: many clients for a while against one real server; does anything grow?

On a scratch database filled by `dataset.py` (six events, ~800 guests,
6,600 messages, ~360,000 deliveries) one `guestfeed serve` child process
serves `clients` concurrent asyncio clients of this process for `seconds`.
The clients mix pages, streams read and abandoned, cancellations, bad tokens
and rollout flips (`soak_load.py`). Every few seconds `soak_watch.py`
samples the server process, its database connections and PostgreSQL's
transactions; `soak_report.py` turns it all into the tables and a verdict.
The run fails on any unexpected status, any server error log line, or
anything judged to grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from guestfeed.v1 import feed_pb2_grpc, rollout_pb2_grpc
from guestfeed_server.auth import mint
from guestfeed_server.testing import spawn_server

from . import dataset
from .common import in_scratch_database
from .soak_kinds import DEFAULT_WEIGHTS
from .soak_load import Guest, Load, run_clients, service_metadata
from .soak_report import Check, SoakReport, judge, server_statuses, summarize
from .soak_watch import Sample, Watcher

SECRET = "bench-secret-" + "s" * 40

# Several events of different sizes, so callers' feeds differ in length.
SOAK_EVENTS: tuple[dataset.EventSpec, ...] = tuple(
    dataset.EventSpec(
        f"soak_{k}",
        100 + k,
        guests=60 + 30 * k,
        messages=600 + 200 * k,
        scheduled=20 + 5 * k,
        span_days=30 + 10 * k,
    )
    for k in range(6)
)
# One small event: for the smoke test, where the dataset is not the point.
TINY_EVENTS = (
    dataset.EventSpec("soak_tiny", 100, guests=40, messages=300, scheduled=10, span_days=10),
)

CALLERS_SQL = """
SELECT DISTINCT event_id, user_id FROM public.event_guests
 WHERE user_id IS NOT NULL AND removed_at IS NULL
 ORDER BY event_id, user_id
"""


@dataclass(frozen=True)
class SoakOptions:
    """What to run; defaults are `make soak`'s."""

    clients: int = 50
    seconds: float = 300.0
    channels: int = 4
    seed: int | None = None
    pool_max: int = 10
    flip_every_s: float = 1.0
    hold_s: tuple[float, float] = (1.0, 5.0)
    # Abandoned streams held open at once at most (default: twice `clients`).
    max_held: int | None = None
    # Default: a 20th of the run, between 1 s and 10 s.
    sample_every_s: float | None = None
    settle_s: float = 3.0
    events: tuple[dataset.EventSpec, ...] = SOAK_EVENTS
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    log: bool = True

    @property
    def sample_interval_s(self) -> float:
        """Seconds between samples under load."""
        if self.sample_every_s is not None:
            return self.sample_every_s
        return min(10.0, max(1.0, self.seconds / 20))


async def run(options: SoakOptions, server_dsn: str | None) -> SoakReport:
    """The soak on a scratch database (on a temporary embedded server without DSN)."""
    return await in_scratch_database(
        server_dsn, "guestfeed_bench_soak", lambda name, dsn: run_in(options, name, dsn)
    )


async def run_in(options: SoakOptions, database: str, dsn: str) -> SoakReport:
    """The soak in the empty database `database` at `dsn` (a superuser's; it is filled)."""
    say = _Progress(options.log)
    seed = options.seed if options.seed is not None else random.randrange(2**31)
    conn = await asyncpg.connect(dsn)
    try:
        say("generating the dataset")
        data = await dataset.generate(conn, "soak", specs=options.events)
        callers = await conn.fetch(CALLERS_SQL)
        pg_version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    ttl = int(options.seconds) + 3600
    guests = [
        Guest(
            str(r["event_id"]),
            r["user_id"],
            (("authorization", f"Bearer {mint(SECRET, r['user_id'], ttl_s=ttl)}"),),
        )
        for r in callers
    ]
    machine: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "postgres": pg_version,
        "python": sys.version.split()[0],
    }
    log_file = Path(tempfile.gettempdir()) / f"guestfeed-soak-serve-{os.getpid()}.log"
    prometheus = _free_port()
    say(f"dataset ready ({data.counts}); starting `guestfeed serve`")
    server = await spawn_server(
        {
            "GUESTFEED_DATABASE_URL": dsn,
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_LISTEN": "127.0.0.1:0",
            "GUESTFEED_DB_POOL_MAX": str(options.pool_max),
            "GUESTFEED_PROMETHEUS_PORT": str(prometheus),
        },
        # The server logs every RPC, as in production, but to a file: the
        # client never spends its time reading the log.
        log_file=log_file,
    )
    watcher = Watcher(server.proc.pid, database, f"http://127.0.0.1:{prometheus}/metrics")
    channels = [grpc.aio.insecure_channel(server.target) for _ in range(options.channels)]
    exit_code: int | None = None
    try:
        await watcher.open(dsn)
        load = Load(
            feeds=[feed_pb2_grpc.GuestFeedServiceStub(c) for c in channels],
            rollouts=[rollout_pb2_grpc.RolloutServiceStub(c) for c in channels],
            guests=guests,
            secret=SECRET,
            service_metadata=service_metadata(SECRET),
            weights=options.weights,
            flip_every_s=options.flip_every_s,
            hold_s=options.hold_s,
            max_held=2 * options.clients if options.max_held is None else options.max_held,
        )
        watcher.held_streams = lambda: len(load.held)
        before = await watcher.scrape()
        watcher.start_clock()
        start = await watcher.sample(before)
        samples: list[Sample] = []
        say(f"{options.clients} clients for {options.seconds:g} s (seed {seed})")
        sampler = asyncio.create_task(_sample_every(watcher, options.sample_interval_s, samples))
        try:
            load_s = await run_clients(load, options.clients, options.seconds, seed)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        say(f"load done in {load_s:.1f}s; settling {options.settle_s:g}s")
        # The end is after the load: whatever the calls held should be back.
        await asyncio.sleep(options.settle_s)
        after = await watcher.scrape()
        end = await watcher.sample(after)
    finally:
        for c in channels:
            await c.close(None)
        await watcher.close()
        exit_code = await server.stop()
    machine["loadavg_end"] = list(os.getloadavg())
    report = SoakReport(
        options=_options_json(options, seed),
        machine=machine,
        dataset={
            "events": len(options.events),
            "guests": data.counts.get("event_guests"),
            "callers": len(guests),
            "messages": data.counts.get("messages"),
            "deliveries": data.counts.get("message_deliveries"),
        },
        load_s=round(load_s, 2),
        kinds=summarize(load.stats, load_s),
        start=start,
        end=end,
        samples=samples,
        server_statuses=server_statuses(before.rpc_statuses(), after.rpc_statuses()),
        client={
            "peak_held_streams": load.peak_held,
            "max_held": load.max_held,
            "cancelled_at_once_at_cap": load.unheld,
        },
    )
    if not before.values:
        report.notes.append("the Prometheus endpoint did not answer: no pool or server figures")
    if start.tasks is None:
        report.notes.append(
            "asyncio tasks: n/a, the server exports no task gauge (guestfeed.process.tasks)"
        )
    report.log = await asyncio.to_thread(_log_summary, log_file)
    report.verdict = judge(report, options.pool_max)
    errors = report.log["lines_by_level"].get("error", 0)
    report.verdict.append(
        Check("server error log lines", errors == 0, f"{errors} ({report.log['first_errors']})")
    )
    report.verdict.append(
        Check("graceful stop", exit_code == 0, f"guestfeed serve exited with {exit_code}")
    )
    if report.passed:
        log_file.unlink(missing_ok=True)
    else:
        report.log["kept"] = str(log_file)
        report.notes.append(f"the server's log is kept at {log_file}")
    return report


async def _sample_every(watcher: Watcher, interval_s: float, into: list[Sample]) -> None:
    # Sleeping to the next multiple keeps the intervals even however long a sample takes.
    started = time.perf_counter()
    k = 1
    while True:
        await asyncio.sleep(max(0.0, started + k * interval_s - time.perf_counter()))
        into.append(await watcher.sample())
        k += 1


def _log_summary(path: Path) -> dict[str, Any]:
    """The server log's lines by level and its first few error messages."""
    levels: dict[str, int] = {}
    first: list[str] = []
    size = path.stat().st_size if path.exists() else 0
    with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
        for raw in f:
            try:
                line = json.loads(raw)
            except ValueError:
                levels["(not json)"] = levels.get("(not json)", 0) + 1
                continue
            level = str(line.get("level", "?"))
            levels[level] = levels.get(level, 0) + 1
            if level in ("error", "critical") and len(first) < 3:
                first.append(str(line.get("msg", ""))[:200])
    return {"bytes": size, "lines_by_level": levels, "first_errors": first}


def _options_json(o: SoakOptions, seed: int) -> dict[str, Any]:
    data = asdict(o)
    data["seed"] = seed
    data["sample_every_s"] = o.sample_interval_s
    data["events"] = [e.key for e in o.events]
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Progress:
    """Progress on stderr, so stdout holds only the tables."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed:6.1f}s] soak: {msg}", file=sys.stderr, flush=True)
