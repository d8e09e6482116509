"""What the telemetry tests share: a traced server on in-memory providers, span and
metric readers, and a feed with every kind of message."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_server.auth import Role
from guestfeed_server.rollout import Decision, RolloutPolicy
from guestfeed_server.telemetry import Telemetry

from . import conftest
from .conftest import Client
from .factory import World
from .tracing import Tracing

ROOT = Path(__file__).resolve().parent.parent


FEED = "guestfeed.v1.GuestFeedService"


ROLLOUT = "guestfeed.v1.RolloutService"


OK, CANCELLED = grpc.StatusCode.OK, grpc.StatusCode.CANCELLED


TYPE_NAMES = {
    feed_pb2.MESSAGE_TYPE_DIRECT: "direct",
    feed_pb2.MESSAGE_TYPE_ANNOUNCEMENT: "announcement",
    feed_pb2.MESSAGE_TYPE_CHANNEL: "channel",
}


MODEL_NAMES = {feed_pb2.READ_MODEL_V1: "v1", feed_pb2.READ_MODEL_V2: "v2"}


@dataclass
class Traced:
    """A server with telemetry on the shared provider and a metric reader of its own."""

    client: Client
    telemetry: Telemetry
    reader: InMemoryMetricReader


@contextlib.asynccontextmanager
async def traced_server(
    dsn: str,
    tracing: Tracing,
    *,
    rollout: RolloutPolicy | None = None,
    trace_health: bool = False,
    pool_max: int = 8,
    **settings: str,
) -> AsyncIterator[Traced]:
    """Starts a server like conftest.start_client, with telemetry, and stops it after."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry.create(tracing.provider, meter_provider, trace_health=trace_health)
    client = await conftest.start_client(
        dsn,
        telemetry=telemetry,
        rollout=rollout,
        GUESTFEED_DB_POOL_MAX=str(pool_max),
        **settings,
    )
    try:
        yield Traced(client, telemetry, reader)
    finally:
        await client.stop()
        meter_provider.shutdown()


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def one_server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    found = server_spans(exporter)
    assert len(found) == 1, [s.name for s in found]
    return found[0]


async def eventually_spans(
    exporter: InMemorySpanExporter, count: int, within_s: float = 5.0
) -> list[ReadableSpan]:
    """Polls until `count` server spans have ended (streams end theirs asynchronously)."""
    deadline = time.monotonic() + within_s
    while True:
        found = server_spans(exporter)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)


def texts(span: ReadableSpan) -> list[str]:
    """Every string a span carries: name, attributes, events, status description."""
    out = [span.name, span.status.description or ""]
    for key, value in (span.attributes or {}).items():
        out += [key, str(value)]
    for event in span.events:
        out.append(event.name)
        for key, value in (event.attributes or {}).items():
            out += [key, str(value)]
    return out


def leaks(found: Iterable[ReadableSpan], needles: Iterable[str]) -> list[tuple[str, str]]:
    """(span name, needle) for every needle found anywhere in a span."""
    wanted = [n for n in needles if n]
    return [(s.name, n) for s in found for t in texts(s) for n in wanted if n in t]


def token_parts(token: str) -> list[str]:
    """A token and each of its dot-separated parts (header, claims, signature)."""
    return [token, *[p for p in token.split(".") if len(p) >= 8]]


def feed_attrs(span: ReadableSpan) -> dict[str, Any]:
    return {k: v for k, v in (span.attributes or {}).items() if k.startswith("guestfeed.")}


def points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    """(attributes, data point) of one metric, from a fresh collection."""
    data = reader.get_metrics_data()
    out: list[tuple[dict[str, Any], Any]] = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    out += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
    return out


def metric_units(reader: InMemoryMetricReader) -> dict[str, str]:
    data = reader.get_metrics_data()
    return {
        m.name: m.unit
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for m in sm.metrics
    }


