"""`python -m bench streams`: what streams make the database do, and what unary calls feel.

On a scratch database holding one event whose guests see thousands of
messages, every run starts a `guestfeed serve` child of its own and measures
one window (docs/performance.md, "Streams: bounded database work"):

* idle: N streams with page_size 1, each read for its first response only,
  then left alone; the database's transactions, the server's and
  PostgreSQL's CPU, and a separate client's ListMessages p50/p99;
* active: N streams read as fast as they come (reopened when they end)
  beside the same unary probe, with the server's default bulk share of the
  pool and with none (the share equal to the pool), and with no streams as
  the baseline.

With `--before-src DIR` (a tree extracted with `git archive`) the same runs
also start that code's server, on this process's Python and packages, so
before and after are compared on one dataset and one machine. Runs repeat,
interleaved so that drift spreads over every scenario; `streams_report.py`
takes the medians.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from guestfeed_server.auth import mint
from guestfeed_server.settings import LimitSettings
from guestfeed_server.testing import spawn_server

from . import dataset
from .common import in_scratch_database
from .report import percentile
from .streams_clients import (
    Caller,
    Gauges,
    Probe,
    ProbeResult,
    Streams,
    gauges,
    pg_cpu_between,
    settled_xacts,
    streams_logged,
)
from .streams_report import Run, Scenario, StreamsReport

SECRET = "bench-secret-" + "t" * 40
# Raised so one benchmark client may hold every stream (the defaults, 8 per
# caller and 4 per caller and event, would refuse most of 100).
STREAM_LIMIT = "1000"

CALLERS_SQL = """
SELECT g.user_id, count(DISTINCT d.message_id)::int AS visible
  FROM public.event_guests g
  JOIN public.message_deliveries d ON d.user_id = g.user_id
  JOIN public.messages m ON m.id = d.message_id AND m.event_id = g.event_id
 WHERE g.event_id = $1 AND g.user_id IS NOT NULL AND g.removed_at IS NULL
 GROUP BY g.user_id
 ORDER BY visible DESC, g.user_id
 LIMIT $2
"""


@dataclass(frozen=True)
class StreamsOptions:
    """What to run; the defaults are the documented run's."""

    seconds: float = 20.0
    idle_streams: tuple[int, ...] = (10, 100)
    active_streams: int = 100
    repeats: int = 3
    before_src: Path | None = None
    parts: tuple[str, ...] = ("idle", "active")
    pool_max: int = 10
    # The event: mostly announcements, so its earliest guests see most of it
    # (delivery-backed v1, the rollout's default model).
    messages: int = 8_000
    guests: int = 40
    callers: int = 10
    probe_interval_s: float = 0.025
    probe_page_size: int = 50
    probe_warmup: int = 20
    idle_page_size: int = 1
    # How the idle streams' clients open their flow-control window: "bdp",
    # grpcio's default (the window grows with the measured bandwidth, so the
    # library takes in megabytes nobody reads), and "fixed" (64 KB, BDP
    # probing off: what the server may send an unread stream is bounded).
    idle_windows: tuple[str, ...] = ("bdp", "fixed")
    active_page_size: int = 50
    log: bool = True

    def event(self) -> dataset.EventSpec:
        """The benchmark's one event."""
        return dataset.EventSpec(
            "streams",
            300,
            guests=self.guests,
            messages=self.messages,
            scheduled=max(10, self.messages // 200),
            span_days=60,
            announce=0.9,
            channel=0.05,
            direct=0.03,
        )

    def scenarios(self) -> list[Scenario]:
        """Every scenario, in the order each repeat runs them."""
        codes = ["after"] + (["before"] if self.before_src is not None else [])
        out: list[Scenario] = []
        if "idle" in self.parts:
            size = self.idle_page_size
            out += [Scenario("idle", code, 0, size, None) for code in codes]
            for n in self.idle_streams:
                for window in self.idle_windows:
                    out += [Scenario("idle", code, n, size, None, window) for code in codes]
        if "active" in self.parts:
            n, size = self.active_streams, self.active_page_size
            out.append(Scenario("active", "after", 0, size, None))
            out.append(Scenario("active", "after", n, size, None))
            out.append(Scenario("active", "after", n, size, self.pool_max))
            if self.before_src is not None:
                out.append(Scenario("active", "before", n, size, None))
        return out


@dataclass
class _Context:
    options: StreamsOptions
    database: str
    dsn: str
    event_id: str
    callers: list[Caller]
    monitor: asyncpg.Connection
    say: _Progress
    log_dir: Path
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)


