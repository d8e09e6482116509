"""OpenTelemetry for guestfeed: traces, metrics, structured logs.

`Telemetry.from_env()` reads the standard variables:
  OTEL_TRACES_EXPORTER   otlp | console | none (default none)
  OTEL_METRICS_EXPORTER  otlp | console | none (default none)
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
  OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (read by the SDK itself)
plus GUESTFEED_PROMETHEUS_PORT (a scrape endpoint; unset = off) and
GUESTFEED_TRACE_HEALTH (trace health/reflection calls too; default false).

Tests build a `Telemetry` on their own providers (in-memory exporter and
reader) instead: nothing here touches the global providers unless asked.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from ..config import ConfigError
from .metrics import GaugeSources, Metrics

log = logging.getLogger(__name__)

SCOPE = "guestfeed"
_asyncpg_instrumented = False


@dataclass
class Telemetry:
    """The providers, tracer and instruments one server uses."""

    tracer_provider: trace.TracerProvider
    meter_provider: otel_metrics.MeterProvider
    sources: GaugeSources
    metrics: Metrics
    trace_health: bool = False

    @property
    def tracer(self) -> trace.Tracer:
        """The tracer for server spans."""
        return self.tracer_provider.get_tracer(SCOPE)

    @classmethod
    def create(
        cls,
        tracer_provider: trace.TracerProvider,
        meter_provider: otel_metrics.MeterProvider,
        *,
        trace_health: bool = False,
    ) -> Telemetry:
        """Builds the instruments on the given providers."""
        sources = GaugeSources()
        meter = meter_provider.get_meter(SCOPE)
        return cls(tracer_provider, meter_provider, sources, Metrics(meter, sources), trace_health)

    @classmethod
    def disabled(cls) -> Telemetry:
        """No-op providers: nothing is recorded or exported."""
        return cls.create(trace.NoOpTracerProvider(), otel_metrics.NoOpMeterProvider())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Telemetry:
        """Providers and exporters as the OTEL_* variables say.

        Raises:
            ConfigError: an exporter name or port is not understood.
        """
        env = os.environ if env is None else env
        resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "guestfeed")})
        trace_exporters = _exporters(env, "OTEL_TRACES_EXPORTER")
        # With nowhere to send spans, record none (ALWAYS_OFF): span and trace
        # ids still flow from callers into the logs, at almost no cost per RPC.
        tracer_provider = TracerProvider(
            resource=resource, sampler=None if trace_exporters else ALWAYS_OFF
        )
        for name in trace_exporters:
            if name == "console":
                tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            else:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )

                tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        readers: list[MetricReader] = []
        for name in _exporters(env, "OTEL_METRICS_EXPORTER"):
            if name == "console":
                readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
            else:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                    OTLPMetricExporter,
                )

                readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        port = _prometheus_port(env)
        if port is not None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import start_http_server

            readers.append(PrometheusMetricReader())
            start_http_server(port, addr=env.get("GUESTFEED_PROMETHEUS_ADDR", "127.0.0.1"))
            log.info("prometheus metrics on :%d/metrics", port)
        meter_provider: otel_metrics.MeterProvider = (
            MeterProvider(resource=resource, metric_readers=readers)
            if readers
            else otel_metrics.NoOpMeterProvider()
        )
        trace_health = env.get("GUESTFEED_TRACE_HEALTH", "").lower() in ("1", "true", "yes")
        telemetry = cls.create(tracer_provider, meter_provider, trace_health=trace_health)
        if trace_exporters:
            instrument_asyncpg(tracer_provider)
        return telemetry

    def shutdown(self) -> None:
        """Flushes and stops exporters (last step of shutdown)."""
        for provider in (self.tracer_provider, self.meter_provider):
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                stop()


def untraced() -> contextlib.AbstractContextManager[None]:
    """Background work (health probes, config re-reads, start-up migrations)
    runs without database spans: they would be root spans every few seconds,
    burying the traces of real requests. Tasks created inside inherit it."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


def instrument_asyncpg(tracer_provider: trace.TracerProvider) -> None:
    """Database calls become child spans, with the statement and never its parameters.

    The instrumentation patches asyncpg process-wide, so it is applied once.
    """
    global _asyncpg_instrumented
    if _asyncpg_instrumented:
        return
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
    instrumentor.instrument(tracer_provider=tracer_provider)
    _asyncpg_instrumented = True


def _exporters(env: Mapping[str, str], name: str) -> list[str]:
    raw = env.get(name, "none").strip().lower()
    names = [n.strip() for n in raw.split(",") if n.strip() and n.strip() != "none"]
    for n in names:
        if n not in ("otlp", "console"):
            raise ConfigError(f"{name} must be otlp, console or none, got {n!r}")
    return names


def _prometheus_port(env: Mapping[str, str]) -> int | None:
    raw = env.get("GUESTFEED_PROMETHEUS_PORT", "")
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"GUESTFEED_PROMETHEUS_PORT must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"GUESTFEED_PROMETHEUS_PORT must be 1-65535, got {port}")
    return port
