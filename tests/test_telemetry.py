"""OpenTelemetry in process: one SERVER span per RPC, feed attributes, asyncpg children, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
import urllib.request
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
from opentelemetry.trace import SpanKind, StatusCode

from guestfeed.v1 import feed_pb2, feed_pb2_grpc, rollout_pb2
from guestfeed_server.auth import Role, mint
from guestfeed_server.rollout import Decision, RolloutPolicy
from guestfeed_server.settings import ConfigError
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.telemetry import Telemetry

from . import conftest
from .conftest import SECRET, Client, scratch_database
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


# --- span and metric helpers ----------------------------------------------------------------


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


# --- data -----------------------------------------------------------------------------------


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


# --- tests ----------------------------------------------------------------------------------

Call = Callable[[Client, Feed], Awaitable[Any]]


async def _stream_all(c: Client, f: Feed) -> list[Any]:
    req = feed_pb2.StreamMessagesRequest(event_id=str(f.event), page_size=4)
    return [r async for r in c.feed.StreamMessages(req, metadata=Client.auth(f.user))]


CALLS: dict[str, tuple[str, Call]] = {
    "ListMessages": (
        FEED,
        lambda c, f: c.feed.ListMessages(list_req(f), metadata=Client.auth(f.user)),
    ),
    "StreamMessages": (FEED, _stream_all),
    "GetReadModel": (
        ROLLOUT,
        lambda c, f: c.rollout.GetReadModel(
            rollout_pb2.GetReadModelRequest(event_id=str(f.event), user_id=str(f.user)),
            metadata=Client.auth(f.user),
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


class TestServerSpans:
    @pytest.mark.parametrize("method", list(CALLS))
    async def test_every_rpc_has_one_server_span_with_rpc_attributes(
        self, traced: Traced, spans: InMemorySpanExporter, mixed: Feed, method: str
    ) -> None:
        """Each RPC yields exactly one SERVER span '<service>/<method>' with rpc.* attributes."""
        service, call = CALLS[method]
        await call(traced.client, mixed)
        span = (await eventually_spans(spans, 1))[0]
        assert one_server_span(spans) is span
        assert span.name == f"{service}/{method}"
        assert {k: v for k, v in (span.attributes or {}).items() if k.startswith("rpc.")} == {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "rpc.grpc.status_code": 0,
        }
        assert span.status.status_code is StatusCode.UNSET
        assert "error.type" not in (span.attributes or {})
        assert span.parent is None

    async def test_update_rollout_config_has_its_span(
        self, server_dsn: str, tracing: Tracing, spans: InMemorySpanExporter
    ) -> None:
        """UpdateRolloutConfig (on a database of its own) has one OK span, its queries below."""
        async with scratch_database(server_dsn, "guestfeed_tel") as (_, dsn):
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            async with traced_server(dsn, tracing) as t:
                got = await t.client.rollout.GetRolloutConfig(
                    rollout_pb2.GetRolloutConfigRequest(), metadata=admin()
                )
                spans.clear()
                await t.client.rollout.UpdateRolloutConfig(
                    rollout_pb2.UpdateRolloutConfigRequest(
                        config=rollout_pb2.RolloutConfig(v2_enabled=True, v2_percentage=5),
                        expected_revision=got.config.revision,
                        reason="telemetry test",
                    ),
                    metadata=admin(),
                )
                span = one_server_span(spans)
                assert span.name == f"{ROLLOUT}/UpdateRolloutConfig"
                assert (span.attributes or {})["rpc.grpc.status_code"] == 0
                children = [
                    s
                    for s in spans.get_finished_spans()
                    if s.parent is not None and s.parent.span_id == span.context.span_id
                ]
                assert children and all(s.kind is SpanKind.CLIENT for s in children)

    async def test_callers_traceparent_is_continued(
        self, traced: Traced, spans: InMemorySpanExporter, mixed: Feed
    ) -> None:
        """A W3C traceparent makes the server span part of the caller's trace, as its child."""
        trace_id, parent_id = uuid.uuid4().int, uuid.uuid4().int >> 64
        await traced.client.feed.ListMessages(
            list_req(mixed),
            metadata=[*Client.auth(mixed.user), traceparent(trace_id, parent_id)],
        )
        span = one_server_span(spans)
        assert span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.is_remote
        assert (span.parent.trace_id, span.parent.span_id) == (trace_id, parent_id)

    async def test_without_traceparent_each_rpc_starts_its_own_trace(
        self, traced: Traced, spans: InMemorySpanExporter, mixed: Feed
    ) -> None:
        """Two calls without trace context are two root spans in two traces."""
        for _ in range(2):
            await traced.client.feed.ListMessages(list_req(mixed), metadata=Client.auth(mixed.user))
        found = server_spans(spans)
        assert len(found) == 2 and all(s.parent is None for s in found)
        assert found[0].context.trace_id != found[1].context.trace_id


