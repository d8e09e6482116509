"""`python -m bench watch`: live updates at 1, 100 and 1,000 watchers (docs/watch.md).

On a scratch database (100 events; one with 1,000 guests, the others with 10),
every scenario starts a `guestfeed serve` child with its default watch
settings, opens N WatchMessages calls (each a different guest, V2 for all by
the rollout config), waits until every one is live, then lets a writer
commit announcements at a steady rate for a window and measures:

* latency from each commit to each watcher's receipt (the writer notes the
  time its COMMIT returned, the readers the time a message arrived; one
  machine, one monotonic clock), p50/p90/p99/max, and any receipt missing;
* the database statements the hub ran per second (its own counter,
  `guestfeed.watch.queries`, scraped from the server) and the database's
  transactions per second (`pg_stat_database`, the writer's taken out);
* the server's RSS per open watch (idle, before the window) and its CPU,
  PostgreSQL's and this process's (the readers) while the writer writes.

Statements and transactions are counted from before the writes to
`settle_s` after them (pg_stat_database hears of an idle backend's
transactions up to 10 s late), so the rate is the window's, settling included.

The writer runs on a thread with an event loop of its own, so its commit
times are not delayed by the readers' loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.auth import mint
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.testing import spawn_server

from .common import in_scratch_database, set_rollout
from .soak_watch import parse_prometheus
from .streams_clients import gauges, pg_cpu_between
from .watch_report import Scenario, WatchReport, WatchRun

SECRET = "bench-secret-" + "w" * 40
BIG_GUESTS = 1000
SMALL_GUESTS = 10
EVENTS = 100
HISTORY = 100  # announcements per event already there


@dataclass(frozen=True)
class WatchOptions:
    """What to run; the defaults are the documented run's."""

    scenarios: tuple[Scenario, ...] = (
        Scenario(1, 1),
        Scenario(100, 1),
        Scenario(1000, 1),
        Scenario(1000, 100),
    )
    seconds: float = 15.0
    rate: float = 2.0  # announcements committed per second, in all
    channels: int = 50  # gRPC connections the readers share
    # Before and after the window, so pg_stat_database has every transaction.
    settle_s: float = 11.0
    log: bool = True
    env: dict[str, str] = field(default_factory=dict)  # extra server settings


