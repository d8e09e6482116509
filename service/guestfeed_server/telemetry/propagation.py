"""A caller's trace context and baggage, read from gRPC metadata.

Extraction goes through `opentelemetry.propagate`, so the propagators are the
ones OTEL_PROPAGATORS names (default `tracecontext,baggage`; `b3`, `b3multi`
with opentelemetry-propagator-b3, or anything else registered as an
`opentelemetry_propagator` entry point), or whatever a test installed with
`propagate.set_global_textmap`.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter

from ..settings import ConfigError

# What grpc.aio's `invocation_metadata()` returns: (key, value) pairs, keys in
# lower case, a key possibly repeated, values of `-bin` keys as bytes.
Metadata = Sequence[tuple[str, str | bytes]]


class MetadataGetter(Getter[Metadata]):
    """Reads text metadata for a propagator (binary `-bin` values are never trace context)."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        """Every text value sent under `key` (gRPC keys are lower case), or None."""
        key = key.lower()
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        """The keys sent, for propagators that match on a prefix."""
        return [k for k, _ in carrier]


GETTER = MetadataGetter()


def check_propagators() -> None:
    """Fails start-up on an OTEL_PROPAGATORS name that is not installed.

    The API builds its propagators when `opentelemetry.propagate` is first
    imported and raises ValueError there; importing it here, at start-up, turns
    that into a configuration error instead of a traceback on the first RPC.

    Raises:
        ConfigError: OTEL_PROPAGATORS names a propagator that is not installed.
    """
    try:
        from opentelemetry import propagate  # noqa: F401
    except ValueError as exc:
        raise ConfigError(f"OTEL_PROPAGATORS: {exc}") from None


def extract(metadata: Metadata | None) -> Context:
    """The context an RPC's span starts in: the caller's span (when it sent
    one) and baggage, on top of the server's ambient context.

    The ambient context is kept (anything a task carries, such as suppressed
    instrumentation) but its span, if any, is dropped: without trace context
    from the caller an RPC is the root of a trace of its own.
    """
    # Imported here, not at module level: a bad OTEL_PROPAGATORS would make
    # importing this module raise (see `check_propagators`).
    from opentelemetry import propagate

    base = trace.set_span_in_context(trace.INVALID_SPAN, otel_context.get_current())
    return propagate.extract(metadata or (), context=base, getter=GETTER)
