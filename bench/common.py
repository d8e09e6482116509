"""What the feed benchmark's modules share: constants, `FeedOptions`, progress and sampling."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from guestfeed_server.rollout import store as rollout_store
from guestfeed_server.testing import embedded_server, scratch_database

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


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.started:6.1f}s] {msg}", flush=True)


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


T = TypeVar("T")


async def in_scratch_database(
    server_dsn: str | None, prefix: str, work: Callable[[str, str], Awaitable[T]]
) -> T:
    """`work(name, dsn)` in a scratch database (dropped after) of `server_dsn`'s
    server, or of a temporary embedded server when there is no DSN."""
    if server_dsn is None:
        with embedded_server() as dsn:
            return await in_scratch_database(dsn, prefix, work)
    async with scratch_database(server_dsn, prefix) as (name, dsn):
        return await work(name, dsn)


async def set_rollout(conn: asyncpg.Connection, reason: str, **changes: object) -> None:
    """Stores `changes` to the rollout config (audited as "bench"). A new database
    starts with the stored kill switch on, which wins over a named model."""
    current = await rollout_store.load(conn)
    await rollout_store.update(
        conn,
        current.with_changes(**changes),
        expected_revision=current.revision,
        actor="bench",
        reason=reason,
    )
