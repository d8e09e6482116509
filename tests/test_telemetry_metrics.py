"""The service's metrics in the SDK, and telemetry from the environment (scrape endpoint:
test_telemetry_prometheus.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_server.settings import ConfigError
from guestfeed_server.telemetry import Telemetry
from guestfeed_server.telemetry.exporters import otlp_metric_exporter, otlp_span_exporter
from guestfeed_server.telemetry.metrics import DURATION_BUCKETS_S

from .conftest import Client
from .telemetry_helpers import (
    FEED,
    MODEL_NAMES,
    ROLLOUT,
    Feed,
    RaisingPolicy,
    Traced,
    _stream_all,
    list_req,
    metric_units,
    points,
    served,
    traced_server,
)
from .tracing import Tracing

# rpc.grpc.status_code (a number) -> the code's name, as rpc.response.status_code has it.
_STATUS_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


class TestMetrics:
    async def test_rpc_duration_by_method_and_status_and_feed_counters(
        self, traced: Traced, mixed: Feed
    ) -> None:
        """Durations count every call by method/status; served and decision counters add up."""
        c, me = traced.client, Client.pinning(mixed.user)
        rm = await c.rollout.GetReadModel(
            rollout_pb2.GetReadModelRequest(event_id=str(mixed.event), user_id=str(mixed.user)),
            metadata=me,
        )
        decided = (MODEL_NAMES[rm.read_model], rollout_pb2.DecisionReason.Name(rm.reason))
        decided = (decided[0], decided[1].removeprefix("DECISION_REASON_").lower())
        responses: list[Any] = []
        first = await c.feed.ListMessages(
            list_req(mixed, feed_pb2.READ_MODEL_V2, page_size=3), metadata=me
        )
        responses.append(first)
        responses.append(
            await c.feed.ListMessages(
                list_req(mixed, page_size=3, page_token=first.next_page_token), metadata=me
            )
        )
        responses.append(await c.feed.ListMessages(list_req(mixed), metadata=me))
        responses += await _stream_all(c, mixed)
        for md in (me, []):
            with pytest.raises(grpc.aio.AioRpcError):
                await c.feed.ListMessages(feed_pb2.ListMessagesRequest(event_id="bad"), metadata=md)

        # An aborted call's status reaches the caller before the server records it.
        deadline = time.monotonic() + 5
        while sum(p.count for _, p in points(traced.reader, "rpc.server.call.duration")) < 7:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        durations = {
            (a["rpc.method"], a["rpc.response.status_code"]): p
            for a, p in points(traced.reader, "rpc.server.call.duration")
        }
        assert {k: p.count for k, p in durations.items()} == {
            (f"{ROLLOUT}/GetReadModel", "OK"): 1,
            (f"{FEED}/ListMessages", "OK"): 3,
            (f"{FEED}/ListMessages", "INVALID_ARGUMENT"): 1,
            (f"{FEED}/ListMessages", "UNAUTHENTICATED"): 1,
            (f"{FEED}/StreamMessages", "OK"): 1,
        }
        for a, p in points(traced.reader, "rpc.server.call.duration"):
            # Caller mistakes are not failures: no error.type.
            assert set(a) == {"rpc.system.name", "rpc.method", "rpc.response.status_code"}
            assert a["rpc.system.name"] == "grpc"
            assert p.sum > 0 and sum(p.bucket_counts) == p.count
            assert tuple(p.explicit_bounds) == DURATION_BUCKETS_S
        assert metric_units(traced.reader)["rpc.server.call.duration"] == "s"

        # The deprecated millisecond histogram, kept for one release, says the same.
        old = {
            (f"{a['rpc.service']}/{a['rpc.method']}", _STATUS_NAMES[a["rpc.grpc.status_code"]]): p
            for a, p in points(traced.reader, "rpc.server.duration")
        }
        assert {k: p.count for k, p in old.items()} == {k: p.count for k, p in durations.items()}
        for key, p in old.items():
            assert p.sum == pytest.approx(durations[key].sum * 1000)
        assert metric_units(traced.reader)["rpc.server.duration"] == "ms"

        got = {
            (a["guestfeed.read_model"], a["guestfeed.message_type"], a["guestfeed.source"]): p.value
            for a, p in points(traced.reader, "guestfeed.messages.served")
        }
        assert got == dict(served(responses))

        decisions = {
            (a["guestfeed.read_model"], a["guestfeed.rollout.reason"]): p.value
            for a, p in points(traced.reader, "guestfeed.rollout.decisions")
        }
        # GetReadModel, the UNSPECIFIED ListMessages and the stream (once, not per page).
        assert decisions == {decided: 3}

    async def test_server_failure_has_error_type(
        self, admin_dsn: str, tracing: Tracing, mixed: Feed
    ) -> None:
        """A server-side failure (INTERNAL) is recorded with error.type = the code's name."""
        async with traced_server(admin_dsn, tracing, rollout=RaisingPolicy()) as t:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await t.client.feed.ListMessages(
                    list_req(mixed), metadata=Client.pinning(mixed.user)
                )
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            deadline = time.monotonic() + 5
            while not (got := points(t.reader, "rpc.server.call.duration")):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        ((attrs, point),) = got
        assert attrs == {
            "rpc.system.name": "grpc",
            "rpc.method": f"{FEED}/ListMessages",
            "rpc.response.status_code": "INTERNAL",
            "error.type": "INTERNAL",
        }
        assert point.count == 1

    async def test_pool_gauges_report_in_use_idle_and_waiting(
        self, admin_dsn: str, tracing: Tracing, mixed: Feed
    ) -> None:
        """Pool gauges follow the pool: connections lent out, idle ones, and requests queued."""
        # Health probes borrow through the same gate: slow them down, so only
        # this test's borrowers and its RPC are counted below.
        async with traced_server(
            admin_dsn, tracing, pool_max=2, GUESTFEED_HEALTH_INTERVAL_S="60"
        ) as t:
            pool = t.client.app.db.pool

            def pool_state() -> tuple[dict[str, int], int]:
                conns = {
                    a["state"]: p.value
                    for a, p in points(t.reader, "guestfeed.db.pool.connections")
                }
                (waiting,) = [p.value for _, p in points(t.reader, "guestfeed.db.pool.waiting")]
                return conns, waiting

            # Health and the SMS job borrow through the same fair gate: let the
            # start-up readings finish first.
            deadline = time.monotonic() + 5
            while (state := pool_state())[1] != 0 or state[0].get("in_use"):
                assert time.monotonic() < deadline, f"background borrowers never finished: {state}"
                await asyncio.sleep(0.02)
            conns, waiting = pool_state()
            assert set(conns) == {"in_use", "idle"} and waiting == 0
            assert conns["in_use"] == pool.get_size() - pool.get_idle_size()
            held = [await pool.acquire() for _ in range(2)]
            try:

                async def list_messages() -> feed_pb2.ListMessagesResponse:
                    return await t.client.feed.ListMessages(
                        list_req(mixed), metadata=Client.pinning(mixed.user)
                    )

                rpc = asyncio.create_task(list_messages())
                deadline = time.monotonic() + 5
                while pool_state()[1] != 1:
                    assert time.monotonic() < deadline, "the RPC never queued for the pool"
                    await asyncio.sleep(0.02)
                conns, waiting = pool_state()
                assert waiting == 1
                assert conns == {"in_use": 2, "idle": 0}
            finally:
                for conn in held:
                    await pool.release(conn)
            await rpc
            # The RPC's connection goes back in a task of its own, a loop
            # turn or so after the response.
            deadline = time.monotonic() + 5
            while pool_state()[0]["in_use"] != 0:
                assert time.monotonic() < deadline, "the RPC's connection never came back"
                await asyncio.sleep(0.01)
            assert pool_state()[1] == 0