def uid(kind: str, i: int) -> uuid.UUID:
    """The dataset's fixed ids."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"guestfeed-bench-watch/{kind}/{i}")


def event_id(e: int) -> uuid.UUID:
    return uid("event", e)


def guest_user(e: int, g: int) -> uuid.UUID:
    return uid("user", g) if e == 0 else uid("user", BIG_GUESTS + e * SMALL_GUESTS + g)


async def run(options: WatchOptions, server_dsn: str | None) -> WatchReport:
    """The benchmark on a scratch database (on a temporary embedded server without DSN)."""
    return await in_scratch_database(
        server_dsn, "guestfeed_bench_watch", lambda name, dsn: run_in(options, name, dsn)
    )


async def run_in(options: WatchOptions, database: str, dsn: str) -> WatchReport:
    """The benchmark in the empty database `database` at `dsn` (a superuser's)."""
    say = _Progress(options.log)
    say("generating the dataset")
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await _dataset(conn)
        pg_version = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
    report = WatchReport(
        machine={
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "postgres": pg_version,
            "python": sys.version.split()[0],
        },
        options={"seconds": options.seconds, "rate": options.rate, "channels": options.channels},
    )
    monitor = await asyncpg.connect(dsn, server_settings={"application_name": "bench-monitor"})
    try:
        with tempfile.TemporaryDirectory(prefix="guestfeed-bench-watch-") as logs:
            for scenario in options.scenarios:
                say(f"{scenario.label()}")
                result = await _one(options, scenario, database, dsn, monitor, Path(logs))
                report.runs.append(result)
                say(f"  {result.summary()}")
    finally:
        await monitor.close()
    report.machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


async def _dataset(conn: asyncpg.Connection) -> None:
    users = [(uid("user", i), f"Guest {i}") for i in range(BIG_GUESTS + EVENTS * SMALL_GUESTS)]
    host = uid("user", -1)
    await conn.copy_records_to_table(
        "users", schema_name="public", records=[*users, (host, "Hal Host")],
        columns=["id", "full_name"],
    )  # fmt: skip
    await conn.copy_records_to_table(
        "events",
        schema_name="public",
        records=[(event_id(e), f"Event {e}", host) for e in range(EVENTS)],
        columns=["id", "title", "host_user_id"],
    )
    guests = [
        (uid("guest", e * 10_000 + g), event_id(e), guest_user(e, g), f"Guest {g}")
        for e in range(EVENTS)
        for g in range(BIG_GUESTS if e == 0 else SMALL_GUESTS)
    ]
    await conn.copy_records_to_table(
        "event_guests",
        schema_name="public",
        records=guests,
        columns=["id", "event_id", "user_id", "guest_name"],
    )
    await conn.execute(
        """INSERT INTO public.messages (event_id, sender_user_id, content, message_type, created_at)
           SELECT e.id, e.host_user_id, 'history ' || i, 'announcement',
                  now() - make_interval(days => 30) + i * interval '1 hour'
             FROM public.events e, generate_series(1, $1) AS i""",
        HISTORY,
    )
    await conn.execute("ANALYZE")
    # Everyone reads V2: announcements show without a delivery per guest.
    await set_rollout(conn, "the watch benchmark reads V2", v2_enabled=True, v2_percentage=100)


def _watchers(scenario: Scenario) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(event, user) for every watcher of a scenario."""
    per_event = scenario.watchers // scenario.events
    return [
        (event_id(e), guest_user(e, g)) for e in range(scenario.events) for g in range(per_event)
    ]


@dataclass
class _Readers:
    """The watchers, read in this process: receipts as (message id, monotonic time)."""

    receipts: list[tuple[str, float]] = field(default_factory=list)
    live: int = 0
    # Set once every watcher has had its first response (or failed).
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def open(self, target: str, watchers: list[tuple[uuid.UUID, uuid.UUID]], n: int) -> None:
        self.expected = len(watchers)
        self.channels = [grpc.aio.insecure_channel(target) for _ in range(n)]
        stubs = [feed_pb2_grpc.GuestFeedServiceStub(c) for c in self.channels]
        for i, (event, user) in enumerate(watchers):
            meta = (("authorization", f"Bearer {mint(SECRET, user, ttl_s=3600)}"),)
            self.tasks.append(asyncio.create_task(self._read(stubs[i % n], event, meta)))

    async def _read(
        self,
        stub: feed_pb2_grpc.GuestFeedServiceAsyncStub,
        event: uuid.UUID,
        meta: tuple[tuple[str, str], ...],
    ) -> None:
        first = True
        try:
            call = stub.WatchMessages(
                feed_pb2.WatchMessagesRequest(event_id=str(event)), metadata=meta
            )
            async for r in call:
                now = time.monotonic()
                if first:
                    self.live += 1
                    first = False
                    self._check()
                self.receipts.extend((m.message_id, now) for m in r.messages)
        except grpc.aio.AioRpcError as e:
            self.errors[e.code().name] = self.errors.get(e.code().name, 0) + 1
            self._check()
        except asyncio.CancelledError:
            pass

    def _check(self) -> None:
        if self.live + sum(self.errors.values()) >= self.expected:
            self.ready.set()

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.channels:
            await c.close(None)


def _write(dsn: str, events: list[uuid.UUID], rate: float, seconds: float) -> dict[str, float]:
    """Commits announcements round-robin over `events` at `rate`/s (on its own loop);
    returns message id -> the monotonic time its COMMIT returned."""

    async def go() -> dict[str, float]:
        conn = await asyncpg.connect(dsn, server_settings={"application_name": "bench-writer"})
        out: dict[str, float] = {}
        try:
            start = time.monotonic()
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                mid = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO public.messages (id, event_id, content, message_type) "
                    "VALUES ($1, $2, $3, 'announcement')",
                    mid,
                    events[i % len(events)],
                    f"live {i}",
                )
                out[str(mid)] = time.monotonic()
        finally:
            await conn.close()
        return out

    return asyncio.run(go())


async def _one(
    options: WatchOptions,
    scenario: Scenario,
    database: str,
    dsn: str,
    monitor: asyncpg.Connection,
    logs: Path,
) -> WatchRun:
    prometheus = _free_port()
    server = await spawn_server(
        {
            "GUESTFEED_DATABASE_URL": dsn,
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_LISTEN": "127.0.0.1:0",
            "GUESTFEED_PROMETHEUS_PORT": str(prometheus),
            **options.env,
        },
        log_file=logs / f"serve-{uuid.uuid4().hex[:8]}.log",
    )
    url = f"http://127.0.0.1:{prometheus}/metrics"
    readers = _Readers()
    pid = server.proc.pid
    try:
        await asyncio.sleep(1.0)
        rss0 = _rss_mb(pid)
        watchers = _watchers(scenario)
        opened = time.monotonic()
        await readers.open(server.target, watchers, min(options.channels, len(watchers)))
        async with asyncio.timeout(120):
            await readers.ready.wait()
        open_s = time.monotonic() - opened
        # An idle backend reports its transactions to pg_stat_database up to
        # 10 s late (PGSTAT_IDLE_INTERVAL): the watches' catch-ups must land
        # before the window opens, and the window's own before it closes.
        await asyncio.sleep(options.settle_s)
        rss1 = _rss_mb(pid)
        q0 = await _queries(url)
        g0 = await gauges(monitor, database, pid)
        client0 = time.process_time()
        events = sorted({e for e, _ in watchers})
        commits = await asyncio.to_thread(_write, dsn, events, options.rate, options.seconds)
        await asyncio.sleep(2.0)  # the last commits' receipts
        receipts = list(readers.receipts)
        # CPU over the writes; statements over writes and settling.
        gm = await gauges(monitor, database, pid)
        client1 = time.process_time()
        await asyncio.sleep(max(0.0, options.settle_s - 2.0))
        g1 = await gauges(monitor, database, pid)
        q1 = await _queries(url)
        window = g1.t - g0.t
        errors = dict(readers.errors)
    finally:
        await readers.close()
        exit_code = await server.stop()
    per_event = {e: sum(1 for w, _ in watchers if w == e) for e in events}
    expected = sum(per_event[events[i % len(events)]] for i in range(len(commits)))
    latencies = [(t - commits[m]) * 1000 for m, t in receipts if m in commits]
    hub = {k: q1.get(k, 0.0) - q0.get(k, 0.0) for k in set(q0) | set(q1)}
    return WatchRun(
        scenario=scenario,
        window_s=window,
        open_s=open_s,
        messages=len(commits),
        expected_receipts=expected,
        latencies_ms=latencies,
        hub_queries=hub,
        # Every transaction of the window but the writer's (one per message) and
        # the monitor's own (3 per reading, 2 readings inside the window).
        db_xacts=max(0, g1.xacts - g0.xacts - len(commits) - 6),
        load_s=gm.t - g0.t,
        server_cpu_s=gm.server_cpu_s - g0.server_cpu_s,
        pg_cpu_s=pg_cpu_between(g0, gm),
        client_cpu_s=client1 - client0,
        rss_idle_mb=rss0,
        rss_watching_mb=rss1,
        errors=errors,
        server_exit=exit_code,
    )


async def _queries(url: str) -> dict[str, float]:
    """The hub's statements so far by kind, from the server's Prometheus endpoint."""
    import urllib.request

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body: bytes = resp.read()
        return body.decode()

    scrape = parse_prometheus(await asyncio.to_thread(fetch))
    out: dict[str, float] = {}
    for (name, labels), value in scrape.values.items():
        if name.startswith("guestfeed_watch_queries"):
            out[dict(labels).get("guestfeed_query", "?")] = value
    return out


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


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
            print(f"[{elapsed:6.1f}s] watch: {msg}", file=sys.stderr, flush=True)
