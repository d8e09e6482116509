"""The streams benchmark's load and gauges: streams, the unary probe process, the window.

Streams run in this process, one gRPC channel (one HTTP/2 connection) each,
as separate phones would: flow control is then per stream, which is what
lets an unread stream stop the server. The unary probe runs in a process of
its own (`streams_probe.py`), so 100 stream readers in this event loop do
not delay the probe's responses and its latencies are the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc

from .measure_grpc import _cpu_seconds

XACTS_SQL = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1"
BACKENDS_SQL = "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
CLIENT_BACKENDS_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
    " AND backend_type = 'client backend'"
)
# A stream that fails is reopened after this pause, so an error does not spin.
RETRY_PAUSE_S = 0.05
FIRST_RESPONSE_TIMEOUT_S = 60.0
_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Caller:
    """A guest of the benchmark's event, with a token and how many messages they see."""

    user_id: str
    metadata: tuple[tuple[str, str], ...]
    visible: int


@dataclass
class Gauges:
    """The database's and the server's counters at one moment."""

    t: float
    xacts: int
    server_cpu_s: float
    # CPU seconds so far of each PostgreSQL backend of the database, by pid.
    pg_cpu_s: dict[int, float]
    client_cpu_s: float


async def gauges(conn: asyncpg.Connection, database: str, server_pid: int) -> Gauges:
    """Reads the counters; `pg_stat_clear_snapshot` so the statistics are not a cached copy."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    xacts = int(await conn.fetchval(XACTS_SQL, database))
    pg: dict[int, float] = {}
    for row in await conn.fetch(BACKENDS_SQL, database):
        # Another user's PostgreSQL (--dsn) may hide its processes: then no figure.
        with contextlib.suppress(OSError):
            pg[int(row["pid"])] = _cpu_seconds(int(row["pid"]))
    return Gauges(time.perf_counter(), xacts, _cpu_seconds(server_pid), pg, time.process_time())


async def settled_xacts(conn: asyncpg.Connection, database: str, timeout_s: float = 10.0) -> int:
    """The database's transactions once the server's connections have all closed.

    A backend reports its counts to `pg_stat_database` at most once a second,
    and an idle one up to 10 s late, but always when it exits: read after
    the server has stopped, the count is complete.
    """
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        left = await conn.fetchval(CLIENT_BACKENDS_SQL, database)
        if not left:
            break
        await asyncio.sleep(0.05)
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(await conn.fetchval(XACTS_SQL, database))


def pg_cpu_between(a: Gauges, b: Gauges) -> float | None:
    """CPU of the database's backends between two readings (a backend new since `a` counts
    whole); None when no backend's /proc could be read."""
    if not b.pg_cpu_s:
        return None
    return sum(cpu - a.pg_cpu_s.get(pid, 0.0) for pid, cpu in b.pg_cpu_s.items())


