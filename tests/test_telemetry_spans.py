"""One SERVER span per RPC: names, attributes, status, errors, feeds and streams, nothing leaked."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import asyncpg
import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_server.auth import mint
from guestfeed_server.storage.migrate import migrate

from .conftest import SECRET, Client, scratch_database
from .telemetry_helpers import (
    CALLS,
    CANCELLED,
    FEED,
    MODEL_NAMES,
    ROLLOUT,
    Feed,
    RaisingPolicy,
    Traced,
    _health_and_reflection,
    admin,
    eventually_spans,
    feed_attrs,
    leaks,
    list_req,
    one_server_span,
    served,
    server_spans,
    token_parts,
    traced_server,
    traceparent,
)
from .tracing import Tracing


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
            metadata=[*Client.pinning(mixed.user), traceparent(trace_id, parent_id)],
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
            await traced.client.feed.ListMessages(
                list_req(mixed), metadata=Client.pinning(mixed.user)
            )
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
            me = Client.pinning(mixed.user)
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
                metadata=Client.pinning(mixed.user),
            )
            reason = rollout_pb2.DecisionReason.Name(rm.reason).removeprefix("DECISION_REASON_")
            reason = reason.lower()
            spans.clear()
        resp = await c.feed.ListMessages(
            list_req(mixed, model, page_size=20), metadata=Client.pinning(mixed.user)
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
            "guestfeed.read_model.requested": MODEL_NAMES.get(model, "unspecified"),
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
            list_req(mixed, feed_pb2.READ_MODEL_V2, page_size=3),
            metadata=Client.pinning(mixed.user),
        )
        spans.clear()
        resp = await traced.client.feed.ListMessages(
            list_req(mixed, page_size=3, page_token=first.next_page_token),
            metadata=Client.pinning(mixed.user),
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
            metadata=[*Client.pinning(mixed.user), traceparent(trace_id, 0xABC)],
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
            async for r in traced.client.feed.StreamMessages(
                req, metadata=Client.pinning(mixed.user)
            )
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
        call = traced.client.feed.StreamMessages(req, metadata=Client.pinning(mixed.user))
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
