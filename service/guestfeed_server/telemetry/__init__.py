"""OpenTelemetry for guestfeed: traces, metrics, structured logs.

`Telemetry.from_settings()` builds what `TelemetrySettings` (read in
settings.py) asks for: exporters named by OTEL_TRACES_EXPORTER and
OTEL_METRICS_EXPORTER (OTLP over gRPC or, with OTEL_EXPORTER_OTLP_PROTOCOL=
http/protobuf, HTTP: exporters.py), a Prometheus endpoint, whether health is
traced. The exporters' own variables (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, ...) are read by the SDK itself,
and OTEL_PROPAGATORS by the API (propagation.py).

Tests build a `Telemetry` on their own providers (in-memory exporter and
reader) instead: nothing here touches the global providers unless asked.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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

from ..settings import TelemetrySettings
from .exporters import otlp_metric_exporter, otlp_protocol, otlp_span_exporter
from .metrics import GaugeSources, Metrics
from .propagation import check_propagators

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
    # The Prometheus scrape endpoint's HTTP server, when one was started.
    scrape_server: Any = None

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
        """Providers and exporters as the OTEL_* and GUESTFEED_* variables say.

        Raises:
            ConfigError: an exporter name, OTLP protocol, propagator or port is
                not understood.
        """
        return cls.from_settings(TelemetrySettings.from_env(env), env)

    @classmethod
    def from_settings(
        cls, settings: TelemetrySettings, env: Mapping[str, str] | None = None
    ) -> Telemetry:
        """Providers and exporters as the settings say (a Prometheus endpoint is
        started here and stopped by `shutdown`). `env` (default: the process
        environment) chooses the OTLP protocol.

        Raises:
            ConfigError: OTEL_EXPORTER_OTLP_*PROTOCOL or OTEL_PROPAGATORS is not understood.
        """
        env = os.environ if env is None else env
        # Every check before anything is started: a bad value must not leave
        # an exporter thread or a scrape port behind.
        check_propagators()
        if "otlp" in settings.traces:
            otlp_protocol(env, "traces")
        if "otlp" in settings.metrics:
            otlp_protocol(env, "metrics")
        resource = Resource.create({"service.name": settings.service_name})
        # With nowhere to send spans, record none (ALWAYS_OFF): span and trace
        # ids still flow from callers into the logs, at almost no cost per RPC.
        tracer_provider = TracerProvider(
            resource=resource, sampler=None if settings.traces else ALWAYS_OFF
        )
        for name in settings.traces:
            if name == "console":
                tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            else:
                tracer_provider.add_span_processor(BatchSpanProcessor(otlp_span_exporter(env)))
        readers: list[MetricReader] = []
        for name in settings.metrics:
            if name == "console":
                readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
            else:
                readers.append(PeriodicExportingMetricReader(otlp_metric_exporter(env)))
        scrape: Any = None
        if settings.prometheus_port is not None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import start_http_server

            readers.append(PrometheusMetricReader())
            scrape, _ = start_http_server(settings.prometheus_port, addr=settings.prometheus_addr)
            log.info("prometheus metrics on :%d/metrics", settings.prometheus_port)
        meter_provider: otel_metrics.MeterProvider = (
            MeterProvider(resource=resource, metric_readers=readers)
            if readers
            else otel_metrics.NoOpMeterProvider()
        )
        telemetry = cls.create(tracer_provider, meter_provider, trace_health=settings.trace_health)
        telemetry.scrape_server = scrape
        if settings.traces:
            instrument_asyncpg(tracer_provider)
        return telemetry

    def shutdown(self) -> None:
        """Stops the scrape endpoint, then flushes and stops exporters (last step of shutdown)."""
        if self.scrape_server is not None:
            self.scrape_server.shutdown()
            self.scrape_server.server_close()
            self.scrape_server = None
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
