"""OTLP exporters over gRPC or HTTP, as OTEL_EXPORTER_OTLP_*PROTOCOL says.

The choice follows the SDK's own auto-configuration (opentelemetry-sdk's
`_configuration`): the per-signal variable wins over the general one, and
with neither set OTLP goes over gRPC (port 4317). `http/protobuf` uses the
HTTP exporters (port 4318, paths /v1/traces and /v1/metrics). Endpoint,
headers, timeout, compression and TLS are read by the exporters themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

from ..settings import ConfigError

Protocol = Literal["grpc", "http/protobuf"]
_PROTOCOLS: tuple[Protocol, ...] = ("grpc", "http/protobuf")
_GENERAL = "OTEL_EXPORTER_OTLP_PROTOCOL"


def otlp_protocol(env: Mapping[str, str], signal: Literal["traces", "metrics"]) -> Protocol:
    """The protocol for one signal's OTLP exporter.

    Raises:
        ConfigError: the protocol is not one the Python exporters speak
            (`http/json` has no Python exporter); the message names the variable.
    """
    specific = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    for name in (specific, _GENERAL):
        value = (env.get(name) or "").strip()
        if not value:
            continue
        for protocol in _PROTOCOLS:
            if value == protocol:
                return protocol
        raise ConfigError(f"{name} must be grpc or http/protobuf, got {value!r}")
    return "grpc"


def otlp_span_exporter(env: Mapping[str, str]) -> SpanExporter:
    """The OTLP span exporter for the configured protocol (imported only when used)."""
    if otlp_protocol(env, "traces") == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def otlp_metric_exporter(env: Mapping[str, str]) -> MetricExporter:
    """The OTLP metric exporter for the configured protocol (imported only when used)."""
    if otlp_protocol(env, "metrics") == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        return HttpMetricExporter()
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()