class TestErrorSpans:
    @pytest.mark.parametrize(
        ("case", "code"),
        [
            ("bad_event_id", grpc.StatusCode.INVALID_ARGUMENT),
            ("no_token", grpc.StatusCode.UNAUTHENTICATED),
            ("wrong_secret", grpc.StatusCode.UNAUTHENTICATED),
            ("garbage_token", grpc.StatusCode.UNAUTHENTICATED),
            ("expired_token", grpc.StatusCode.UNAUTHENTICATED),
            ("not_a_guest", grpc.StatusCode.PERMISSION_DENIED),
            ("admin_rpc_as_user", grpc.StatusCode.PERMISSION_DENIED),
            ("stream_not_a_guest", grpc.StatusCode.PERMISSION_DENIED),
        ],
    )
    async def test_caller_errors_leave_status_unset_and_name_the_code(
        self,
        traced: Traced,
        spans: InMemorySpanExporter,
        mixed: Feed,
        case: str,
        code: grpc.StatusCode,
    ) -> None:
        """Caller errors: status UNSET, error.type = the code, and the token appears nowhere."""
        c, token = traced.client, mint(SECRET, mixed.user)
        tokens = {
            "wrong_secret": mint("another-secret-" + "y" * 40, mixed.user),
            "garbage_token": "not-a-jwt-" + uuid.uuid4().hex,
            "expired_token": mint(SECRET, mixed.user, ttl_s=-120),
            "not_a_guest": mint(SECRET, mixed.stranger),
            "stream_not_a_guest": mint(SECRET, mixed.stranger),
        }
        token = tokens.get(case, token)
        md = [] if case == "no_token" else [("authorization", f"Bearer {token}")]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if case == "bad_event_id":
                await c.feed.ListMessages(feed_pb2.ListMessagesRequest(event_id="x"), metadata=md)
            elif case == "admin_rpc_as_user":
                await c.rollout.GetRolloutConfig(rollout_pb2.GetRolloutConfigRequest(), metadata=md)
            elif case == "stream_not_a_guest":
                req = feed_pb2.StreamMessagesRequest(event_id=str(mixed.event))
                async for _ in c.feed.StreamMessages(req, metadata=md):
                    pass
            else:
                await c.feed.ListMessages(list_req(mixed), metadata=md)
        assert caught.value.code() == code
        span = (await eventually_spans(spans, 1))[0]
        assert one_server_span(spans) is span
        attrs = span.attributes or {}
        assert attrs["rpc.grpc.status_code"] == code.value[0]
        assert attrs["error.type"] == code.name
        assert span.status.status_code is StatusCode.UNSET
        assert feed_attrs(span) == {}
        assert list(span.events) == []  # no exception event quoting the abort's message
        assert leaks(spans.get_finished_spans(), token_parts(token)) == []

    async def test_server_fault_marks_the_span_error(
        self, admin_dsn: str, tracing: Tracing, spans: InMemorySpanExporter, mixed: Feed
    ) -> None:
        """A bug (INTERNAL) sets status ERROR with the code as description and error.type."""
        async with traced_server(admin_dsn, tracing, rollout=RaisingPolicy()) as t:
            me = Client.auth(mixed.user)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await t.client.rollout.GetReadModel(
                    rollout_pb2.GetReadModelRequest(
                        event_id=str(mixed.event), user_id=str(mixed.user)
                    ),
                    metadata=me,
                )
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await t.client.feed.ListMessages(list_req(mixed), metadata=me)
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            found = await eventually_spans(spans, 2)
        assert sorted(s.name for s in found) == [f"{FEED}/ListMessages", f"{ROLLOUT}/GetReadModel"]
        for span in found:
            assert span.status.status_code is StatusCode.ERROR
            assert span.status.description == "INTERNAL"
            assert (span.attributes or {})["error.type"] == "INTERNAL"
            assert (span.attributes or {})["rpc.grpc.status_code"] == 13
            assert list(span.events) == []
            assert leaks([span], ["policy bug", "RuntimeError"]) == []


