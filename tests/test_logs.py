"""Structured logs: JSON lines with trace ids, one 'rpc' line per call, nothing sensitive."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from guestfeed.v1 import feed_pb2, feed_pb2_grpc, rollout_pb2
from guestfeed_server.auth import mint
from guestfeed_server.rollout import RolloutConfig, StaticPolicy
from guestfeed_server.telemetry.logs import JsonFormatter
from guestfeed_server.testing.procs import spawn_server

from .conftest import SECRET, Client
from .factory import World
from .telemetry_helpers import (
    MODEL_NAMES,
    TYPE_NAMES,
    RaisingPolicy,
    Traced,
    leaks,
    served,
    token_parts,
    traced_server,
)
from .tracing import Tracing

FEED = "guestfeed.v1.GuestFeedService"
BASE_KEYS = {"ts", "level", "logger", "msg"}
RPC_KEYS = BASE_KEYS | {"trace_id", "span_id", "rpc_method", "status", "duration_ms"}
FEED_KEYS = RPC_KEYS | {
    "read_model",
    "model_choice",
    "requested_read_model",
    "pages",
    "messages",
    "by_type",
    "by_source",
}


class Lines(logging.Handler):
    """Keeps every record as the JSON line the service would write."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def parsed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def rpc(self) -> list[dict[str, Any]]:
        return [d for d in self.parsed() if d["logger"] == "guestfeed.rpc"]

    async def wait_rpc(self, count: int, within_s: float = 5.0) -> list[dict[str, Any]]:
        """The 'rpc' lines once `count` exist (an aborted call logs after its status is sent)."""
        deadline = time.monotonic() + within_s
        while True:
            found = self.rpc()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.02)


@pytest.fixture
def captured() -> Iterator[Lines]:
    """Every logger's records at DEBUG, formatted as JSON lines."""
    root, handler = logging.getLogger(), Lines()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _record(msg: str, *args: object, **extra: Any) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "guestfeed.test", "levelno": logging.INFO, "levelname": "INFO", "msg": msg}
    )
    record.args = args
    record.__dict__.update(extra)
    return record


class TestJsonFormatter:
    def test_one_json_object_per_line(self) -> None:
        """A record is one line of JSON with ts, level, logger and the formatted message."""
        out = JsonFormatter().format(_record("two\nlines and %d", 5))
        assert "\n" not in out
        data = json.loads(out)
        assert set(data) == BASE_KEYS
        assert (data["level"], data["logger"], data["msg"]) == (
            "info",
            "guestfeed.test",
            "two\nlines and 5",
        )
        assert data["ts"].endswith("+00:00") and "T" in data["ts"]

    def test_active_span_adds_trace_and_span_ids(self) -> None:
        """Inside a span a line carries trace_id (32 hex) and span_id (16 hex); outside, neither."""
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("work") as span:
            data = json.loads(JsonFormatter().format(_record("inside")))
        ctx = span.get_span_context()
        assert data["trace_id"] == f"{ctx.trace_id:032x}"
        assert data["span_id"] == f"{ctx.span_id:016x}"
        assert set(json.loads(JsonFormatter().format(_record("outside")))) == BASE_KEYS

    def test_extra_fields_and_exceptions_are_kept(self) -> None:
        """`extra` fields become keys (non-JSON values as strings); exc_info becomes text."""
        ident = uuid.uuid4()
        record = _record("x", by_type={"direct": 2}, who=ident)
        try:
            raise ValueError("kaput")
        except ValueError:
            record.exc_info = sys.exc_info()
        data = json.loads(JsonFormatter().format(record))
        assert data["by_type"] == {"direct": 2}
        assert data["who"] == str(ident)
        assert data["exc_info"].startswith("Traceback") and "ValueError: kaput" in data["exc_info"]


@pytest.fixture
async def traced(admin_dsn: str, tracing: Tracing) -> AsyncIterator[Traced]:
    async with traced_server(admin_dsn, tracing) as t:
        yield t


async def _mixed_feed(world: World) -> tuple[uuid.UUID, uuid.UUID]:
    event = await world.event()
    user, guest = await world.member(event, tags=["a"])
    for _ in range(3):
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=guest, user_id=user)
    await world.message(event, "announcement")
    await world.channel(event, ["a"])
    mid = await world.message(event, "direct")
    await world.deliver(mid, guest_id=guest, user_id=user)
    await world.message(event, "direct", sender=user)
    return event, user


def _counts(responses: list[Any]) -> tuple[dict[str, int], dict[str, int]]:
    by_type: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    for (_, mtype, source), n in served(responses).items():
        by_type[mtype] += n
        by_source[source] += n
    return dict(by_type), dict(by_source)


