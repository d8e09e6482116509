"""Out of process: `guestfeed serve` exports its spans over OTLP/gRPC to a receiver run here."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.testing.procs import ServerProcess, spawn_server

from .conftest import SECRET, Client, scratch_database
from .factory import World

LIST = "guestfeed.v1.GuestFeedService/ListMessages"


@dataclass
class Received:
    """One exported span with its resource's attributes."""

    span: trace_pb2.Span
    resource: dict[str, Any]


@dataclass
class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace collector that keeps what it is sent."""

    requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)

    async def Export(  # noqa: N802 (OTLP method name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Received]:
        out: list[Received] = []
        for req in self.requests:
            for rs in req.resource_spans:
                resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                out += [Received(s, resource) for ss in rs.scope_spans for s in ss.spans]
        return out


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    """The receiver on 127.0.0.1:<port>, as (receiver, port)."""
    server = grpc.aio.server()
    servicer = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(0)


@dataclass
class Served:
    proc: ServerProcess
    event: uuid.UUID
    user: uuid.UUID


@pytest.fixture
async def served(server_dsn: str, receiver: tuple[Receiver, int]) -> AsyncIterator[Served]:
    """`guestfeed serve` on a database of its own, exporting traces to the receiver."""
    async with scratch_database(server_dsn, "guestfeed_otlp") as (_, dsn):
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            world = World(pool)
            event = await world.event()
            user, guest = await world.member(event)
            for _ in range(3):
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
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[1]}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_SERVICE_NAME": "guestfeed-test",
                "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            }
        )
        try:
            yield Served(proc, event, user)
        finally:
            await proc.stop()


class TestOtlpExport:
    async def test_spans_arrive_in_the_callers_trace(
        self, served: Served, receiver: tuple[Receiver, int]
    ) -> None:
        """The RPC span and its asyncpg children reach the collector in the caller's trace."""
        trace_id, parent_id = uuid.uuid4().int, uuid.uuid4().int >> 64
        async with grpc.aio.insecure_channel(served.proc.target) as channel:
            resp = await feed_pb2_grpc.GuestFeedServiceStub(channel).ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(served.event)),
                metadata=[
                    *Client.auth(served.user),
                    ("traceparent", f"00-{trace_id:032x}-{parent_id:016x}-01"),
                ],
            )
        assert len(resp.messages) == 3
        # SIGTERM: graceful shutdown flushes the batch processor.
        assert await served.proc.stop() == 0, b"".join(served.proc.log).decode()
        got, rec = [], receiver[0]
        deadline = time.monotonic() + 5
        while not (got := [r for r in rec.spans() if r.span.name == LIST]):
            assert time.monotonic() < deadline, "no ListMessages span arrived"
            await asyncio.sleep(0.05)
        (server,) = got
        assert server.span.trace_id == trace_id.to_bytes(16, "big")
        assert server.span.parent_span_id == parent_id.to_bytes(8, "big")
        assert server.span.kind == trace_pb2.Span.SPAN_KIND_SERVER
        assert server.resource["service.name"] == "guestfeed-test"
        attrs = {a.key: a.value for a in server.span.attributes}
        assert attrs["rpc.method"].string_value == "ListMessages"
        assert attrs["rpc.grpc.status_code"].int_value == 0
        assert attrs["guestfeed.messages.count"].int_value == 3
        children = [
            r.span
            for r in rec.spans()
            if r.span.trace_id == server.span.trace_id
            and r.span.parent_span_id == server.span.span_id
        ]
        assert len(children) == 1  # one statement per page, no reset query
        for child in children:
            assert child.kind == trace_pb2.Span.SPAN_KIND_CLIENT
            keys = {a.key for a in child.attributes}
            assert keys & {"db.statement", "db.query.text"}
            assert "db.statement.parameters" not in keys
        # Background work (health probes, SMS job, rollout listener) exports no traces.
        assert {r.span.trace_id for r in rec.spans()} == {server.span.trace_id}