class TestFeedSpans:
    @pytest.mark.parametrize(
        ("model", "reason"),
        [(feed_pb2.READ_MODEL_V1, "explicit"), (feed_pb2.READ_MODEL_V2, "explicit"), (0, None)],
    )
    async def test_list_span_carries_model_reason_event_and_counts(
        self,
        traced: Traced,
        spans: InMemorySpanExporter,
        mixed: Feed,
        model: int,
        reason: str | None,
    ) -> None:
        """A feed span has the read model, why, the event, the page size and the counts served."""
        c = traced.client
        if reason is None:  # UNSPECIFIED: whatever the live rollout says for this pair
            rm = await c.rollout.GetReadModel(
                rollout_pb2.GetReadModelRequest(event_id=str(mixed.event), user_id=str(mixed.user)),
                metadata=Client.auth(mixed.user),
            )
            reason = rollout_pb2.DecisionReason.Name(rm.reason).removeprefix("DECISION_REASON_")
            reason = reason.lower()
            spans.clear()
        resp = await c.feed.ListMessages(
            list_req(mixed, model, page_size=20), metadata=Client.auth(mixed.user)
        )
        counts = served([resp])
        assert len({t for _, t, _ in counts}) >= 2 and len({s for _, _, s in counts}) == 2
        span = one_server_span(spans)
        want: dict[str, Any] = {
            "guestfeed.read_model": MODEL_NAMES[resp.read_model],
            "guestfeed.rollout.reason": reason,
            "guestfeed.event_id": str(mixed.event),
            "guestfeed.page_size": 20,
            "guestfeed.pages": 1,
            "guestfeed.messages.count": len(resp.messages),
        }
        per_key: Counter[str] = Counter()
        for (_, mtype, source), n in counts.items():
            per_key[f"guestfeed.messages.type.{mtype}"] += n
            per_key[f"guestfeed.messages.source.{source}"] += n
        want.update(per_key)
        assert feed_attrs(span) == want
        assert [e.name for e in span.events] == ["guestfeed.page"]

    async def test_resumed_page_says_page_token(
        self, traced: Traced, spans: InMemorySpanExporter, mixed: Feed
    ) -> None:
        """A page read from a page token reports rollout reason 'page_token' and its own counts."""
        first = await traced.client.feed.ListMessages(
            list_req(mixed, feed_pb2.READ_MODEL_V2, page_size=3), metadata=Client.auth(mixed.user)
        )
        spans.clear()
        resp = await traced.client.feed.ListMessages(
            list_req(mixed, page_size=3, page_token=first.next_page_token),
            metadata=Client.auth(mixed.user),
        )
        attrs = feed_attrs(one_server_span(spans))
        assert attrs["guestfeed.rollout.reason"] == "page_token"
        assert attrs["guestfeed.read_model"] == "v2"
        assert attrs["guestfeed.messages.count"] == len(resp.messages) == 3

    async def test_database_calls_are_child_spans_without_parameters(
        self, traced: Traced, spans: InMemorySpanExporter, mixed: Feed
    ) -> None:
        """asyncpg spans sit under the RPC span with the statement and never its parameters."""
        trace_id = uuid.uuid4().int
        await traced.client.feed.ListMessages(
            list_req(mixed, feed_pb2.READ_MODEL_V1),
            metadata=[*Client.auth(mixed.user), traceparent(trace_id, 0xABC)],
        )
        server = one_server_span(spans)
        db = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
        # One statement per page: the guest check and the page together (and
        # no reset query when the connection goes back to the pool).
        assert len(db) == 1
        for s in db:
            attrs = s.attributes or {}
            assert s.context.trace_id == trace_id
            assert s.parent is not None and s.parent.span_id == server.context.span_id
            statement = attrs.get("db.statement") or attrs.get("db.query.text")
            assert isinstance(statement, str) and statement.strip()
            assert not any("parameters" in k for k in attrs), attrs
        assert any("event_guests" in str((s.attributes or {}).get("db.statement")) for s in db)
        ids = [str(mixed.event), str(mixed.user), mixed.event.hex, mixed.user.hex]
        assert leaks(db, ids) == []

    async def test_background_database_work_makes_no_spans(
        self, traced: Traced, spans: InMemorySpanExporter
    ) -> None:
        """Health probes (every 0.2 s here) and the rollout listener run untraced."""
        await asyncio.sleep(0.7)
        assert spans.get_finished_spans() == ()