class TestRpcLine:
    async def test_one_line_per_rpc_with_method_status_duration_and_counts(
        self, traced: Traced, world: World, captured: Lines, spans: InMemorySpanExporter
    ) -> None:
        """Each call logs one 'rpc' line; feed calls add read model and counts by type/source."""
        event, user = await _mixed_feed(world)
        c, me = traced.client, Client.pinning(user)
        listed = await c.feed.ListMessages(
            feed_pb2.ListMessagesRequest(
                event_id=str(event), page_size=5, read_model=feed_pb2.READ_MODEL_V2
            ),
            metadata=me,
        )
        streamed = [
            r
            async for r in c.feed.StreamMessages(
                feed_pb2.StreamMessagesRequest(
                    event_id=str(event), page_size=2, read_model=feed_pb2.READ_MODEL_V1
                ),
                metadata=me,
            )
        ]
        await c.rollout.GetReadModel(
            rollout_pb2.GetReadModelRequest(event_id=str(event), user_id=str(user)), metadata=me
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await c.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(event)),
                metadata=Client.auth(uuid.uuid4()),
            )
        lines = await captured.wait_rpc(4)
        assert [(d["msg"], d["rpc_method"], d["status"]) for d in lines] == [
            ("rpc", f"{FEED}/ListMessages", "OK"),
            ("rpc", f"{FEED}/StreamMessages", "OK"),
            ("rpc", "guestfeed.v1.RolloutService/GetReadModel", "OK"),
            ("rpc", f"{FEED}/ListMessages", "PERMISSION_DENIED"),
        ]
        listed_line, stream_line, rollout_line, denied_line = lines
        assert set(listed_line) == set(stream_line) == FEED_KEYS
        assert set(rollout_line) == set(denied_line) == RPC_KEYS
        for line in lines:
            assert line["level"] == "info"
            assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
        assert len(listed.messages) == 5
        by_type, by_source = _counts([listed])
        assert {k: listed_line[k] for k in FEED_KEYS - RPC_KEYS} == {
            "read_model": "v2",
            "model_choice": "explicit",
            "requested_read_model": "v2",
            "pages": 1,
            "messages": len(listed.messages),
            "by_type": by_type,
            "by_source": by_source,
        }
        by_type, by_source = _counts(streamed)
        assert {k: stream_line[k] for k in FEED_KEYS - RPC_KEYS} == {
            "read_model": "v1",
            "model_choice": "explicit",
            "requested_read_model": "v1",
            "pages": len(streamed),
            "messages": sum(len(r.messages) for r in streamed),
            "by_type": by_type,
            "by_source": by_source,
        }
        assert len(streamed) >= 2
        server = sorted(
            (s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER),
            key=lambda s: s.start_time or 0,
        )
        assert [(d["trace_id"], d["span_id"]) for d in lines] == [
            (f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}") for s in server
        ]


@pytest.fixture
async def sensitive(world: World, admin_pool: asyncpg.Pool) -> dict[str, Any]:
    """A feed whose content, guest and user phones and delivery phones carry markers."""
    mark = uuid.uuid4().hex[:12]
    content = {f"content-{kind}-{mark}" for kind in ("ann", "chan", "direct", "own", "sched")}
    phones = {f"+1999{n}{mark[:6]}" for n in range(4)}
    user_phone, guest_phone, delivery_phone, other_phone = sorted(phones)
    event = await world.event()
    user, guest = await world.member(event, tags=["t"])
    other, other_guest = await world.member(event)
    await admin_pool.execute("UPDATE public.users SET phone = $1 WHERE id = $2", user_phone, user)
    await admin_pool.execute("UPDATE public.users SET phone = $1 WHERE id = $2", other_phone, other)
    await admin_pool.execute(
        "UPDATE public.event_guests SET phone = $1 WHERE id = ANY($2::uuid[])",
        guest_phone,
        [guest, other_guest],
    )
    ann = await world.message(event, "announcement", content=f"content-ann-{mark}")
    # Targeted at a tag the guest lacks, yet delivered: V1 shows it and V2
    # hides it, so the shadow read logs (ids only, never this content).
    chan = await world.channel(event, ["gone"], content=f"content-chan-{mark}")
    sid = world.messages[chan].scheduled_id
    await admin_pool.execute(
        "UPDATE public.scheduled_messages SET content = $1 WHERE id = $2",
        f"content-sched-{mark}",
        sid,
    )
    direct = await world.message(event, "direct", sender=other, content=f"content-direct-{mark}")
    await world.message(event, "direct", sender=user, content=f"content-own-{mark}")
    for mid in (ann, chan, direct):
        did = await world.deliver(mid, guest_id=guest, user_id=user)
        await admin_pool.execute(
            "UPDATE public.message_deliveries SET phone_number = $1 WHERE id = $2",
            delivery_phone,
            did,
        )
    return {"event": event, "user": user, "content": content, "phones": phones}


