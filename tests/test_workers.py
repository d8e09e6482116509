"""GUESTFEED_WORKERS: N serving processes on one port under one parent, against real
`guestfeed serve` processes: calls land on every worker, a killed worker is started again
while the others keep serving, SIGTERM drains every worker and leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.app import running
from guestfeed_server.cli.workers import reserve_port
from guestfeed_server.rollout import store as rollout_store
from guestfeed_server.settings import ConfigError, StartupError
from guestfeed_server.settings.workers import WorkerSettings
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.telemetry import Telemetry
from guestfeed_server.testing.procs import ServerProcess, spawn_server

from .conftest import SECRET, Client, scratch_database, start_client
from .conftest import test_settings as settings_for
from .factory import World

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Each channel its own TCP connection: by default grpc shares one between channels to
# the same target, and the kernel spreads connections, not calls, over the workers.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
_SERVING_LINE = re.compile(r"guestfeed worker (\d+) \(pid (\d+)\) serving on")


class TestWorkersSetting:
    def test_default_is_one_process(self) -> None:
        """Unset or empty: 1, no parent; the process serves by itself."""
        for env in ({}, {"GUESTFEED_WORKERS": ""}, {"GUESTFEED_WORKERS": "1"}):
            workers = WorkerSettings.from_env(env)
            assert (workers.count, workers.supervise, workers.role) == (1, False, None)

    def test_a_number_and_auto(self) -> None:
        """A whole number is that many workers; `auto` is os.cpu_count()."""
        assert WorkerSettings.from_env({"GUESTFEED_WORKERS": "3"}).count == 3
        auto = WorkerSettings.from_env({"GUESTFEED_WORKERS": " Auto "})
        assert auto.count == os.cpu_count()
        assert WorkerSettings.from_env({"GUESTFEED_WORKERS": "2"}).supervise

    @pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5", "autox"])
    def test_bad_values_name_the_variable(self, raw: str) -> None:
        """Anything else is a ConfigError naming GUESTFEED_WORKERS."""
        with pytest.raises(ConfigError, match="GUESTFEED_WORKERS"):
            WorkerSettings.from_env({"GUESTFEED_WORKERS": raw})

    def test_serve_exits_2_naming_the_variable(self, tmp_path: Path) -> None:
        """`guestfeed serve` refuses a bad value at once, in one line, with exit code 2."""
        env = {**os.environ, "GUESTFEED_WORKERS": "many", "GUESTFEED_DATA_DIR": str(tmp_path)}
        done = subprocess.run(
            [sys.executable, "-m", "guestfeed_server.cli", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            "guestfeed: configuration error: GUESTFEED_WORKERS must be a whole number >= 1 or "
            "auto (one per CPU), got 'many'"
        ]


class TestPorts:
    async def test_a_single_server_no_longer_shares_a_taken_port(self, admin_dsn: str) -> None:
        """Without workers SO_REUSEPORT is off: a second server on a port a guestfeed server
        holds fails with GUESTFEED_LISTEN's error instead of silently sharing it."""
        first = await start_client(admin_dsn)
        try:
            taken = settings_for(
                GUESTFEED_DATABASE_URL=admin_dsn, GUESTFEED_LISTEN=f"127.0.0.1:{first.app.port}"
            )
            with pytest.raises(StartupError, match=r"^GUESTFEED_LISTEN: cannot listen"):
                async with running(taken, telemetry=Telemetry.disabled(), migrate_first=False):
                    raise AssertionError("must not start")  # pragma: no cover
        finally:
            await first.stop()

    def test_the_parent_refuses_a_port_someone_holds(self) -> None:
        """Even a holder with SO_REUSEPORT (which the workers' own bind would join)."""
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.bind(("127.0.0.1", 0))
            other.listen()
            port = other.getsockname()[1]
            with pytest.raises(StartupError, match=r"^GUESTFEED_LISTEN: cannot listen"):
                reserve_port(f"127.0.0.1:{port}")
        held, chosen = reserve_port("127.0.0.1:0")
        try:
            assert chosen > 0
            # Reserved: a plain bind fails, as it would for anyone but our workers.
            with socket.socket() as late, pytest.raises(OSError):
                late.bind(("127.0.0.1", chosen))
        finally:
            for s in held:
                s.close()


@dataclass
class Feed:
    dsn: str
    event: uuid.UUID
    user: uuid.UUID


