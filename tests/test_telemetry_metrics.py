"""The service's metrics in the SDK, on a Prometheus scrape endpoint, and from the environment."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.request
from typing import Any

import grpc
import pytest

from guestfeed.v1 import feed_pb2, feed_pb2_grpc, rollout_pb2
from guestfeed_server.settings import ConfigError
from guestfeed_server.telemetry import Telemetry

from . import conftest
from .conftest import Client
from .telemetry_helpers import (
    FEED,
    MODEL_NAMES,
    ROLLOUT,
    ROOT,
    Feed,
    Traced,
    _stream_all,
    list_req,
    metric_units,
    points,
    served,
    traced_server,
)
from .tracing import Tracing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alert_metric_names(text: str) -> tuple[set[str], set[str]]:
    """(metric names, recording rules used) in the `expr:` blocks of a rules file."""
    exprs, block = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("expr:"):
            block = [stripped.removeprefix("expr:").strip(" |")]
            exprs.append(block)
            indent = len(line) - len(line.lstrip())
        elif block is not None and stripped and len(line) - len(line.lstrip()) > indent:
            block.append(stripped)
        else:
            block = None
    promql = {"sum", "rate", "max", "min", "avg", "and", "or", "unless", "by", "without"}
    names: set[str] = set()
    rules: set[str] = set()
    for expr in exprs:
        body = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", " ".join(expr))
        for name in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", body):
            if name in promql:
                continue
            (rules if ":" in name else names).add(name)
    return names, rules


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
        while sum(p.count for _, p in points(traced.reader, "rpc.server.duration")) < 7:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        durations = {
            (a["rpc.method"], a["rpc.grpc.status_code"]): p
            for a, p in points(traced.reader, "rpc.server.duration")
        }
        assert {k: p.count for k, p in durations.items()} == {
            ("GetReadModel", 0): 1,
            ("ListMessages", 0): 3,
            ("ListMessages", 3): 1,
            ("ListMessages", 16): 1,
            ("StreamMessages", 0): 1,
        }
        for a, p in points(traced.reader, "rpc.server.duration"):
            assert a["rpc.system"] == "grpc"
            assert a["rpc.service"] == (ROLLOUT if a["rpc.method"] == "GetReadModel" else FEED)
            assert p.sum > 0 and sum(p.bucket_counts) == p.count
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


class TestPrometheus:
    async def test_scrape_endpoint_exposes_rpc_feed_and_sms_metrics(
        self, admin_dsn: str, mixed: Feed
    ) -> None:
        """GUESTFEED_PROMETHEUS_PORT serves /metrics with every metric the alert rules use."""
        port = _free_port()
        telemetry = Telemetry.from_env(
            {"GUESTFEED_PROMETHEUS_PORT": str(port), "OTEL_SERVICE_NAME": "guestfeed-prom-test"}
        )
        c = await conftest.start_client(
            admin_dsn, telemetry=telemetry, GUESTFEED_SMS_HEALTH_INTERVAL_S="0.2"
        )
        app = c.app
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                await feed_pb2_grpc.GuestFeedServiceStub(channel).ListMessages(
                    list_req(mixed), metadata=Client.pinning(mixed.user)
                )

            def scrape() -> str:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return str(resp.read().decode())

            deadline = time.monotonic() + 5
            while "guestfeed_sms_deliveries" not in (text := await asyncio.to_thread(scrape)):
                assert time.monotonic() < deadline, "the SMS gauges never appeared"
                await asyncio.sleep(0.1)
        finally:
            await c.stop()
            telemetry.shutdown()
        exposed = set(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)", text, flags=re.MULTILINE))
        assert "rpc_server_duration_milliseconds_count" in exposed
        assert "guestfeed_messages_served_total" in exposed
        count_line = next(
            line
            for line in text.splitlines()
            if line.startswith("rpc_server_duration_milliseconds_count{")
            and 'rpc_method="ListMessages"' in line
        )
        assert 'rpc_grpc_status_code="0"' in count_line and count_line.endswith(" 1.0")
        alerts = ROOT / "docker" / "prometheus" / "alerts.yml"
        if not alerts.exists():
            pytest.skip("docker/prometheus/alerts.yml is not there yet")
        rules_text = alerts.read_text()
        names, used_rules = _alert_metric_names(rules_text)
        assert names, "no metric found in the alert expressions"
        assert names <= exposed, sorted(names - exposed)
        recorded = set(re.findall(r"^\s*-\s*record:\s*(\S+)", rules_text, flags=re.MULTILINE))
        assert used_rules <= recorded


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

    def test_trace_health_is_off_by_default(self) -> None:
        """Without GUESTFEED_TRACE_HEALTH health and reflection stay untraced."""
        assert Telemetry.from_env({}).trace_health is False
        assert Telemetry.from_env({"GUESTFEED_TRACE_HEALTH": "true"}).trace_health is True