class TestNothingSensitive:
    async def test_tokens_phones_and_content_never_reach_logs_or_spans(
        self,
        admin_dsn: str,
        tracing: Tracing,
        sensitive: dict[str, Any],
        captured: Lines,
        spans: InMemorySpanExporter,
    ) -> None:
        """Over good and failing calls, no log line (any logger, DEBUG) or span holds a secret."""
        event, user = sensitive["event"], sensitive["user"]
        good = mint(SECRET, user)
        bad = {
            "garbage": "eyJnot-a-jwt." + uuid.uuid4().hex + ".sig" + uuid.uuid4().hex,
            "wrong_secret": mint("other-secret-" + "z" * 40, user),
            "expired": mint(SECRET, user, ttl_s=-300),
            "stranger": mint(SECRET, uuid.uuid4()),
        }
        seen: list[str] = []
        calls = 0
        shadowing = StaticPolicy(RolloutConfig(shadow_sample_rate=1.0))
        async with traced_server(admin_dsn, tracing, rollout=shadowing) as t:
            c, md = t.client, [("authorization", f"Bearer {good}")]
            for model in (0, feed_pb2.READ_MODEL_V1, feed_pb2.READ_MODEL_V2):
                req = feed_pb2.ListMessagesRequest(event_id=str(event), read_model=model)
                seen += [m.content for m in (await c.feed.ListMessages(req, metadata=md)).messages]
                calls += 1
            req2 = feed_pb2.StreamMessagesRequest(
                event_id=str(event), page_size=2, read_model=feed_pb2.READ_MODEL_V2
            )
            async for r in c.feed.StreamMessages(req2, metadata=md):
                seen += [m.content for m in r.messages]
            calls += 1
            for token in bad.values():
                with pytest.raises(grpc.aio.AioRpcError):
                    await c.feed.ListMessages(
                        feed_pb2.ListMessagesRequest(event_id=str(event)),
                        metadata=[("authorization", f"Bearer {token}")],
                    )
                calls += 1
            with pytest.raises(grpc.aio.AioRpcError):
                await c.feed.ListMessages(
                    feed_pb2.ListMessagesRequest(event_id=str(event), page_token="bogus"),
                    metadata=md,
                )
            calls += 1
            await captured.wait_rpc(calls)
            await asyncio.sleep(0.2)  # the shadow read logs in the background
        async with traced_server(admin_dsn, tracing, rollout=RaisingPolicy()) as t:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await t.client.feed.ListMessages(
                    feed_pb2.ListMessagesRequest(event_id=str(event)), metadata=md
                )
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            calls += 1
            await captured.wait_rpc(calls)
        # The markers were really served, so a leak would have been visible.
        assert set(sensitive["content"]) - {c for c in sensitive["content"] if "sched" in c} <= set(
            seen
        )
        assert len(captured.rpc()) == calls
        shadowed = [d for d in captured.parsed() if d["msg"].startswith("shadow read: v2 hides")]
        assert shadowed and shadowed[0]["message_ids"] and shadowed[0]["event_id"] == str(event)
        assert any(d["msg"] == "unhandled error in RPC" for d in captured.parsed())
        needles = [
            *sensitive["content"],
            *sensitive["phones"],
            *[p for token in (good, *bad.values()) for p in token_parts(token)],
        ]
        logged = [(line, n) for line in captured.lines for n in needles if n in line]
        assert logged == []
        assert len(spans.get_finished_spans()) > calls
        assert leaks(spans.get_finished_spans(), needles) == []


class TestServeLogs:
    async def test_serve_writes_json_lines_with_an_rpc_line(
        self, admin_dsn: str, world: World
    ) -> None:
        """`guestfeed serve` logs JSON lines on stderr, including one 'rpc' line per call."""
        event, user = await _mixed_feed(world)
        env = {
            "GUESTFEED_DATABASE_URL": admin_dsn,
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_LISTEN": "127.0.0.1:0",
            "GUESTFEED_LOG_FORMAT": "json",
            "GUESTFEED_PROMETHEUS_PORT": "",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
        }
        proc = await spawn_server(env)
        trace_id = uuid.uuid4().int
        try:
            async with grpc.aio.insecure_channel(proc.target) as channel:
                resp = await feed_pb2_grpc.GuestFeedServiceStub(channel).ListMessages(
                    feed_pb2.ListMessagesRequest(event_id=str(event)),
                    metadata=[
                        *Client.auth(user),
                        ("traceparent", f"00-{trace_id:032x}-{0x1234:016x}-01"),
                    ],
                )
            deadline = time.monotonic() + 5
            while not any(b'"msg": "rpc"' in line for line in proc.log):
                assert time.monotonic() < deadline, b"".join(proc.log).decode()
                await asyncio.sleep(0.05)
        finally:
            code = await proc.stop()
        assert code == 0, b"".join(proc.log).decode()
        records = [json.loads(line) for line in proc.log if line.strip()]
        assert all(isinstance(r, dict) and set(r) >= BASE_KEYS for r in records)
        assert any(r["msg"].startswith("guestfeed serving on") for r in records)
        (rpc,) = [r for r in records if r["msg"] == "rpc"]
        assert rpc["logger"] == "guestfeed.rpc"
        assert (rpc["rpc_method"], rpc["status"]) == (f"{FEED}/ListMessages", "OK")
        assert rpc["trace_id"] == f"{trace_id:032x}"
        assert rpc["read_model"] == MODEL_NAMES[resp.read_model]
        assert rpc["messages"] == len(resp.messages) > 0
        assert rpc["by_type"] == dict(Counter(TYPE_NAMES[m.message_type] for m in resp.messages))
