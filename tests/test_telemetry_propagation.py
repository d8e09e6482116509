"""A caller's trace context and baggage, read by whichever propagators are configured.

In process: the global propagator is swapped with `propagate.set_global_textmap`
(what OTEL_PROPAGATORS sets up at import). The server process reading
OTEL_PROPAGATORS itself is in test_telemetry_otlp_http.py.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import baggage, propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import Span, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from guestfeed_server.telemetry.propagation import GETTER

from .cli_helpers import clean_env, run_cli
from .conftest import SECRET, Client
from .telemetry_helpers import Feed, Traced, list_req, one_server_span, traceparent
from .tracing import Tracing


class BaggageSeen(SpanProcessor):
    """Records the baggage current when each database span starts, i.e. what
    code running inside the RPC's handler can read."""

    def __init__(self) -> None:
        self.seen: list[dict[str, object]] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.kind is SpanKind.CLIENT:
            self.seen.append(dict(baggage.get_all()))


@functools.cache
def _baggage_seen(tracing: Tracing) -> BaggageSeen:
    # A provider keeps its processors: add one, once, to the shared provider.
    seen = BaggageSeen()
    tracing.provider.add_span_processor(seen)
    return seen


@pytest.fixture
def baggage_seen(tracing: Tracing) -> BaggageSeen:
    seen = _baggage_seen(tracing)
    seen.seen.clear()
    return seen


@pytest.fixture
def textmap(request: pytest.FixtureRequest) -> Iterator[None]:
    """Installs the propagators the test is parametrized with, as OTEL_PROPAGATORS would."""
    before = propagate.get_global_textmap()
    propagators: list[TextMapPropagator] = request.param
    propagate.set_global_textmap(CompositePropagator(propagators))
    try:
        yield
    finally:
        propagate.set_global_textmap(before)


def _ids() -> tuple[int, int]:
    return uuid.uuid4().int, uuid.uuid4().int >> 64


class TestDefaultPropagators:
    async def test_traceparent_and_baggage_reach_the_handler(
        self,
        traced: Traced,
        spans: InMemorySpanExporter,
        baggage_seen: BaggageSeen,
        mixed: Feed,
    ) -> None:
        """W3C trace context is continued, and the caller's baggage is current in the handler
        (the queries it makes see it)."""
        trace_id, parent_id = _ids()
        await traced.client.feed.ListMessages(
            list_req(mixed),
            metadata=[
                *Client.pinning(mixed.user),
                traceparent(trace_id, parent_id),
                ("baggage", "tenant=acme,flow=checkout%20v2"),
            ],
        )
        span = one_server_span(spans)
        assert span.parent is not None and span.parent.is_remote
        assert (span.parent.trace_id, span.parent.span_id) == (trace_id, parent_id)
        assert baggage_seen.seen, "the handler made no database span"
        assert all(b == {"tenant": "acme", "flow": "checkout v2"} for b in baggage_seen.seen)

    async def test_no_baggage_when_the_caller_sends_none(
        self,
        traced: Traced,
        spans: InMemorySpanExporter,
        baggage_seen: BaggageSeen,
        mixed: Feed,
    ) -> None:
        """One call's baggage does not stay behind for the next."""
        me = Client.pinning(mixed.user)
        await traced.client.feed.ListMessages(list_req(mixed), metadata=[*me, ("baggage", "a=1")])
        baggage_seen.seen.clear()
        await traced.client.feed.ListMessages(list_req(mixed), metadata=me)
        assert baggage_seen.seen and all(b == {} for b in baggage_seen.seen)


class TestB3:
    @pytest.mark.parametrize("textmap", [[B3SingleFormat()]], indirect=True)
    @pytest.mark.usefixtures("textmap")
    async def test_single_header_continues_the_trace(
        self, traced: Traced, spans: InMemorySpanExporter, mixed: Feed
    ) -> None:
        """With the b3 propagator, a `b3` header makes the server span the caller's child."""
        trace_id, parent_id = _ids()
        await traced.client.feed.ListMessages(
            list_req(mixed),
            metadata=[*Client.pinning(mixed.user), ("b3", f"{trace_id:032x}-{parent_id:016x}-1")],
        )
        span = one_server_span(spans)
        assert span.parent is not None and span.parent.is_remote
        assert (span.parent.trace_id, span.parent.span_id) == (trace_id, parent_id)

    @pytest.mark.parametrize("textmap", [[B3MultiFormat(), W3CBaggagePropagator()]], indirect=True)
    @pytest.mark.usefixtures("textmap")
    async def test_multi_headers_continue_the_trace_and_traceparent_is_ignored(
        self, traced: Traced, spans: InMemorySpanExporter, mixed: Feed
    ) -> None:
        """With b3multi, X-B3-* continue the trace; W3C traceparent is not read at all
        (no propagator is hard-wired)."""
        trace_id, parent_id = _ids()
        await traced.client.feed.ListMessages(
            list_req(mixed),
            metadata=[
                *Client.pinning(mixed.user),
                ("x-b3-traceid", f"{trace_id:032x}"),
                ("x-b3-spanid", f"{parent_id:016x}"),
                ("x-b3-sampled", "1"),
            ],
        )
        span = one_server_span(spans)
        assert span.parent is not None
        assert (span.parent.trace_id, span.parent.span_id) == (trace_id, parent_id)
        spans.clear()
        w3c_trace, w3c_parent = _ids()
        await traced.client.feed.ListMessages(
            list_req(mixed),
            metadata=[*Client.pinning(mixed.user), traceparent(w3c_trace, w3c_parent)],
        )
        span = one_server_span(spans)
        assert span.parent is None and span.context.trace_id != w3c_trace


class TestMetadataGetter:
    def test_reads_text_values_of_a_key_and_skips_binary_ones(self) -> None:
        """Every text value under a key, in order; `-bin` (bytes) values are never read."""
        md: list[tuple[str, str | bytes]] = [
            ("baggage", "a=1"),
            ("x-trace-bin", b"\x00\x01"),
            ("baggage", "b=2"),
        ]
        assert GETTER.get(md, "baggage") == ["a=1", "b=2"]
        assert GETTER.get(md, "Baggage") == ["a=1", "b=2"]
        assert GETTER.get(md, "x-trace-bin") is None
        assert GETTER.get(md, "traceparent") is None
        assert GETTER.keys(md) == ["baggage", "x-trace-bin", "baggage"]


class TestConfig:
    async def test_unknown_propagator_is_a_configuration_error(self, tmp_path: Path) -> None:
        """`guestfeed serve` with an OTEL_PROPAGATORS name that is not installed exits 2
        with one line naming the variable, before it touches a database."""
        env = clean_env(
            tmp_path,
            OTEL_PROPAGATORS="tracecontext,nosuchformat",
            GUESTFEED_JWT_SECRET=SECRET,
            GUESTFEED_DATABASE_URL="postgresql://guestfeed@127.0.0.1:1/none",
        )
        code, _, err = await run_cli(env, "serve")
        assert code == 2, err
        assert "configuration error: OTEL_PROPAGATORS" in err and "nosuchformat" in err
        assert "Traceback" not in err
