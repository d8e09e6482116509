"""The feed benchmark over gRPC, against a `guestfeed serve` child: ListMessages, streams, load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.auth import Role, mint
from guestfeed_server.domain.model import Viewer
from guestfeed_server.testing import ServerProcess

from . import dataset
from .common import (
    DEEP_PAGE,
    GRPC_V1,
    GRPC_V2,
    PAGE_SIZE,
    SECRET,
    STREAM_PAGE_SIZE,
    FeedOptions,
    _Progress,
    _sample,
)
from .report import FeedReport, Series, _add, percentile

_MODELS = {"v1": feed_pb2.READ_MODEL_V1, "v2": feed_pb2.READ_MODEL_V2}


# --- gRPC end to end ----------------------------------------------------------


def _metadata(viewer: Viewer) -> tuple[tuple[str, str], ...]:
    # A service caller acting for the guest: only service callers may name a
    # read model (a guest gets the rollout's, which is V1 on a fresh
    # database), and the benchmark measures each model by name.
    token = mint(SECRET, viewer.user_id, role=Role.SERVICE_ROLE, ttl_s=6 * 3600)
    return (("authorization", f"Bearer {token}"),)


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