async def run(options: StreamsOptions, server_dsn: str | None) -> StreamsReport:
    """The benchmark on a scratch database (on a temporary embedded server without DSN)."""
    return await in_scratch_database(
        server_dsn, "guestfeed_bench_streams", lambda name, dsn: run_in(options, name, dsn)
    )


async def run_in(options: StreamsOptions, database: str, dsn: str) -> StreamsReport:
    """The benchmark in the empty database `database` at `dsn` (a superuser's; it is filled)."""
    say = _Progress(options.log)
    before_env = check_before_src(options.before_src) if options.before_src else None
    spec = options.event()
    conn = await asyncpg.connect(dsn)
    try:
        say(f"generating the dataset ({spec.messages} messages, {spec.guests} guests)")
        data = await dataset.generate(conn, "streams", specs=[spec])
        rows = await conn.fetch(CALLERS_SQL, spec.event_id, options.callers)
        pg_version = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
    if not rows:
        raise RuntimeError("the generated event has no guest who sees a message")
    ttl = 6 * 3600
    callers = [
        Caller(
            str(r["user_id"]),
            (("authorization", f"Bearer {mint(SECRET, r['user_id'], ttl_s=ttl)}"),),
            int(r["visible"]),
        )
        for r in rows
    ]
    report = StreamsReport(
        options=_options_json(options),
        machine={
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "postgres": pg_version,
            "python": sys.version.split()[0],
        },
        dataset={
            "messages": data.counts.get("messages"),
            "deliveries": data.counts.get("message_deliveries"),
            "callers": len(callers),
            "visible_min": min(c.visible for c in callers),
            "visible_max": max(c.visible for c in callers),
        },
    )
    scenarios = options.scenarios()
    monitor = await asyncpg.connect(dsn)
    try:
        with tempfile.TemporaryDirectory(prefix="guestfeed-bench-streams-") as logs:
            ctx = _Context(
                options, database, dsn, str(spec.event_id), callers, monitor, say, Path(logs)
            )
            if before_env is not None:
                ctx.extra_env["before"] = before_env
            for repeat in range(options.repeats):
                for scenario in scenarios:
                    say(f"repeat {repeat + 1}/{options.repeats}: {scenario.label()}")
                    result = await _one(ctx, scenario, repeat)
                    report.runs.append(result)
                    say(f"  {result.summary()}")
    finally:
        await monitor.close()
    report.machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def check_before_src(src: Path) -> dict[str, str]:
    """The environment that makes a server child import the code in `src`.

    Raises:
        SystemExit: `src` is not a guestfeed tree, or its code is not the one
            imported (PYTHONPATH must come before this venv's editable install).
    """
    service, generated = src / "service", src / "generated"
    if not (service / "guestfeed_server").is_dir() or not generated.is_dir():
        raise SystemExit(
            f"--before-src {src}: expected service/guestfeed_server and generated/ in it "
            "(git archive <commit> | tar -x -C DIR)"
        )
    env = {"PYTHONPATH": os.pathsep.join([str(service.resolve()), str(generated.resolve())])}
    found = subprocess.run(
        [sys.executable, "-c", "import guestfeed_server as g; print(g.__file__)"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not found.startswith(str(service.resolve())):
        raise SystemExit(f"--before-src {src}: the child imports {found or 'nothing'}")
    return env


def _server_env(ctx: _Context, scenario: Scenario) -> dict[str, str]:
    env = {
        "GUESTFEED_DATABASE_URL": ctx.dsn,
        "GUESTFEED_JWT_SECRET": SECRET,
        "GUESTFEED_LISTEN": "127.0.0.1:0",
        "GUESTFEED_DB_POOL_MAX": str(ctx.options.pool_max),
        "GUESTFEED_MAX_STREAMS_PER_CALLER": STREAM_LIMIT,
        "GUESTFEED_MAX_STREAMS_PER_CALLER_EVENT": STREAM_LIMIT,
        **ctx.extra_env.get(scenario.code, {}),
    }
    if scenario.bulk_share is not None:
        env["GUESTFEED_DB_BULK_SHARE"] = str(scenario.bulk_share)
    return env


async def _one(ctx: _Context, scenario: Scenario, repeat: int) -> Run:
    o = ctx.options
    log_file = ctx.log_dir / f"serve-{uuid.uuid4().hex[:8]}.log"
    server = await spawn_server(_server_env(ctx, scenario), log_file=log_file)
    streams: Streams | None = None
    probe: Probe | None = None
    try:
        probe = await Probe.start(
            server.target,
            ctx.event_id,
            ctx.callers[0],
            seconds=o.seconds,
            interval_s=o.probe_interval_s,
            page_size=o.probe_page_size,
            warmup=o.probe_warmup,
        )
        # Let the server settle after its start and the probe's warm-up.
        await asyncio.sleep(0.5)
        start = await gauges(ctx.monitor, ctx.database, server.proc.pid)
        await probe.go()
        streams = Streams(
            server.target,
            ctx.event_id,
            ctx.callers,
            scenario.streams,
            scenario.page_size,
            active=scenario.kind == "active",
            fixed_window=scenario.window == "fixed",
        )
        # The window starts before the streams open: what opening costs is theirs.
        await streams.start()
        probed = await probe.result()
        await asyncio.sleep(max(0.0, start.t + o.seconds - time.perf_counter()))
        end = await gauges(ctx.monitor, ctx.database, server.proc.pid)
        messages = streams.messages
    finally:
        if streams is not None:
            await streams.stop()
        if probe is not None:
            await probe.kill()
        exit_code = await server.stop()
    # The transactions are counted once the server's backends have exited (and
    # so reported everything). This adds the little done between the end of
    # the window and the stop; the start's reading may miss counts that
    # backends report late, which then land in the window: the no-stream
    # rows show how many such transactions a run carries.
    end.xacts = await settled_xacts(ctx.monitor, ctx.database)
    result = _run(scenario, repeat, start, end, probed, streams, messages, exit_code)
    logged = await asyncio.to_thread(streams_logged, log_file)
    result.sent, result.stream_statuses, result.server_errors = logged
    return result


def _run(
    scenario: Scenario,
    repeat: int,
    start: Gauges,
    end: Gauges,
    probed: ProbeResult,
    streams: Streams,
    messages: int,
    exit_code: int,
) -> Run:
    window = end.t - start.t
    lat = probed.latencies_ms
    return Run(
        scenario=scenario,
        repeat=repeat,
        window_s=window,
        xacts=end.xacts - start.xacts,
        probe_calls=len(lat) + sum(probed.errors.values()),
        server_cpu_s=end.server_cpu_s - start.server_cpu_s,
        pg_cpu_s=pg_cpu_between(start, end),
        client_cpu_s=end.client_cpu_s - start.client_cpu_s,
        p50_ms=percentile(lat, 50) if lat else None,
        p99_ms=percentile(lat, 99) if lat else None,
        probe_errors=dict(probed.errors),
        stream_messages=messages,
        stream_errors=dict(streams.errors),
        streams_completed=streams.completed,
        first_responses_s=streams.first_responses_s,
        server_exit=exit_code,
    )


def _options_json(o: StreamsOptions) -> dict[str, Any]:
    return {
        "seconds": o.seconds,
        "idle_streams": list(o.idle_streams),
        "active_streams": o.active_streams,
        "repeats": o.repeats,
        "before_src": str(o.before_src) if o.before_src else None,
        "parts": list(o.parts),
        "pool_max": o.pool_max,
        "default_bulk_share": LimitSettings().db_bulk_share(o.pool_max),
        "messages": o.messages,
        "guests": o.guests,
        "probe_interval_s": o.probe_interval_s,
        "probe_page_size": o.probe_page_size,
        "idle_page_size": o.idle_page_size,
        "idle_windows": list(o.idle_windows),
        "active_page_size": o.active_page_size,
    }


class _Progress:
    """Progress on stderr, so stdout holds only the tables."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed:6.1f}s] streams: {msg}", file=sys.stderr, flush=True)
