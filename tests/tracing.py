"""One tracer provider for all in-process tracing tests (asyncpg is instrumented once)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from guestfeed_server import telemetry as telemetry_mod


@dataclass(frozen=True)
class Tracing:
    """The one tracer provider asyncpg reports to, and its in-memory exporter."""

    provider: TracerProvider
    exporter: InMemorySpanExporter


@functools.cache
def shared_tracing() -> Tracing:
    """Builds the provider once and points the (process-wide) asyncpg patch at it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if telemetry_mod._asyncpg_instrumented:
        # Someone in this process instrumented asyncpg on another provider first
        # (only the first provider sticks): move the patch to ours.
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        telemetry_mod._asyncpg_instrumented = False
    telemetry_mod.instrument_asyncpg(provider)
    return Tracing(provider, exporter)
