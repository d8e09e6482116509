"""The streams benchmark's unary probe, run as `python -m bench.streams_probe`.

A process of its own, so the latencies it records are the server's and not
those of an event loop busy reading 100 streams. Protocol, one line each: it
reads a JSON spec on stdin, warms up, prints `ready`, waits for `go` on
stdin, calls ListMessages every `interval_s` for `seconds`, and prints one
JSON line: {"latencies_ms": [...], "errors": {code: n}, "seconds": s}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc

CALL_TIMEOUT_S = 30.0


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    metadata = tuple((str(k), str(v)) for k, v in spec["metadata"])
    request = feed_pb2.ListMessagesRequest(event_id=spec["event_id"], page_size=spec["page_size"])
    interval = float(spec["interval_s"])
    async with grpc.aio.insecure_channel(spec["target"]) as channel:
        stub = feed_pb2_grpc.GuestFeedServiceStub(channel)
        for _ in range(int(spec["warmup"])):
            await stub.ListMessages(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        print("ready", flush=True)
        # Blocking is fine: nothing else runs in this process yet.
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("streams_probe: expected `go`")
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        started = time.perf_counter()
        next_at = started
        while time.perf_counter() - started < float(spec["seconds"]):
            t0 = time.perf_counter()
            try:
                await stub.ListMessages(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
                latencies.append((time.perf_counter() - t0) * 1000)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
            # Paced, not back to back: a slow call is followed by the next at
            # once, but a backlog is never fired in a burst.
            next_at = max(next_at + interval, time.perf_counter())
            await asyncio.sleep(next_at - time.perf_counter())
        seconds = time.perf_counter() - started
    return {"latencies_ms": latencies, "errors": dict(errors), "seconds": seconds}


def main() -> None:
    """Runs one probe as the spec on stdin says."""
    spec = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(_run(spec))), flush=True)


if __name__ == "__main__":
    main()