@dataclass
class Streams:
    """`n` StreamMessages calls over `callers`: idle (the first response read, then
    nothing) or active (read as fast as they come, reopened when they end)."""

    target: str
    event_id: str
    callers: list[Caller]
    n: int
    page_size: int
    active: bool
    # HTTP/2's initial 64 KB stream window, never grown (BDP probing off).
    fixed_window: bool = False
    messages: int = 0
    responses: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_responses_s: float | None = None
    _channels: list[grpc.aio.Channel] = field(default_factory=list)
    _calls: list[Any] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def _request(self) -> feed_pb2.StreamMessagesRequest:
        return feed_pb2.StreamMessagesRequest(event_id=self.event_id, page_size=self.page_size)

    async def start(self) -> None:
        """Opens the streams; idle ones return once each has its first response."""
        started = time.perf_counter()
        options = [("grpc.http2.bdp_probe", 0)] if self.fixed_window else []
        self._channels = [
            grpc.aio.insecure_channel(self.target, options=options) for _ in range(self.n)
        ]
        stubs = [feed_pb2_grpc.GuestFeedServiceStub(c) for c in self._channels]
        if self.active:
            self._tasks = [
                asyncio.create_task(self._read(stub, self.callers[i % len(self.callers)]))
                for i, stub in enumerate(stubs)
            ]
            return
        firsts = [
            self._first(stub, self.callers[i % len(self.callers)]) for i, stub in enumerate(stubs)
        ]
        async with asyncio.timeout(FIRST_RESPONSE_TIMEOUT_S):
            await asyncio.gather(*firsts)
        self.first_responses_s = time.perf_counter() - started

    async def _first(self, stub: feed_pb2_grpc.GuestFeedServiceAsyncStub, who: Caller) -> None:
        call = stub.StreamMessages(self._request(), metadata=who.metadata)
        self._calls.append(call)
        try:
            response = await call.read()
        except grpc.aio.AioRpcError as exc:
            self.errors[exc.code().name] += 1
            return
        if not isinstance(response, feed_pb2.StreamMessagesResponse):  # grpc.aio.EOF
            self.errors["ended before a response"] += 1
            return
        self.responses += 1
        self.messages += len(response.messages)
        # From here on nothing is read: gRPC's buffers and flow control decide
        # how much more the server sends, and whether it keeps reading.

    async def _read(self, stub: feed_pb2_grpc.GuestFeedServiceAsyncStub, who: Caller) -> None:
        while True:
            call = stub.StreamMessages(self._request(), metadata=who.metadata)
            try:
                async for response in call:
                    self.responses += 1
                    self.messages += len(response.messages)
                self.completed += 1
            except grpc.aio.AioRpcError as exc:
                self.errors[exc.code().name] += 1
                await asyncio.sleep(RETRY_PAUSE_S)

    async def stop(self) -> None:
        """Cancels every stream and closes the channels."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for call in self._calls:
            call.cancel()
        for channel in self._channels:
            await channel.close(None)


def streams_logged(log_file: Path) -> tuple[int, dict[str, int], list[str]]:
    """Messages the server sent on StreamMessages calls, the calls' statuses, and the
    messages of its error lines.

    From its one-line-per-RPC log, written when a call ends (the streams still
    open at the end of the window are cancelled then): the only view of what
    an unread stream was sent, since its client's gRPC library takes it in.
    """
    sent = 0
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    with contextlib.suppress(FileNotFoundError), log_file.open("rb") as f:
        for raw in f:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("level") in ("error", "critical"):
                errors.append(str(line.get("msg", ""))[:200])
            if line.get("msg") == "rpc" and str(line.get("rpc_method", "")).endswith(
                "/StreamMessages"
            ):
                sent += int(line.get("messages") or 0)
                statuses[str(line.get("status"))] += 1
    return sent, dict(statuses), errors


@dataclass
class ProbeResult:
    """What the probe process measured: ListMessages latencies and failures."""

    latencies_ms: list[float]
    errors: dict[str, int]
    seconds: float


class Probe:
    """`python -m bench.streams_probe`: paced ListMessages calls from another process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(
        cls,
        target: str,
        event_id: str,
        caller: Caller,
        *,
        seconds: float,
        interval_s: float,
        page_size: int,
        warmup: int,
    ) -> Probe:
        """Starts the probe and returns once its channel is up and warmed (it then waits)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.streams_probe",
            cwd=_ROOT,  # where `bench` is importable from
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        probe = cls(proc)
        spec = {
            "target": target,
            "event_id": event_id,
            "metadata": list(caller.metadata),
            "seconds": seconds,
            "interval_s": interval_s,
            "page_size": page_size,
            "warmup": warmup,
        }
        try:
            await probe._send(json.dumps(spec))
            ready = await probe._line()
            if ready != "ready":
                raise RuntimeError(f"the probe did not start: {ready!r}")
        except BaseException:
            await probe.kill()
            raise
        return probe

    async def go(self) -> None:
        """Starts the timed calls."""
        await self._send("go")

    async def result(self) -> ProbeResult:
        """Waits for the probe to finish its window."""
        data = json.loads(await self._line())
        await self.proc.wait()
        return ProbeResult(data["latencies_ms"], data["errors"], data["seconds"])

    async def kill(self) -> None:
        """Ends the probe if it still runs."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def _line(self) -> str:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"the probe exited ({await self.proc.wait()}) without a result")
        return raw.decode().strip()
