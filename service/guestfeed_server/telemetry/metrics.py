"""The service's metric instruments (OpenTelemetry metrics SDK).

Names follow the OpenTelemetry semantic conventions for RPC as of v1.26.0
(`rpc.server.duration`, milliseconds; `rpc.system`, `rpc.service`,
`rpc.method`, `rpc.grpc.status_code`); the rest live under `guestfeed.`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from .record import RpcRecord

# Prometheus-friendly buckets for a service whose pages take about a millisecond.
DURATION_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


@dataclass
class GaugeSources:
    """Callbacks the observable gauges read at collection time."""

    pool_in_use: Callable[[], int] = lambda: 0
    pool_idle: Callable[[], int] = lambda: 0
    pool_waiting: Callable[[], int] = lambda: 0
    # name -> value, refreshed by the SMS health job; empty until its first run.
    sms: dict[str, float] = field(default_factory=dict)


class Metrics:
    """Every instrument, created once per meter."""

    def __init__(self, meter: Meter, sources: GaugeSources) -> None:
        self.sources = sources
        self.rpc_duration = meter.create_histogram(
            "rpc.server.duration",
            unit="ms",
            description="Duration of inbound RPCs, by method and status",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_MS,
        )
        self.messages_served = meter.create_counter(
            "guestfeed.messages.served",
            unit="{message}",
            description="Feed messages served, by read model, message type and source",
        )
        self.rollout_decisions = meter.create_counter(
            "guestfeed.rollout.decisions",
            unit="{decision}",
            description="Rollout answers, by read model and deciding rule",
        )
        self.shadow_reads = meter.create_counter(
            "guestfeed.shadow.reads",
            unit="{read}",
            description="Shadow reads of V2 beside V1 first pages, by result "
            "(match, v1_only, v2_only, dropped, error)",
        )
        meter.create_observable_up_down_counter(
            "guestfeed.db.pool.connections",
            callbacks=[self._pool],
            unit="{connection}",
            description="Connections of the asyncpg pool by state (in_use, idle)",
        )
        meter.create_observable_up_down_counter(
            "guestfeed.db.pool.waiting",
            callbacks=[self._waiting],
            unit="{request}",
            description="Requests waiting for a pooled connection",
        )
        meter.create_observable_gauge(
            "guestfeed.sms.deliveries",
            callbacks=[self._sms_rows],
            unit="{delivery}",
            description="message_deliveries rows created in the last 24 h (window=24h) and "
            "the daily average of the 7 days before (window=baseline_7d)",
        )
        meter.create_observable_gauge(
            "guestfeed.sms.delivery_success_ratio",
            callbacks=[self._sms_success],
            unit="1",
            description="delivered / all delivery rows created in the last 24 h",
        )

    def record_rpc(
        self, service: str, method: str, code: int, duration_ms: float, record: RpcRecord
    ) -> None:
        """Records one finished RPC."""
        self.rpc_duration.record(
            duration_ms,
            {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": method,
                "rpc.grpc.status_code": code,
            },
        )
        for (mtype, source), n in record.by_kind.items():
            self.messages_served.add(
                n,
                {
                    "guestfeed.read_model": record.read_model,
                    "guestfeed.message_type": mtype,
                    "guestfeed.source": source,
                },
            )
        for model, reason in record.decisions:
            self.rollout_decisions.add(
                1, {"guestfeed.read_model": model, "guestfeed.rollout.reason": reason}
            )

    def _pool(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.sources.pool_in_use(), {"state": "in_use"})
        yield Observation(self.sources.pool_idle(), {"state": "idle"})

    def _waiting(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.sources.pool_waiting())

    def _sms_rows(self, options: CallbackOptions) -> Iterable[Observation]:
        sms = self.sources.sms
        if "rows_24h" in sms:
            yield Observation(sms["rows_24h"], {"window": "24h"})
            yield Observation(sms["rows_baseline_7d"], {"window": "baseline_7d"})

    def _sms_success(self, options: CallbackOptions) -> Iterable[Observation]:
        if "success_ratio_24h" in self.sources.sms:
            yield Observation(self.sources.sms["success_ratio_24h"])
