"""Out of process: `guestfeed serve` with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf sends
its spans and metrics to an OTLP/HTTP receiver run here, and reads trace context with
the propagators OTEL_PROPAGATORS names."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.telemetry.metrics import DURATION_BUCKETS_S
from guestfeed_server.testing.procs import ServerProcess, spawn_server

from .conftest import SECRET, Client, scratch_database
from .factory import World

LIST = "guestfeed.v1.GuestFeedService/ListMessages"


@dataclass
class HttpReceiver:
    """What a minimal OTLP/HTTP collector was sent: the decoded requests, by path."""

    port: int = 0
    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    # (path, content type) of every POST, to see what the exporter spoke.
    posts: list[tuple[str, str]] = field(default_factory=list)

    def spans(self) -> list[trace_pb2.Span]:
        return [
            s
            for req in self.traces
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        ]

    def metric(self, name: str) -> list[metrics_pb2.Metric]:
        return [
            m
            for req in self.metrics
            for rm in req.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == name
        ]


def _handler(receiver: HttpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            receiver.posts.append((self.path, self.headers.get("Content-Type") or ""))
            reply: Any
            if self.path == "/v1/traces":
                receiver.traces.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                reply = trace_service_pb2.ExportTraceServiceResponse()
            elif self.path == "/v1/metrics":
                receiver.metrics.append(
                    metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                )
                reply = metrics_service_pb2.ExportMetricsServiceResponse()
            else:
                self.send_error(404)
                return
            data = reply.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per export on stderr would only bury test output

    return Handler


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    """An OTLP/HTTP receiver on 127.0.0.1:<port>, serving from a thread of its own."""
    receiver = HttpReceiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Served:
    proc: ServerProcess
    event: uuid.UUID
    user: uuid.UUID


@pytest.fixture
async def served(server_dsn: str, http_receiver: HttpReceiver) -> AsyncIterator[Served]:
    """`guestfeed serve` on a database of its own, exporting over OTLP/HTTP, reading B3."""
    async with scratch_database(server_dsn, "guestfeed_otlp_http") as (_, dsn):
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            world = World(pool)
            event = await world.event()
            user, guest = await world.member(event)
            for _ in range(2):
                mid = await world.message(event, "announcement")
                await world.deliver(mid, guest_id=guest, user_id=user)
        finally:
            await pool.close()
        proc = await spawn_server(
            {
                "GUESTFEED_DATABASE_URL": dsn,
                "GUESTFEED_JWT_SECRET": SECRET,
                "GUESTFEED_LISTEN": "127.0.0.1:0",
                "GUESTFEED_PROMETHEUS_PORT": "",
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_METRICS_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{http_receiver.port}",
                # The exporter speaks HTTP through requests, which honours proxies.
                "NO_PROXY": "127.0.0.1,localhost",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_METRIC_EXPORT_INTERVAL": "500",
                "OTEL_SERVICE_NAME": "guestfeed-http-test",
                "OTEL_TRACES_SAMPLER": "parentbased_always_on",
                # Read by the API when the child imports it: B3 instead of W3C.
                "OTEL_PROPAGATORS": "b3multi,baggage",
            }
        )
        try:
            yield Served(proc, event, user)
        finally:
            await proc.stop()


class TestOtlpHttpExport:
    async def test_spans_and_metrics_arrive_over_http_in_the_b3_callers_trace(
        self, served: Served, http_receiver: HttpReceiver
    ) -> None:
        """The RPC span (continuing the caller's B3 trace) and rpc.server.call.duration reach
        /v1/traces and /v1/metrics as protobuf."""
        trace_id, parent_id = uuid.uuid4().int, uuid.uuid4().int >> 64
        async with grpc.aio.insecure_channel(served.proc.target) as channel:
            resp = await feed_pb2_grpc.GuestFeedServiceStub(channel).ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(served.event)),
                metadata=[
                    *Client.auth(served.user),
                    ("x-b3-traceid", f"{trace_id:032x}"),
                    ("x-b3-spanid", f"{parent_id:016x}"),
                    ("x-b3-sampled", "1"),
                ],
            )
        assert len(resp.messages) == 2
        # SIGTERM: graceful shutdown flushes the span processor and the metric reader.
        assert await served.proc.stop() == 0, b"".join(served.proc.log).decode()
        deadline = time.monotonic() + 5
        while not (
            (got := [s for s in http_receiver.spans() if s.name == LIST])
            and http_receiver.metric("rpc.server.call.duration")
        ):
            assert time.monotonic() < deadline, f"nothing arrived: {http_receiver.posts}"
            await asyncio.sleep(0.05)

        assert {path for path, _ in http_receiver.posts} == {"/v1/traces", "/v1/metrics"}
        assert {kind for _, kind in http_receiver.posts} == {"application/x-protobuf"}
        (server,) = got
        assert server.trace_id == trace_id.to_bytes(16, "big")
        assert server.parent_span_id == parent_id.to_bytes(8, "big")
        assert server.kind == trace_pb2.Span.SPAN_KIND_SERVER
        resource = {
            a.key: a.value.string_value
            for req in http_receiver.traces
            for rs in req.resource_spans
            for a in rs.resource.attributes
        }
        assert resource["service.name"] == "guestfeed-http-test"

        # The last export (at shutdown) is cumulative: the one call, in seconds.
        metric = http_receiver.metric("rpc.server.call.duration")[-1]
        assert metric.unit == "s"
        (point,) = metric.histogram.data_points
        attrs = {a.key: a.value.string_value for a in point.attributes}
        assert attrs == {
            "rpc.system.name": "grpc",
            "rpc.method": LIST,
            "rpc.response.status_code": "OK",
        }
        assert point.count == 1 and 0 < point.sum < 10
        assert tuple(point.explicit_bounds) == DURATION_BUCKETS_S
