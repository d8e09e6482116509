"""One SERVER span, one log line and the RPC metrics for every call.

The outermost interceptor: it sees the final status that `grpc_errors` set,
so spans, logs and metrics agree on it. A caller's trace context is
continued, read by the propagators OTEL_PROPAGATORS names (W3C `traceparent`
and `baggage` by default, B3 on request; telemetry/propagation.py), so a
caller's trace contains our spans (and, below them, the asyncpg spans of the
queries), and the caller's baggage is current while the handler runs. Health
and reflection are left out unless asked for: probes every second would drown
the traces that matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..telemetry import propagation
from ..telemetry import record as rpc_record
from ..telemetry.metrics import Metrics
from .interceptors import BehaviorInterceptor
from .tls import client_identity

log = logging.getLogger("guestfeed.rpc")
_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@contextlib.contextmanager
def _active(call: _Call) -> Iterator[None]:
    """Makes the call's context (its span, over the caller's baggage) current
    for the handler. Not trace.use_span: that puts the span on the current
    context, without the baggage the caller sent; and its defaults would mark
    caller errors (an abort is an exception) ERROR and record the exception's
    message, which may quote caller input. `finish` sets status and error.type."""
    token = otel_context.attach(call.otel_context)
    try:
        yield
    finally:
        otel_context.detach(token)


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def _log_rpc(span: Any, fields: dict[str, Any]) -> None:
    """Writes the RPC's log line, with its span's trace ids."""
    with trace.use_span(span, end_on_exit=False):
        log.info("rpc", extra=fields)


class _Call:
    """The span and bookkeeping of one RPC."""

    def __init__(self, owner: TelemetryInterceptor, full_method: str, context: Any) -> None:
        self.owner = owner
        self.service, self.method = _split(full_method)
        parent = propagation.extract(context.invocation_metadata())
        self.span = owner.tracer.start_span(
            f"{self.service}/{self.method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": self.service,
                "rpc.method": self.method,
            },
        )
        self.otel_context = trace.set_span_in_context(self.span, parent)
        self.context = context
        # The calling service, from its verified certificate (mutual TLS only).
        self.client_identity = client_identity(context) if owner.identify_clients else None
        if self.client_identity is not None:
            self.span.set_attribute("guestfeed.client_identity", self.client_identity)
        self.record = rpc_record.begin()
        self.started = time.perf_counter()

    def finish(self, exc: BaseException | None) -> None:
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            # The client went away: a stream closed early or a call cancelled.
            code = grpc.StatusCode.CANCELLED
        elif exc is None or isinstance(exc, grpc.aio.AbortError):
            code = self.context.code() or grpc.StatusCode.OK
        else:  # pragma: no cover - grpc_errors turns every exception into an abort
            code = grpc.StatusCode.UNKNOWN
        code_value = code.value[0]
        elapsed_s = time.perf_counter() - self.started
        span, rec = self.span, self.record
        by_type, by_source = (
            (dict(rec.by_type), dict(rec.by_source)) if rec.read_model else ({}, {})
        )
        span.set_attribute("rpc.grpc.status_code", code_value)
        if rec.read_model and span.is_recording():
            span.set_attributes(
                {
                    "guestfeed.read_model": rec.read_model,
                    "guestfeed.read_model.requested": rec.requested_read_model or "unspecified",
                    "guestfeed.rollout.reason": rec.model_choice,
                    "guestfeed.event_id": rec.event_id,
                    "guestfeed.page_size": rec.page_size,
                    "guestfeed.pages": rec.pages,
                    "guestfeed.messages.count": rec.messages,
                    **{f"guestfeed.messages.type.{k}": v for k, v in by_type.items()},
                    **{f"guestfeed.messages.source.{k}": v for k, v in by_source.items()},
                }
            )
        failed = code in self.owner.server_error_codes
        if failed:
            # The type, never the message: messages may quote caller input.
            span.set_status(Status(StatusCode.ERROR, code.name))
            span.set_attribute("error.type", code.name)
        elif code is not grpc.StatusCode.OK:
            span.set_attribute("error.type", code.name)
        span.end()
        self.owner.metrics.record_rpc(
            self.service, self.method, code.name, code.value[0], elapsed_s, rec, failed=failed
        )
        fields: dict[str, Any] = {
            "rpc_method": f"{self.service}/{self.method}",
            "status": code.name,
            "duration_ms": round(elapsed_s * 1000, 3),
        }
        if self.client_identity is not None:
            fields["client_identity"] = self.client_identity
        if rec.read_model:
            fields.update(
                read_model=rec.read_model,
                model_choice=rec.model_choice,
                requested_read_model=rec.requested_read_model or "unspecified",
                pages=rec.pages,
                messages=rec.messages,
                by_type=by_type,
                by_source=by_source,
            )
        # Written on the loop's next turn, once gRPC has started sending the
        # response: formatting and writing the line (measurable under load,
        # docs/performance.md) is then off the caller's path, and still in order.
        asyncio.get_running_loop().call_soon(_log_rpc, span, fields)


class TelemetryInterceptor(BehaviorInterceptor):
    """Traces, logs and measures RPCs of every kind (the request may be a stream)."""

    # Codes that mean the server failed, not the caller: these mark spans ERROR
    # (OpenTelemetry's gRPC server guidance).
    server_error_codes = frozenset(
        {
            grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DATA_LOSS,
        }
    )

    # Reflection is bidirectional: traced too when trace_health asks for it.
    kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")

    def __init__(
        self,
        tracer: trace.Tracer,
        metrics: Metrics,
        *,
        trace_health: bool,
        identify_clients: bool = False,
    ) -> None:
        super().__init__()
        self.tracer = tracer
        self.metrics = metrics
        self._trace_health = trace_health
        # Under mutual TLS: name the calling service from its certificate.
        self.identify_clients = identify_clients

    def skip(self, method: str) -> bool:
        """Health and reflection stay untraced unless trace_health."""
        return not self._trace_health and method.startswith(_QUIET_PREFIXES)

    def wrap_unary(self, method: str, behavior: Any) -> Any:
        """One span, log line and metrics around a single-response call."""

        async def handler(request: Any, context: Any) -> Any:
            call = _Call(self, method, context)
            exc: BaseException | None = None
            try:
                with _active(call):
                    return await behavior(request, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                call.finish(exc)

        return handler

    def wrap_stream(self, method: str, behavior: Any) -> Any:
        """One span for the whole stream, ended however the stream ends."""

        async def handler(request: Any, context: Any) -> AsyncIterator[Any]:
            call = _Call(self, method, context)
            exc: BaseException | None = None
            responses = behavior(request, context)
            try:
                while True:
                    # The span is current only while the handler computes the
                    # next response, never across our `yield`: a cancelled
                    # stream is closed from wherever grpc.aio finalizes it,
                    # and a context attached before a yield and detached
                    # after it would be detached in another Context
                    # ("Failed to detach context", one traceback per cancel).
                    with _active(call):
                        try:
                            item = await anext(responses)
                        except StopAsyncIteration:
                            break
                    yield item
            except BaseException as e:
                exc = e
                raise
            finally:
                try:
                    with _active(call):
                        await responses.aclose()
                finally:
                    call.finish(exc)

        return handler