@pytest.fixture
async def feed(server_dsn: str) -> AsyncIterator[Feed]:
    """A database of the test's own with a guest who sees a few messages; V2 may be
    named by service callers (the drain test holds V2 calls in flight)."""
    async with scratch_database(server_dsn, "guestfeed_workers") as (_, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            current = await rollout_store.load(conn)
            await rollout_store.update(
                conn,
                current.with_changes(v2_enabled=True),
                expected_revision=current.revision,
                actor="tests",
                reason="worker tests read V2 by name",
            )
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        try:
            world = World(pool)
            event = await world.event()
            user, guest = await world.member(event)
            for _ in range(5):
                mid = await world.message(event, "announcement")
                await world.deliver(mid, guest_id=guest, user_id=user)
        finally:
            await pool.close()
        yield Feed(dsn, event, user)


def free_ports(n: int) -> int:
    """A base port with `n` free ports from it (the parent's and each worker's /metrics)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base: int = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise AssertionError("no free ports")  # pragma: no cover


async def serve(dsn: str, **env: str) -> ServerProcess:
    return await spawn_server(
        {
            "GUESTFEED_DATABASE_URL": dsn,
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_LISTEN": "127.0.0.1:0",
            "GUESTFEED_LOG_FORMAT": "json",
            "GUESTFEED_PROMETHEUS_PORT": "",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "GUESTFEED_HEALTH_INTERVAL_S": "0.2",
            "GUESTFEED_WORKERS": "2",
            **env,
        }
    )


def lines(proc: ServerProcess) -> list[dict[str, Any]]:
    out = []
    for raw in b"".join(proc.log).decode().splitlines():
        if raw.startswith("{"):
            out.append(json.loads(raw))
    return out


def worker_pids(proc: ServerProcess) -> dict[int, list[int]]:
    """Each worker index's pids, in the order they started serving."""
    pids: dict[int, list[int]] = {}
    for line in lines(proc):
        m = _SERVING_LINE.match(line["msg"])
        if m:
            pids.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    return pids


def rpc_pids(proc: ServerProcess, method: str = "ListMessages") -> list[int]:
    return [
        int(line["pid"])
        for line in lines(proc)
        if line["msg"] == "rpc" and line.get("rpc_method", "").endswith(method)
    ]


async def one_call(target: str, user: uuid.UUID, event: uuid.UUID) -> grpc.StatusCode:
    """ListMessages on a connection of its own."""
    async with grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel:
        try:
            await feed_pb2_grpc.GuestFeedServiceStub(channel).ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(event), page_size=2),
                metadata=Client.auth(user),
                timeout=3,
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def until(check: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class TestTwoWorkers:
    async def test_a_worker_that_cannot_start_stops_the_parent_with_its_code(
        self, server_dsn: str
    ) -> None:
        """A database without migrations: each worker refuses to start (exit code 3, one
        line naming the fix), and the parent exits 3 too instead of restarting them."""
        async with scratch_database(server_dsn, "guestfeed_workers_bare") as (_, dsn):
            env = {
                **os.environ,
                "GUESTFEED_DATABASE_URL": dsn,
                "GUESTFEED_JWT_SECRET": SECRET,
                "GUESTFEED_LISTEN": "127.0.0.1:0",
                "GUESTFEED_WORKERS": "2",
                "GUESTFEED_PROMETHEUS_PORT": "",
            }
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "guestfeed_server.cli", "serve"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert done.returncode == 3, done.stderr
        assert "guestfeed: migration refused: the database lacks migrations" in done.stderr
        assert "restarting" not in done.stderr

    async def test_calls_land_on_both_workers_and_metrics_merge(self, feed: Feed) -> None:
        """24 calls over 24 connections are served by both workers (the rpc lines carry each
        worker's pid); the parent logs "serving on" once, with the real port; its /metrics
        has both workers' series, labelled worker."""
        metrics = free_ports(3)
        proc = await serve(feed.dsn, GUESTFEED_PROMETHEUS_PORT=str(metrics))
        try:
            codes = await asyncio.gather(
                *(one_call(proc.target, feed.user, feed.event) for _ in range(24))
            )
            assert set(codes) == {grpc.StatusCode.OK}
            pids = worker_pids(proc)
            assert sorted(pids) == [0, 1] and all(len(p) == 1 for p in pids.values())
            await until(lambda: len(rpc_pids(proc)) == 24, 5, "every call logged")
            assert set(rpc_pids(proc)) == {pids[0][0], pids[1][0]}
            serving = [x for x in lines(proc) if x["msg"].startswith("guestfeed serving on")]
            assert len(serving) == 1 and f"127.0.0.1:{proc.port} " in serving[0]["msg"]
            text = await asyncio.to_thread(scrape, metrics)
            assert 'guestfeed_worker_up{worker="0"} 1.0' in text
            assert 'guestfeed_worker_up{worker="1"} 1.0' in text
            for index in (0, 1):
                assert re.search(
                    rf'rpc_server_call_duration\w*_count{{[^}}]*worker="{index}"', text
                )
        finally:
            assert await proc.stop() == 0

    async def test_a_killed_worker_is_started_again_while_the_other_serves(
        self, feed: Feed
    ) -> None:
        """kill -9 of worker 0: new connections keep being served (by worker 1, at worst a
        transient UNAVAILABLE); the parent logs the death with its signal and starts worker
        0 again, whose new pid then serves calls; restarts are counted."""
        metrics = free_ports(3)
        proc = await serve(feed.dsn, GUESTFEED_PROMETHEUS_PORT=str(metrics))
        try:
            victim = worker_pids(proc)[0][0]
            os.kill(victim, signal.SIGKILL)
            codes = []
            deadline = time.monotonic() + 20
            while len(worker_pids(proc)[0]) < 2:
                assert time.monotonic() < deadline, "worker 0 was not started again"
                codes.append(await one_call(proc.target, feed.user, feed.event))
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
            assert codes.count(grpc.StatusCode.OK) >= len(codes) - 2, codes
            died = [x for x in lines(proc) if x["msg"].startswith(f"worker 0 (pid {victim})")]
            assert len(died) == 1 and died[0]["level"] == "error"
            assert "exited (killed by SIGKILL)" in died[0]["msg"]
            assert "restarting it in 0.5 s" in died[0]["msg"]
            reborn = worker_pids(proc)[0][1]
            assert reborn != victim
            later = await asyncio.gather(
                *(one_call(proc.target, feed.user, feed.event) for _ in range(24))
            )
            assert set(later) == {grpc.StatusCode.OK}
            await until(lambda: reborn in rpc_pids(proc), 5, "the new worker 0 served no call")
            text = await asyncio.to_thread(scrape, metrics)
            assert 'guestfeed_worker_restarts_total{worker="0"} 1.0' in text
            assert 'guestfeed_worker_restarts_total{worker="1"} 0.0' in text
        finally:
            assert await proc.stop() == 0

    async def test_sigterm_drains_every_worker_then_the_parent_exits_0(self, feed: Feed) -> None:
        """drain 1.5 s: after SIGTERM to the parent, health is NOT_SERVING on connections
        to both workers, V2 calls in flight on both finish OK, the parent exits 0 and no
        worker is left."""
        proc = await serve(
            feed.dsn,
            GUESTFEED_SHUTDOWN_DRAIN_S="1.5",
            GUESTFEED_SHUTDOWN_GRACE_S="5",
            GUESTFEED_QUERY_TIMEOUT_S="30",
        )
        pids = [p[0] for p in worker_pids(proc).values()]
        channels = [
            grpc.aio.insecure_channel(proc.target, options=OWN_CONNECTION) for _ in range(12)
        ]
        locker = await asyncpg.connect(feed.dsn)
        try:
            # V2 reads scheduled_messages: the lock holds every V2 call in flight.
            await locker.execute("BEGIN")
            await locker.execute("LOCK TABLE public.scheduled_messages IN ACCESS EXCLUSIVE MODE")
            in_flight = [
                asyncio.ensure_future(
                    feed_pb2_grpc.GuestFeedServiceStub(c).ListMessages(
                        feed_pb2.ListMessagesRequest(
                            event_id=str(feed.event), page_size=2, read_model=feed_pb2.READ_MODEL_V2
                        ),
                        metadata=Client.pinning(feed.user),
                        timeout=30,
                    )
                )
                for c in channels
            ]
            await asyncio.sleep(0.5)
            assert not any(f.done() for f in in_flight)
            proc.proc.send_signal(signal.SIGTERM)

            async def health(c: grpc.aio.Channel) -> int:
                resp = await health_pb2_grpc.HealthStub(c).Check(
                    health_pb2.HealthCheckRequest(service="guestfeed.ready"), timeout=2
                )
                return int(resp.status)

            deadline = time.monotonic() + 5
            while {await health(c) for c in channels} != {NOT_SERVING}:
                assert time.monotonic() < deadline, "health never said NOT_SERVING"
                await asyncio.sleep(0.05)
            await locker.execute("ROLLBACK")
            done = await asyncio.wait_for(asyncio.gather(*in_flight), 10)
            assert all(r.read_model == feed_pb2.READ_MODEL_V2 for r in done)
            assert await asyncio.wait_for(proc.proc.wait(), 15) == 0
        finally:
            await locker.close()
            for c in channels:
                await c.close(None)
            await proc.stop()
        # Both workers held calls: the V2 lines come from both pids.
        assert set(rpc_pids(proc)) == set(pids)
        assert all(gone(pid) for pid in pids)
        msgs = [x["msg"] for x in lines(proc)]
        assert "every worker has stopped" in msgs
        assert sum("draining: health NOT_SERVING" in m for m in msgs) == 2

    async def test_a_second_signal_or_a_lost_parent_ends_the_workers(self, feed: Feed) -> None:
        """drain 60 s: a second SIGTERM kills the parent and every worker at once. And a
        parent killed by SIGKILL leaves no worker behind: each sees its lifeline close."""
        proc = await serve(feed.dsn, GUESTFEED_SHUTDOWN_DRAIN_S="60")
        try:
            pids = [p[0] for p in worker_pids(proc).values()]
            proc.proc.send_signal(signal.SIGTERM)
            await until(
                lambda: sum("draining" in x["msg"] for x in lines(proc)) == 2, 5, "no drain"
            )
            started = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.proc.wait(), 5) == -signal.SIGTERM
            assert time.monotonic() - started < 3
            await until(lambda: all(gone(p) for p in pids), 5, "a worker outlived the parent")
        finally:
            await proc.stop()

        orphaned = await serve(feed.dsn)
        try:
            pids = [p[0] for p in worker_pids(orphaned).values()]
            orphaned.proc.kill()
            await until(lambda: all(gone(p) for p in pids), 15, "a worker outlived the parent")
        finally:
            await orphaned.stop()
