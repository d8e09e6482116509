"""The service's metric instruments (OpenTelemetry metrics SDK).

RPC durations follow the OpenTelemetry semantic conventions for RPC as the
installed opentelemetry-semantic-conventions (0.66b1) defines them, in
`opentelemetry.semconv._incubating.metrics.rpc_metrics` and
`..attributes.rpc_attributes`: `rpc.server.call.duration`, a histogram in
seconds, with `rpc.system.name`, the fully-qualified `rpc.method`
(`package.Service/Method`; `rpc.service` is deprecated), the status code's
name in `rpc.response.status_code` (`rpc.grpc.status_code` is deprecated) and
`error.type` when the call failed.

`rpc.server.duration` (milliseconds; `rpc.system`, `rpc.service`,
`rpc.method`, `rpc.grpc.status_code`: semantic conventions v1.26.0) is still
recorded beside it, deprecated, for one release, so dashboards and the soak
tooling that read it keep working while they move. The rest live under
`guestfeed.`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from .record import RpcRecord

# The bucket boundaries the semantic conventions give for rpc.server.call.duration,
# as an advisory on the instrument: every reader (OTLP, Prometheus, the tests'
# in-memory one) uses them without a View on each MeterProvider.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
# The deprecated millisecond histogram keeps its buckets, so its series do not change.
DURATION_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


@dataclass
class GaugeSources:
    """Callbacks the observable gauges read at collection time."""

    pool_in_use: Callable[[], int] = lambda: 0
    pool_idle: Callable[[], int] = lambda: 0
    pool_waiting: Callable[[], int] = lambda: 0
    streams_active: Callable[[], int] = lambda: 0
    # asyncio tasks alive in the server's loop (a leak shows as growth).
    tasks: Callable[[], int] = lambda: 0
    # name -> value, refreshed by the SMS health job; empty until its first run.
    sms: dict[str, float] = field(default_factory=dict)
    # WatchMessages calls registered with the hub, and how far its horizon
    # lags its statement time (seconds; None before the first horizon).
    watchers: Callable[[], int] = lambda: 0
    horizon_lag: Callable[[], float | None] = lambda: None


class Metrics:
    """Every instrument, created once per meter."""

    def __init__(self, meter: Meter, sources: GaugeSources) -> None:
        self.sources = sources
        self.rpc_call_duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Measures the duration of an incoming Remote Procedure Call (RPC).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.rpc_duration = meter.create_histogram(
            "rpc.server.duration",
            unit="ms",
            description="Deprecated, use rpc.server.call.duration (seconds): duration of "
            "inbound RPCs, by method and status",
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
        self.streams_refused = meter.create_counter(
            "guestfeed.streams.refused",
            unit="{stream}",
            description="StreamMessages calls refused at a per-caller limit, by limit "
            "(caller, caller_event)",
        )
        meter.create_observable_up_down_counter(
            "guestfeed.streams.active",
            callbacks=[lambda _: [Observation(self.sources.streams_active())]],
            unit="{stream}",
            description="StreamMessages calls open now",
        )
        self.watch_delivered = meter.create_counter(
            "guestfeed.watch.delivered",
            unit="{message}",
            description="Messages sent by WatchMessages, by read model",
        )
        self.watch_queries = meter.create_counter(
            "guestfeed.watch.queries",
            unit="{query}",
            description="Statements run for live updates, by kind (horizon, changes: the hub's "
            "per tick; access: once a second; catch_up: once per watch start or resume)",
        )
        meter.create_observable_gauge(
            "guestfeed.watch.watchers",
            callbacks=[lambda _: [Observation(self.sources.watchers())]],
            unit="{watcher}",
            description="WatchMessages calls open now",
        )
        meter.create_observable_gauge(
            "guestfeed.watch.horizon_lag",
            callbacks=[self._horizon_lag],
            unit="s",
            description="How far the live-update horizon is behind now: the tick, the margin, "
            "and the oldest open transaction in the database (or the safe mode's lag)",
        )
        meter.create_observable_up_down_counter(
            "guestfeed.process.tasks",
            callbacks=[lambda _: [Observation(self.sources.tasks())]],
            unit="{task}",
            description="asyncio tasks alive in the server's event loop",
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
        self,
        service: str,
        method: str,
        status: str,
        code: int,
        seconds: float,
        record: RpcRecord,
        *,
        failed: bool,
    ) -> None:
        """Records one finished RPC: `status` is the gRPC code's name, `code` its number
        (the edge's to read; nothing below it imports grpc); `failed` when the
        server, not the caller, is at fault."""
        attributes: dict[str, str] = {
            "rpc.system.name": "grpc",
            "rpc.method": f"{service}/{method}",
            "rpc.response.status_code": status,
        }
        if failed:
            # Only failures carry error.type; for a gRPC server those are the
            # codes the conventions list (UNKNOWN, DEADLINE_EXCEEDED, ...), not
            # a caller's mistake such as INVALID_ARGUMENT.
            attributes["error.type"] = status
        self.rpc_call_duration.record(seconds, attributes)
        self.rpc_duration.record(
            seconds * 1000,
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

    def _horizon_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        lag = self.sources.horizon_lag()
        if lag is not None:
            yield Observation(lag)

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
