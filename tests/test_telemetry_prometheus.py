"""The Prometheus scrape endpoint, and the alert rules checked against what it exports."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.request
import uuid
from collections import defaultdict

import grpc
import pytest

from guestfeed.v1 import feed_pb2_grpc
from guestfeed_server.rollout import Decision, RolloutConfig, StaticPolicy
from guestfeed_server.telemetry import Telemetry

from . import conftest
from .conftest import Client
from .telemetry_helpers import FEED, ROOT, Feed, RaisingPolicy, list_req

ALERTS = ROOT / "docker" / "prometheus" / "alerts.yml"
# A selector `metric{matchers}` and one matcher `label op "value"` in PromQL.
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
# One sample line of the text exposition format: name{labels} value.
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? \S+$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
Series = dict[str, list[dict[str, str]]]


class BreakablePolicy(StaticPolicy):
    """The default rollout until `broken`, then a policy whose every decision raises."""

    def __init__(self) -> None:
        super().__init__(RolloutConfig())
        self.broken = False

    def decide(self, event_id: uuid.UUID, user_id: uuid.UUID) -> Decision:
        if self.broken:
            return RaisingPolicy().decide(event_id, user_id)
        return super().decide(event_id, user_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alert_exprs(text: str) -> list[str]:
    """The `expr:` blocks of a rules file, each joined into one line."""
    exprs: list[list[str]] = []
    block: list[str] | None = None
    indent = 0
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
    return [" ".join(e) for e in exprs]


def _alert_metric_names(exprs: list[str]) -> tuple[set[str], set[str]]:
    """(metric names, recording rules used) in PromQL expressions."""
    promql = {"sum", "rate", "max", "min", "avg", "and", "or", "unless", "by", "without"}
    names: set[str] = set()
    rules: set[str] = set()
    for expr in exprs:
        body = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
        for name in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", body):
            if name in promql:
                continue
            (rules if ":" in name else names).add(name)
    return names, rules


def _unquote(value: str) -> str:
    """A PromQL or exposition string's content (`\\\\.` is the regex `\\.`)."""
    return re.sub(r"\\(.)", r"\1", value)


def _series(text: str) -> Series:
    """Metric name -> the label sets of its exposed samples."""
    out: Series = defaultdict(list)
    for line in text.splitlines():
        if (match := _SAMPLE.match(line)) is not None:
            labels = {k: _unquote(v) for k, v in _LABEL.findall(match.group(2) or "")}
            out[match.group(1)].append(labels)
    return out


def _holds(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    """Whether a series' labels satisfy every positive matcher (a missing label is "")."""
    for key, op, value in matchers:
        got = labels.get(key, "")
        if op == "=" and got != value:
            return False
        if op == "=~" and re.fullmatch(value, got) is None:
            return False
    return True


def _unmatched_selectors(exprs: list[str], series: Series) -> list[str]:
    """Selectors in the rules that select none of the exposed series.

    Positive matchers (= and =~, anchored as in PromQL) must hold on one
    series; a negative matcher only needs its label to exist on the metric.
    """
    missing: list[str] = []
    for expr in exprs:
        for name, body in _SELECTOR.findall(expr):
            matchers = [(k, op, _unquote(v)) for k, op, v in _MATCHER.findall(body)]
            exposed = series.get(name, [])
            known = {k for labels in exposed for k in labels}
            negative_unknown = any(op in ("!=", "!~") and k not in known for k, op, _ in matchers)
            if negative_unknown or not any(_holds(labels, matchers) for labels in exposed):
                missing.append(f"{name}{{{body}}}")
    return missing


class TestPrometheus:
    async def test_scrape_endpoint_exposes_what_the_alert_rules_select(
        self, admin_dsn: str, mixed: Feed
    ) -> None:
        """GUESTFEED_PROMETHEUS_PORT serves /metrics with every metric, label and value the
        alert rules select, after an OK call and a server failure."""
        port = _free_port()
        telemetry = Telemetry.from_env(
            {"GUESTFEED_PROMETHEUS_PORT": str(port), "OTEL_SERVICE_NAME": "guestfeed-prom-test"}
        )
        # One call succeeds; then the rollout policy breaks and the next fails
        # INTERNAL: a server failure, as the error-ratio rule counts it.
        policy = BreakablePolicy()
        c = await conftest.start_client(
            admin_dsn, telemetry=telemetry, rollout=policy, GUESTFEED_SMS_HEALTH_INTERVAL_S="0.2"
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{c.app.port}") as channel:
                stub = feed_pb2_grpc.GuestFeedServiceStub(channel)
                me = Client.pinning(mixed.user)
                await stub.ListMessages(list_req(mixed), metadata=me)
                policy.broken = True
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ListMessages(list_req(mixed), metadata=me)
                assert caught.value.code() == grpc.StatusCode.INTERNAL

            def scrape() -> str:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return str(resp.read().decode())

            # The failed call is recorded just after its status reaches us.
            deadline = time.monotonic() + 5
            while (
                "guestfeed_sms_deliveries" not in (text := await asyncio.to_thread(scrape))
                or 'error_type="INTERNAL"' not in text
            ):
                assert time.monotonic() < deadline, "the SMS gauges or the failure never appeared"
                await asyncio.sleep(0.1)
        finally:
            await c.stop()
            telemetry.shutdown()
        series = _series(text)
        counts = {
            labels["rpc_response_status_code"]: labels
            for labels in series["rpc_server_call_duration_seconds_count"]
        }
        assert set(counts) == {"OK", "INTERNAL"}
        ok, failed = counts["OK"], counts["INTERNAL"]
        assert ok["rpc_method"] == f"{FEED}/ListMessages" and ok["rpc_system_name"] == "grpc"
        assert ok.get("error_type", "") == ""  # the exporter writes an absent label as ""
        assert failed["error_type"] == "INTERNAL"
        assert len(series["rpc_server_call_duration_seconds_bucket"]) == 2 * 15  # 14 bounds, +Inf
        # Deprecated, still exported for one release.
        assert "rpc_server_duration_milliseconds_count" in series
        assert "guestfeed_messages_served_total" in series

        if not ALERTS.exists():
            pytest.skip("docker/prometheus/alerts.yml is not there yet")
        rules_text = ALERTS.read_text()
        exprs = _alert_exprs(rules_text)
        names, used_rules = _alert_metric_names(exprs)
        assert names, "no metric found in the alert expressions"
        assert names <= set(series), sorted(names - set(series))
        assert _unmatched_selectors(exprs, series) == []
        recorded = set(re.findall(r"^\s*-\s*record:\s*(\S+)", rules_text, flags=re.MULTILINE))
        assert used_rules <= recorded
