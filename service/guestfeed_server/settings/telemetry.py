"""Telemetry settings: OTEL_* (the SDK's own names) and GUESTFEED_*."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .values import ConfigError, env_bool, env_port, exporters


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """What to export and where: OTEL_* (the SDK's own names) and GUESTFEED_*."""

    # OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER: otlp, console (none: empty).
    traces: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    service_name: str = "guestfeed"
    # GUESTFEED_PROMETHEUS_PORT / _ADDR: a scrape endpoint (None: off).
    prometheus_port: int | None = None
    prometheus_addr: str = "127.0.0.1"
    # GUESTFEED_TRACE_HEALTH: also trace health and reflection calls.
    trace_health: bool = False
    # GUESTFEED_LOG_FORMAT: json (default) or text.
    json_logs: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TelemetrySettings:
        """Reads and validates the telemetry variables.

        Raises:
            ConfigError: an exporter name, port or log format is not understood.
        """
        env = os.environ if env is None else env
        log_format = (env.get("GUESTFEED_LOG_FORMAT") or "json").strip().lower()
        if log_format not in ("json", "text"):
            raise ConfigError(f"GUESTFEED_LOG_FORMAT must be json or text, got {log_format!r}")
        return cls(
            traces=exporters(env, "OTEL_TRACES_EXPORTER"),
            metrics=exporters(env, "OTEL_METRICS_EXPORTER"),
            service_name=env.get("OTEL_SERVICE_NAME") or "guestfeed",
            prometheus_port=env_port(env, "GUESTFEED_PROMETHEUS_PORT"),
            prometheus_addr=env.get("GUESTFEED_PROMETHEUS_ADDR") or "127.0.0.1",
            trace_health=env_bool(env, "GUESTFEED_TRACE_HEALTH", False),
            json_logs=log_format == "json",
        )
