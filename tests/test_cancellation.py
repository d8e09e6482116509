"""Streams cancelled at any point end CANCELLED, log no error, and leave the server well."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from typing import Any

import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.testing.procs import spawn_server

from .conftest import SECRET, Client
from .factory import World

STREAM = "guestfeed.v1.GuestFeedService/StreamMessages"


async def _cancel_at_random(
    stub: feed_pb2_grpc.GuestFeedServiceStub,
    event: uuid.UUID,
    user: uuid.UUID,
    rng: random.Random,
) -> None:
    """Opens a stream and cancels it before its first response or after a few."""
    call = stub.StreamMessages(
        feed_pb2.StreamMessagesRequest(event_id=str(event), page_size=rng.choice([1, 2, 5])),
        metadata=Client.auth(user),
    )
    point = rng.randrange(-1, 8)  # -1: before any response (after a short wait)
    if point < 0:
        await asyncio.sleep(rng.random() * 0.005)
    else:
        for _ in range(point):
            if await call.read() == grpc.aio.EOF:
                break
    call.cancel()


class TestCancelledStreams:
    async def test_a_thousand_random_cancellations_log_no_error(
        self, admin_dsn: str, world: World
    ) -> None:
        """1,000 streams cancelled at random points: zero ERROR lines or tracebacks, the
        RPC lines of the cancelled streams say CANCELLED, and the server still answers."""
        event = await world.event()
        user, guest = await world.member(event)
        for _ in range(40):
            mid = await world.message(event, "announcement")
            await world.deliver(mid, guest_id=guest, user_id=user)
        env = {
            "GUESTFEED_DATABASE_URL": admin_dsn,
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_LISTEN": "127.0.0.1:0",
            "GUESTFEED_LOG_FORMAT": "json",
            "GUESTFEED_PROMETHEUS_PORT": "",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            # 40 at once from one guest: this test is about cancelling, not limits.
            "GUESTFEED_MAX_STREAMS_PER_CALLER": "64",
            "GUESTFEED_MAX_STREAMS_PER_CALLER_EVENT": "64",
        }
        proc = await spawn_server(env)
        rng = random.Random(20261201)
        try:
            async with grpc.aio.insecure_channel(proc.target) as channel:
                stub = feed_pb2_grpc.GuestFeedServiceStub(channel)
                gate = asyncio.Semaphore(40)

                async def one() -> None:
                    async with gate:
                        await _cancel_at_random(stub, event, user, rng)

                await asyncio.gather(*(one() for _ in range(1000)))
                resp = await stub.ListMessages(
                    feed_pb2.ListMessagesRequest(event_id=str(event), page_size=100),
                    metadata=Client.auth(user),
                )
                assert len(resp.messages) == 40
                await _until_quiet(proc.log)
        finally:
            code = await proc.stop()
        assert code == 0
        text = b"".join(proc.log).decode()
        records: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines() if line]
        errors = [r for r in records if r["level"] in ("error", "critical")]
        assert errors == [], errors[:3]
        assert "Traceback" not in text
        streams = Counter(r["status"] for r in records if r.get("rpc_method") == STREAM)
        # A stream cancelled before its call reached the server leaves no line; one
        # whose last page went out before the cancel arrived ends OK; the rest CANCELLED.
        assert set(streams) <= {"CANCELLED", "OK"}, streams
        assert streams["CANCELLED"] >= 500, streams


async def _until_quiet(log: list[bytes]) -> None:
    """Waits until the server has logged nothing new for half a second."""
    seen = -1
    while len(log) != seen:
        seen = len(log)
        await asyncio.sleep(0.5)