class TestFromEnv:
    @pytest.mark.parametrize("var", ["OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER"])
    @pytest.mark.parametrize("value", ["bogus", "otlp,jaeger", "zipkin"])
    def test_unknown_exporter_is_config_error(self, var: str, value: str) -> None:
        """An exporter other than otlp, console or none fails, naming the variable."""
        with pytest.raises(ConfigError, match=var):
            Telemetry.from_env({var: value})

    @pytest.mark.parametrize("port", ["abc", "0", "65536", "-1", "9464.5"])
    def test_bad_prometheus_port_is_config_error(self, port: str) -> None:
        """GUESTFEED_PROMETHEUS_PORT must be a port number 1-65535."""
        with pytest.raises(ConfigError, match="GUESTFEED_PROMETHEUS_PORT"):
            Telemetry.from_env({"GUESTFEED_PROMETHEUS_PORT": port})

    @pytest.mark.parametrize(
        "var", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]
    )
    def test_unknown_otlp_protocol_is_config_error(self, var: str) -> None:
        """Only grpc and http/protobuf are spoken (Python has no http/json exporter)."""
        with pytest.raises(ConfigError, match=var):
            Telemetry.from_env({"OTEL_TRACES_EXPORTER": "otlp", var: "http/json"})

    @pytest.mark.parametrize(
        ("env", "traces", "metrics"),
        [
            ({}, "grpc", "grpc"),
            ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http", "http"),
            (
                {
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
                },
                "http",
                "grpc",
            ),
            ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "http", "grpc"),
        ],
    )
    def test_otlp_protocol_picks_the_exporter(
        self, env: dict[str, str], traces: str, metrics: str
    ) -> None:
        """The per-signal protocol wins over the general one; gRPC when neither is set."""
        span_exporter, metric_exporter = otlp_span_exporter(env), otlp_metric_exporter(env)
        try:
            assert f".proto.{traces}." in type(span_exporter).__module__
            assert f".proto.{metrics}." in type(metric_exporter).__module__
        finally:
            span_exporter.shutdown()
            metric_exporter.shutdown()

    def test_trace_health_is_off_by_default(self) -> None:
        """Without GUESTFEED_TRACE_HEALTH health and reflection stay untraced."""
        assert Telemetry.from_env({}).trace_health is False
        assert Telemetry.from_env({"GUESTFEED_TRACE_HEALTH": "true"}).trace_health is True