class TestStreamSpans:
    async def test_one_span_for_the_stream_with_an_event_per_page(
        self, traced: Traced, spans: InMemorySpanExporter, mixed: Feed
    ) -> None:
        """StreamMessages is one span; each page is a 'guestfeed.page' event with its counts."""
        req = feed_pb2.StreamMessagesRequest(
            event_id=str(mixed.event), page_size=3, read_model=feed_pb2.READ_MODEL_V2
        )
        responses = [
            r
            async for r in traced.client.feed.StreamMessages(req, metadata=Client.auth(mixed.user))
        ]
        assert len(responses) >= 3
        span = (await eventually_spans(spans, 1))[0]
        assert one_server_span(spans) is span
        assert [e.name for e in span.events] == ["guestfeed.page"] * len(responses)
        for event, r in zip(span.events, responses, strict=True):
            attrs = dict(event.attributes or {})
            assert attrs.pop("guestfeed.page.messages") == len(r.messages)
            per_page = served([r])
            want = Counter[str]()
            for (_, mtype, source), n in per_page.items():
                want[f"guestfeed.page.type.{mtype}"] += n
                want[f"guestfeed.page.source.{source}"] += n
            assert attrs == dict(want)
        attrs = feed_attrs(span)
        assert attrs["guestfeed.pages"] == len(responses)
        assert attrs["guestfeed.messages.count"] == sum(len(r.messages) for r in responses)
        assert (span.attributes or {})["rpc.grpc.status_code"] == 0
        db = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
        assert db and all(
            s.parent is not None and s.parent.span_id == span.context.span_id for s in db
        )

    async def test_stream_cancelled_by_the_client_ends_its_span(
        self, traced: Traced, spans: InMemorySpanExporter, mixed: Feed
    ) -> None:
        """Cancelling after the first response still ends the span: CANCELLED (1), status UNSET."""
        req = feed_pb2.StreamMessagesRequest(event_id=str(mixed.event), page_size=1)
        call = traced.client.feed.StreamMessages(req, metadata=Client.auth(mixed.user))
        first = await call.read()
        assert len(first.messages) == 1
        call.cancel()
        found = await eventually_spans(spans, 1)
        assert len(found) == 1, "the cancelled stream's span never ended"
        span = found[0]
        attrs = span.attributes or {}
        assert attrs["rpc.grpc.status_code"] == CANCELLED.value[0]
        assert attrs["error.type"] == "CANCELLED"
        assert span.status.status_code is StatusCode.UNSET
        assert 1 <= attrs["guestfeed.pages"] < 10


async def _health_and_reflection(channel: grpc.aio.Channel) -> None:
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for r in responses for s in r.list_services_response.service]
    assert FEED in names


