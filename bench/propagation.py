"""`guestfeed bench propagation`: how fast a rollout change reaches another replica.

Two `guestfeed serve` processes share one scratch database. Each flip updates
the config through replica A and times how long until replica B answers
GetReadModel with the new revision. The periodic re-read is set to 30 s, so
what is measured is the LISTEN/NOTIFY path, not polling luck.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
import grpc

from guestfeed.v1 import feed_pb2, rollout_pb2, rollout_pb2_grpc
from guestfeed_server.auth import Role, mint
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.testing import ServerProcess, embedded_server, scratch_database, spawn_server

SECRET = "bench-secret-" + "b" * 40


@dataclass
class PropagationResult:
    """Seconds from A's acknowledged commit until B answers with the new revision."""

    flips: int
    median_ms: float
    p90_ms: float
    max_ms: float
    min_ms: float
    update_rpc_median_ms: float
    samples_ms: list[float]


async def start_replicas(
    dsn: str, secret: str, *, refresh_s: float = 30, extra_env: dict[str, str] | None = None
) -> tuple[ServerProcess, ServerProcess]:
    """Two `guestfeed serve` processes on one database. The periodic re-read
    is long enough that only a NOTIFY can explain a fast propagation."""
    env = {
        "GUESTFEED_DATABASE_URL": dsn,
        "GUESTFEED_JWT_SECRET": secret,
        "GUESTFEED_LISTEN": "127.0.0.1:0",
        "GUESTFEED_ROLLOUT_REFRESH_S": str(refresh_s),
        **(extra_env or {}),
    }
    a = await spawn_server(env)
    try:
        b = await spawn_server(env)
    except BaseException:
        await a.stop()
        raise
    return a, b


async def flip_and_wait(
    a: rollout_pb2_grpc.RolloutServiceAsyncStub,
    b: rollout_pb2_grpc.RolloutServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    enable: bool,
    *,
    timeout_s: float = 5.0,
) -> tuple[float, float]:
    """One flip through A; returns (update RPC seconds, seconds until B has it)."""
    current = (
        await a.GetRolloutConfig(rollout_pb2.GetRolloutConfigRequest(), metadata=metadata)
    ).config
    proposed = rollout_pb2.RolloutConfig(v2_enabled=enable, v2_percentage=100)
    probe = rollout_pb2.GetReadModelRequest(event_id=str(uuid.uuid4()), user_id=str(uuid.uuid4()))
    want = feed_pb2.READ_MODEL_V2 if enable else feed_pb2.READ_MODEL_V1
    started = time.perf_counter()
    updated = await a.UpdateRolloutConfig(
        rollout_pb2.UpdateRolloutConfigRequest(
            config=proposed, expected_revision=current.revision, reason="bench: propagation flip"
        ),
        metadata=metadata,
    )
    committed = time.perf_counter()
    deadline = committed + timeout_s
    while True:
        answer = await b.GetReadModel(probe, metadata=metadata)
        if answer.config_revision >= updated.config.revision:
            assert answer.read_model == want
            return committed - started, time.perf_counter() - committed
        if time.perf_counter() > deadline:
            raise TimeoutError(f"replica B did not see revision {updated.config.revision}")
        await asyncio.sleep(0.0005)


async def run(flips: int, server_dsn: str | None) -> PropagationResult:
    """Measures `flips` changes on a scratch database (embedded when no DSN)."""
    if server_dsn is None:
        with embedded_server() as dsn:
            return await _run_on(flips, dsn)
    return await _run_on(flips, server_dsn)


async def _run_on(flips: int, server_dsn: str) -> PropagationResult:
    async with scratch_database(server_dsn, "guestfeed_bench_prop") as (_, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        a, b = await start_replicas(dsn, SECRET)
        try:
            metadata = (
                ("authorization", f"Bearer {mint(SECRET, uuid.uuid4(), role=Role.SERVICE_ROLE)}"),
            )
            async with (
                grpc.aio.insecure_channel(a.target) as ca,
                grpc.aio.insecure_channel(b.target) as cb,
            ):
                sa, sb = (
                    rollout_pb2_grpc.RolloutServiceStub(ca),
                    rollout_pb2_grpc.RolloutServiceStub(cb),
                )
                await flip_and_wait(sa, sb, metadata, True)  # warm-up, not counted
                rpc, seen = [], []
                for i in range(flips):
                    r, s = await flip_and_wait(sa, sb, metadata, i % 2 == 1)
                    rpc.append(r * 1000)
                    seen.append(s * 1000)
        finally:
            await a.stop()
            await b.stop()
    ordered = sorted(seen)
    return PropagationResult(
        flips=flips,
        median_ms=statistics.median(seen),
        p90_ms=ordered[int(0.9 * (len(ordered) - 1))],
        max_ms=max(seen),
        min_ms=min(seen),
        update_rpc_median_ms=statistics.median(rpc),
        samples_ms=[round(x, 3) for x in seen],
    )


def report(result: PropagationResult, json_path: Path | None) -> str:
    """A table a person can read; also writes JSON when asked."""
    if json_path is not None:
        json_path.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return (
        f"rollout propagation, replica A -> replica B, {result.flips} flips "
        "(periodic re-read 30 s, so this is LISTEN/NOTIFY)\n"
        f"  {'median':>8} {'p90':>8} {'max':>8} {'min':>8}   update RPC median\n"
        f"  {result.median_ms:>6.2f}ms {result.p90_ms:>6.2f}ms {result.max_ms:>6.2f}ms "
        f"{result.min_ms:>6.2f}ms   {result.update_rpc_median_ms:.2f}ms"
    )