def served(responses: Sequence[Any]) -> Counter[tuple[str, str, str]]:
    """(read model, type, source) -> messages, counted from the responses themselves."""
    out: Counter[tuple[str, str, str]] = Counter()
    for r in responses:
        for m in r.messages:
            source = "delivery" if m.is_delivery_backed else "message"
            out[(MODEL_NAMES[r.read_model], TYPE_NAMES[m.message_type], source)] += 1
    return out


def traceparent(trace_id: int, span_id: int) -> tuple[str, str]:
    return ("traceparent", f"00-{trace_id:032x}-{span_id:016x}-01")


@dataclass
class Feed:
    """A guest's event whose feed has every type and both sources in both models."""

    event: uuid.UUID
    user: uuid.UUID
    stranger: uuid.UUID


@pytest.fixture(scope="module")
async def mixed(admin_pool: asyncpg.Pool) -> Feed:
    """Read-only data: delivered and undelivered announcements, channels, directs, own messages."""
    world = World(admin_pool)
    event = await world.event()
    user, guest = await world.member(event, tags=["vip"])
    for _ in range(4):
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=guest, user_id=user)
    for _ in range(2):
        await world.message(event, "announcement")
    await world.channel(event, ["vip"])
    mid = await world.channel(event, ["other"])
    await world.deliver(mid, user_id=user)
    for _ in range(2):
        mid = await world.message(event, "direct")
        await world.deliver(mid, guest_id=guest, user_id=user, status="failed")
    await world.message(event, "direct", sender=user)
    return Feed(event, user, await world.user())


def list_req(f: Feed, model: int = 0, **fields: Any) -> feed_pb2.ListMessagesRequest:
    return feed_pb2.ListMessagesRequest(event_id=str(f.event), read_model=model, **fields)


def admin() -> list[tuple[str, str]]:
    return Client.auth(uuid.uuid4(), Role.SERVICE_ROLE)


class RaisingPolicy:
    """A rollout policy with a bug: every decision raises."""

    def decide(self, event_id: uuid.UUID, user_id: uuid.UUID) -> Decision:
        raise RuntimeError("policy bug")


Call = Callable[[Client, Feed], Awaitable[Any]]


async def _stream_all(c: Client, f: Feed) -> list[Any]:
    req = feed_pb2.StreamMessagesRequest(event_id=str(f.event), page_size=4)
    return [r async for r in c.feed.StreamMessages(req, metadata=Client.pinning(f.user))]


CALLS: dict[str, tuple[str, Call]] = {
    "ListMessages": (
        FEED,
        lambda c, f: c.feed.ListMessages(list_req(f), metadata=Client.pinning(f.user)),
    ),
    "StreamMessages": (FEED, _stream_all),
    "GetReadModel": (
        ROLLOUT,
        lambda c, f: c.rollout.GetReadModel(
            rollout_pb2.GetReadModelRequest(event_id=str(f.event), user_id=str(f.user)),
            metadata=Client.pinning(f.user),
        ),
    ),
    "GetRolloutConfig": (
        ROLLOUT,
        lambda c, f: c.rollout.GetRolloutConfig(
            rollout_pb2.GetRolloutConfigRequest(), metadata=admin()
        ),
    ),
    "ListRolloutChanges": (
        ROLLOUT,
        lambda c, f: c.rollout.ListRolloutChanges(
            rollout_pb2.ListRolloutChangesRequest(page_size=5), metadata=admin()
        ),
    ),
    "PreviewRolloutChange": (
        ROLLOUT,
        lambda c, f: c.rollout.PreviewRolloutChange(
            rollout_pb2.PreviewRolloutChangeRequest(
                config=rollout_pb2.RolloutConfig(v2_enabled=True, v2_percentage=50)
            ),
            metadata=admin(),
        ),
    ),
}


@pytest.fixture
async def traced(admin_dsn: str, tracing: Tracing) -> AsyncIterator[Traced]:
    """A fresh traced server on the shared database (its metrics start at zero)."""
    async with traced_server(admin_dsn, tracing) as t:
        yield t


async def _health_and_reflection(channel: grpc.aio.Channel) -> None:
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for r in responses for s in r.list_services_response.service]
    assert FEED in names