class TestHealthAndReflection:
    async def test_not_traced_by_default(self, traced: Traced, spans: InMemorySpanExporter) -> None:
        """Health Check and reflection make no spans unless asked for."""
        await _health_and_reflection(traced.client.channel)
        await asyncio.sleep(0.1)
        assert server_spans(spans) == []

    async def test_traced_with_trace_health(
        self, admin_dsn: str, tracing: Tracing, spans: InMemorySpanExporter
    ) -> None:
        """With trace_health=True, Health/Check and the reflection stream get SERVER spans."""
        async with traced_server(admin_dsn, tracing, trace_health=True) as t:
            await _health_and_reflection(t.client.channel)
            found = await eventually_spans(spans, 2)
        assert sorted(s.name for s in found) == [
            "grpc.health.v1.Health/Check",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        assert all((s.attributes or {})["rpc.grpc.status_code"] == 0 for s in found)


class TestMetrics:
    async def test_rpc_duration_by_method_and_status_and_feed_counters(
        self, traced: Traced, mixed: Feed
    ) -> None:
        """Durations count every call by method/status; served and decision counters add up."""
        c, me = traced.client, Client.auth(mixed.user)
        rm = await c.rollout.GetReadModel(
            rollout_pb2.GetReadModelRequest(event_id=str(mixed.event), user_id=str(mixed.user)),
            metadata=me,
        )
        decided = (MODEL_NAMES[rm.read_model], rollout_pb2.DecisionReason.Name(rm.reason))
        decided = (decided[0], decided[1].removeprefix("DECISION_REASON_").lower())
        responses: list[Any] = []
        first = await c.feed.ListMessages(
            list_req(mixed, feed_pb2.READ_MODEL_V2, page_size=3), metadata=me
        )
        responses.append(first)
        responses.append(
            await c.feed.ListMessages(
                list_req(mixed, page_size=3, page_token=first.next_page_token), metadata=me
            )
        )
        responses.append(await c.feed.ListMessages(list_req(mixed), metadata=me))
        responses += await _stream_all(c, mixed)
        for md in (me, []):
            with pytest.raises(grpc.aio.AioRpcError):
                await c.feed.ListMessages(feed_pb2.ListMessagesRequest(event_id="bad"), metadata=md)

        # An aborted call's status reaches the caller before the server records it.
        deadline = time.monotonic() + 5
        while sum(p.count for _, p in points(traced.reader, "rpc.server.duration")) < 7:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        durations = {
            (a["rpc.method"], a["rpc.grpc.status_code"]): p
            for a, p in points(traced.reader, "rpc.server.duration")
        }
        assert {k: p.count for k, p in durations.items()} == {
            ("GetReadModel", 0): 1,
            ("ListMessages", 0): 3,
            ("ListMessages", 3): 1,
            ("ListMessages", 16): 1,
            ("StreamMessages", 0): 1,
        }
        for a, p in points(traced.reader, "rpc.server.duration"):
            assert a["rpc.system"] == "grpc"
            assert a["rpc.service"] == (ROLLOUT if a["rpc.method"] == "GetReadModel" else FEED)
            assert p.sum > 0 and sum(p.bucket_counts) == p.count
        assert metric_units(traced.reader)["rpc.server.duration"] == "ms"

        got = {
            (a["guestfeed.read_model"], a["guestfeed.message_type"], a["guestfeed.source"]): p.value
            for a, p in points(traced.reader, "guestfeed.messages.served")
        }
        assert got == dict(served(responses))

        decisions = {
            (a["guestfeed.read_model"], a["guestfeed.rollout.reason"]): p.value
            for a, p in points(traced.reader, "guestfeed.rollout.decisions")
        }
        # GetReadModel, the UNSPECIFIED ListMessages and the stream (once, not per page).
        assert decisions == {decided: 3}

    async def test_pool_gauges_report_in_use_idle_and_waiting(
        self, admin_dsn: str, tracing: Tracing, mixed: Feed
    ) -> None:
        """Pool gauges follow the pool: connections lent out, idle ones, and requests queued."""
        # Health probes borrow through the same gate: slow them down, so only
        # this test's borrowers and its RPC are counted below.
        async with traced_server(
            admin_dsn, tracing, pool_max=2, GUESTFEED_HEALTH_INTERVAL_S="60"
        ) as t:
            pool = t.client.app.db.pool

            def pool_state() -> tuple[dict[str, int], int]:
                conns = {
                    a["state"]: p.value
                    for a, p in points(t.reader, "guestfeed.db.pool.connections")
                }
                (waiting,) = [p.value for _, p in points(t.reader, "guestfeed.db.pool.waiting")]
                return conns, waiting

            # Health and the SMS job borrow through the same fair gate: let the
            # start-up readings finish first.
            deadline = time.monotonic() + 5
            while (state := pool_state())[1] != 0 or state[0].get("in_use"):
                assert time.monotonic() < deadline, f"background borrowers never finished: {state}"
                await asyncio.sleep(0.02)
            conns, waiting = pool_state()
            assert set(conns) == {"in_use", "idle"} and waiting == 0
            assert conns["in_use"] == pool.get_size() - pool.get_idle_size()
            held = [await pool.acquire() for _ in range(2)]
            try:

                async def list_messages() -> feed_pb2.ListMessagesResponse:
                    return await t.client.feed.ListMessages(
                        list_req(mixed), metadata=Client.auth(mixed.user)
                    )

                rpc = asyncio.create_task(list_messages())
                deadline = time.monotonic() + 5
                while pool_state()[1] != 1:
                    assert time.monotonic() < deadline, "the RPC never queued for the pool"
                    await asyncio.sleep(0.02)
                conns, waiting = pool_state()
                assert waiting == 1
                assert conns == {"in_use": 2, "idle": 0}
            finally:
                for conn in held:
                    await pool.release(conn)
            await rpc
            # The RPC's connection goes back in a task of its own, a loop
            # turn or so after the response.
            deadline = time.monotonic() + 5
            while pool_state()[0]["in_use"] != 0:
                assert time.monotonic() < deadline, "the RPC's connection never came back"
                await asyncio.sleep(0.01)
            assert pool_state()[1] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alert_metric_names(text: str) -> tuple[set[str], set[str]]:
    """(metric names, recording rules used) in the `expr:` blocks of a rules file."""
    exprs, block = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("expr:"):
            block = [stripped.removeprefix("expr:").strip(" |")]
            exprs.append(block)
            indent = len(line) - len(line.lstrip())
        elif block is not None and stripped and len(line) - len(line.lstrip()) > indent:
            block.append(stripped)
        else:
            block = None
    promql = {"sum", "rate", "max", "min", "avg", "and", "or", "unless", "by", "without"}
    names: set[str] = set()
    rules: set[str] = set()
    for expr in exprs:
        body = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", " ".join(expr))
        for name in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", body):
            if name in promql:
                continue
            (rules if ":" in name else names).add(name)
    return names, rules


class TestPrometheus:
    async def test_scrape_endpoint_exposes_rpc_feed_and_sms_metrics(
        self, admin_dsn: str, mixed: Feed
    ) -> None:
        """GUESTFEED_PROMETHEUS_PORT serves /metrics with every metric the alert rules use."""
        port = _free_port()
        telemetry = Telemetry.from_env(
            {"GUESTFEED_PROMETHEUS_PORT": str(port), "OTEL_SERVICE_NAME": "guestfeed-prom-test"}
        )
        c = await conftest.start_client(
            admin_dsn, telemetry=telemetry, GUESTFEED_SMS_HEALTH_INTERVAL_S="0.2"
        )
        app = c.app
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                await feed_pb2_grpc.GuestFeedServiceStub(channel).ListMessages(
                    list_req(mixed), metadata=Client.auth(mixed.user)
                )

            def scrape() -> str:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return str(resp.read().decode())

            deadline = time.monotonic() + 5
            while "guestfeed_sms_deliveries" not in (text := await asyncio.to_thread(scrape)):
                assert time.monotonic() < deadline, "the SMS gauges never appeared"
                await asyncio.sleep(0.1)
        finally:
            await c.stop()
            telemetry.shutdown()
        exposed = set(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)", text, flags=re.MULTILINE))
        assert "rpc_server_duration_milliseconds_count" in exposed
        assert "guestfeed_messages_served_total" in exposed
        count_line = next(
            line
            for line in text.splitlines()
            if line.startswith("rpc_server_duration_milliseconds_count{")
            and 'rpc_method="ListMessages"' in line
        )
        assert 'rpc_grpc_status_code="0"' in count_line and count_line.endswith(" 1.0")
        alerts = ROOT / "docker" / "prometheus" / "alerts.yml"
        if not alerts.exists():
            pytest.skip("docker/prometheus/alerts.yml is not there yet")
        rules_text = alerts.read_text()
        names, used_rules = _alert_metric_names(rules_text)
        assert names, "no metric found in the alert expressions"
        assert names <= exposed, sorted(names - exposed)
        recorded = set(re.findall(r"^\s*-\s*record:\s*(\S+)", rules_text, flags=re.MULTILINE))
        assert used_rules <= recorded


class TestFromEnv:
    @pytest.mark.parametrize("var", ["OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER"])
    @pytest.mark.parametrize("value", ["bogus", "otlp,jaeger", "zipkin"])
    def test_unknown_exporter_is_config_error(self, var: str, value: str) -> None:
        """An exporter other than otlp, console or none fails, naming the variable."""
        with pytest.raises(ConfigError, match=var):
            Telemetry.from_env({var: value})

    @pytest.mark.parametrize("port", ["abc", "0", "65536", "-1", "9464.5"])
    def test_bad_prometheus_port_is_config_error(self, port: str) -> None:
        """GUESTFEED_PROMETHEUS_PORT must be a port number 1-65535."""
        with pytest.raises(ConfigError, match="GUESTFEED_PROMETHEUS_PORT"):
            Telemetry.from_env({"GUESTFEED_PROMETHEUS_PORT": port})

    def test_trace_health_is_off_by_default(self) -> None:
        """Without GUESTFEED_TRACE_HEALTH health and reflection stay untraced."""
        assert Telemetry.from_env({}).trace_health is False
        assert Telemetry.from_env({"GUESTFEED_TRACE_HEALTH": "true"}).trace_health is True
