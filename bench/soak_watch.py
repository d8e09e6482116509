"""The soak's view of the server: its process, its database connections, PostgreSQL's work.

A `Sample` reads `/proc/<pid>` of the `guestfeed serve` child (RSS, threads,
open fds, CPU), PostgreSQL's `pg_stat_activity` (connections to the scratch
database, by application_name) and `pg_stat_database` (transactions so far),
and the server's Prometheus endpoint (pool gauges, and an asyncio task gauge
when the server has one: it has none yet, so `tasks` is None, shown "n/a").
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from .measure_grpc import _cpu_seconds

# The gauge the soak would read for the server's asyncio tasks; the server
# exports no such metric today (see docs/soak.md).
TASKS_METRIC = "guestfeed_process_tasks"
POOL_APP = "guestfeed"  # the request pool's application_name (storage/database.py)
WATCH_APP = "guestfeed-soak-watch"

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

CONNECTIONS_SQL = """
SELECT coalesce(nullif(application_name, ''), '(none)') AS app, count(*)::int AS n
  FROM pg_stat_activity
 WHERE datname = $1 AND pid <> pg_backend_pid()
 GROUP BY 1
"""
XACTS_SQL = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1"


@dataclass
class Sample:
    """The server and its database at one moment (`t_s`: seconds since the load started)."""

    t_s: float
    rss_mb: float
    threads: int
    fds: int
    tasks: int | None
    connections: dict[str, int]
    pool_in_use: float | None
    pool_idle: float | None
    pool_waiting: float | None
    xacts: int
    server_cpu_s: float
    client_cpu_s: float
    # Abandoned streams the clients hold open at the moment.
    held_streams: int = 0
    # Per interval since the previous sample (None for the first).
    xact_per_s: float | None = None
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None

    @property
    def pool_connections(self) -> int:
        """Connections of the request pool."""
        return self.connections.get(POOL_APP, 0)

    @property
    def other_connections(self) -> int:
        """Every other connection to the database (rollout listener, ...)."""
        return sum(n for app, n in self.connections.items() if app != POOL_APP)


@dataclass
class Scrape:
    """What one read of the Prometheus endpoint gave (empty when it failed)."""

    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float | None:
        """The value of a series whose labels include `labels`, or None."""
        want = set(labels.items())
        for (n, have), value in self.values.items():
            if n == name and want <= have:
                return value
        return None

    def rpc_statuses(self) -> Counter[tuple[str, str]]:
        """Finished RPCs so far by (method, numeric status code), from rpc.server.duration."""
        out: Counter[tuple[str, str]] = Counter()
        for (name, labels), value in self.values.items():
            if name.startswith("rpc_server_duration") and name.endswith("_count"):
                d = dict(labels)
                out[(d.get("rpc_method", "?"), d.get("rpc_grpc_status_code", "?"))] += int(value)
        return out


def parse_prometheus(text: str) -> Scrape:
    """The text exposition format, enough of it for gauges and histogram counts."""
    scrape = Scrape()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        try:
            scrape.values[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return scrape


class Watcher:
    """Samples one server process and its database; `close()` when done."""

    def __init__(
        self,
        pid: int,
        database: str,
        prometheus_url: str | None,
        held_streams: Callable[[], int] = lambda: 0,
    ) -> None:
        self.pid = pid
        self.held_streams = held_streams
        self.database = database
        self.prometheus_url = prometheus_url
        self._conn: asyncpg.Connection | None = None
        self._zero = time.perf_counter()
        self._last: Sample | None = None

    async def open(self, dsn: str) -> None:
        """Connects to the scratch database (this connection is left out of the counts)."""
        self._conn = await asyncpg.connect(dsn, server_settings={"application_name": WATCH_APP})

    async def close(self) -> None:
        """Closes the watcher's own connection."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def start_clock(self) -> None:
        """Sample times count from now (the load's start)."""
        self._zero = time.perf_counter()

    async def scrape(self) -> Scrape:
        """The server's metrics, or nothing when the endpoint is off or does not answer."""
        if self.prometheus_url is None:
            return Scrape()
        try:
            text = await asyncio.to_thread(_fetch, self.prometheus_url)
        except (OSError, urllib.error.URLError):
            return Scrape()
        return parse_prometheus(text)

    async def sample(self, scrape: Scrape | None = None) -> Sample:
        """One sample now; interval figures are against the previous one."""
        assert self._conn is not None, "Watcher.open() first"
        if scrape is None:
            scrape = await self.scrape()
        rows = await self._conn.fetch(CONNECTIONS_SQL, self.database)
        xacts = int(await self._conn.fetchval(XACTS_SQL, self.database) or 0)
        status = _proc_status(self.pid)
        tasks = scrape.get(TASKS_METRIC)
        s = Sample(
            t_s=round(time.perf_counter() - self._zero, 1),
            rss_mb=round(status.get("VmRSS", 0) / 1024, 1),
            threads=status.get("Threads", 0),
            fds=_open_fds(self.pid),
            tasks=None if tasks is None else int(tasks),
            connections={r["app"]: r["n"] for r in rows},
            pool_in_use=scrape.get("guestfeed_db_pool_connections", state="in_use"),
            pool_idle=scrape.get("guestfeed_db_pool_connections", state="idle"),
            pool_waiting=scrape.get("guestfeed_db_pool_waiting"),
            xacts=xacts,
            server_cpu_s=_cpu_seconds(self.pid),
            client_cpu_s=time.process_time(),
            held_streams=self.held_streams(),
        )
        last = self._last
        if last is not None and s.t_s > last.t_s:
            dt = s.t_s - last.t_s
            s.xact_per_s = round((s.xacts - last.xacts) / dt, 1)
            s.server_cpu_pct = round(100 * (s.server_cpu_s - last.server_cpu_s) / dt, 1)
            s.client_cpu_pct = round(100 * (s.client_cpu_s - last.client_cpu_s) / dt, 1)
        self._last = s
        return s


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads of a process, from /proc (Linux)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    return out


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
