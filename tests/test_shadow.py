"""Shadow reads: V1 first pages read from V2 beside them, never in the caller's way."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from guestfeed.v1 import feed_pb2
from guestfeed_server.rollout import RolloutConfig, StaticPolicy
from guestfeed_server.telemetry import Telemetry

from .conftest import Client, start_client
from .factory import World
from .rollout_helpers import Own, get_config, pb_config, update
from .telemetry_helpers import points
from .tracing import Tracing


def shadow_counts(reader: InMemoryMetricReader) -> dict[str, int]:
    return {a["result"]: p.value for a, p in points(reader, "guestfeed.shadow.reads")}


async def eventually_counts(
    reader: InMemoryMetricReader, want: dict[str, int], within_s: float = 5.0
) -> None:
    deadline = time.monotonic() + within_s
    while shadow_counts(reader) != want:
        assert time.monotonic() < deadline, shadow_counts(reader)
        await asyncio.sleep(0.05)


async def first_page(
    client: Client, event: uuid.UUID, user: uuid.UUID
) -> feed_pb2.ListMessagesResponse:
    return await client.feed.ListMessages(
        feed_pb2.ListMessagesRequest(event_id=str(event), page_size=5), metadata=client.auth(user)
    )


@pytest.fixture
async def shadowed(
    admin_dsn: str, tracing: Tracing
) -> AsyncIterator[tuple[Client, InMemoryMetricReader]]:
    """A server whose (fixed) config sends everyone to V1 and shadows every first page."""
    reader = InMemoryMetricReader()
    telemetry = Telemetry.create(tracing.provider, MeterProvider(metric_readers=[reader]))
    c = await start_client(
        admin_dsn,
        telemetry=telemetry,
        rollout=StaticPolicy(RolloutConfig(shadow_sample_rate=1.0)),
    )
    yield c, reader
    await c.stop()


class TestResults:
    async def test_match_v1_only_and_v2_only(
        self, shadowed: tuple[Client, InMemoryMetricReader], world: World
    ) -> None:
        """Three guests: the same feed (match), a channel whose tags moved (v1_only), an
        undelivered announcement (v2_only)."""
        client, reader = shadowed
        event = await world.event()
        same, same_row = await world.member(event)
        moved, moved_row = await world.member(event, tags=["vip"])
        extra, extra_row = await world.member(event)
        ann = await world.message(event, "announcement")
        for user, row in ((same, same_row), (moved, moved_row), (extra, extra_row)):
            await world.deliver(ann, guest_id=row, user_id=user)
        chan = await world.channel(event, ["vip"])
        await world.deliver(chan, guest_id=moved_row, user_id=moved)
        await world.pool.execute(
            "UPDATE public.event_guests SET guest_tags = '{}' WHERE id = $1", moved_row
        )
        for user in (same, moved):
            await first_page(client, event, user)
        await eventually_counts(reader, {"match": 1, "v1_only": 1})
        # The extra announcement reaches only the third guest's V2 view: add it now.
        await world.message(event, "announcement")
        await first_page(client, event, extra)
        await eventually_counts(reader, {"match": 1, "v1_only": 1, "v2_only": 1})

    async def test_a_v1_only_result_leaves_a_span_event_and_ids_in_the_log(
        self,
        shadowed: tuple[Client, InMemoryMetricReader],
        world: World,
        tracing: Tracing,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The shadow span (linked to the request) carries the result; the log line names
        the event and the message ids, never the content."""
        client, reader = shadowed
        tracing.exporter.clear()
        event = await world.event()
        user, row = await world.member(event)
        chan = await world.message(event, "channel", content="secret-content-xyz")
        await world.deliver(chan, guest_id=row, user_id=user)
        with caplog.at_level("WARNING", logger="guestfeed_server.feed.shadow"):
            await first_page(client, event, user)
            await eventually_counts(reader, {"v1_only": 1})
        (line,) = [r for r in caplog.records if "shadow read" in r.getMessage()]
        assert line.event_id == str(event)  # type: ignore[attr-defined]
        assert line.message_ids == [str(chan)]  # type: ignore[attr-defined]
        assert "secret-content-xyz" not in repr(line.__dict__)
        shadow_spans = [
            s for s in tracing.exporter.get_finished_spans() if s.name == "guestfeed.shadow_read"
        ]
        (span,) = shadow_spans
        (event_,) = span.events
        assert event_.attributes is not None and event_.attributes["result"] == "v1_only"
        assert span.links and span.links[0].context.is_valid


class TestNeverInTheWay:
    async def test_responses_do_not_wait_for_a_stuck_shadow_read_and_extra_ones_are_dropped(
        self, shadowed: tuple[Client, InMemoryMetricReader], world: World, admin_dsn: str
    ) -> None:
        """With V2 blocked behind a lock, V1 pages still answer at once; beyond the 4 reads in
        flight, samples are dropped and counted; the stuck ones end as errors."""
        client, reader = shadowed
        event = await world.event()
        user, _ = await world.member(event)
        await world.message(event, "announcement")
        locker = await asyncpg.connect(admin_dsn)
        try:
            await locker.execute(
                "BEGIN; LOCK TABLE public.scheduled_messages IN ACCESS EXCLUSIVE MODE"
            )
            started = time.monotonic()
            for _ in range(6):
                await first_page(client, event, user)
            assert time.monotonic() - started < 2.0  # the V2 reads wait; the pages do not
            await eventually_counts(reader, {"dropped": 2})
        finally:
            await locker.execute("ROLLBACK")
            await locker.close()
        # The four that waited now finish (the lock is gone): they compare.
        await eventually_counts(reader, {"dropped": 2, "v2_only": 4}, within_s=10)


class TestConfiguredInTheRollout:
    async def test_the_rate_is_an_audited_config_change_every_replica_applies(
        self, own: Own
    ) -> None:
        """shadow_sample_rate is stored, audited, and left alone by updates that omit it."""
        c = own.client
        cfg = await update(c, 1, pb_config(enabled=False, shadow_sample_rate=0.25))
        assert cfg.shadow_sample_rate == 0.25
        cfg = await update(c, 2, pb_config(enabled=False, pct=5))
        assert (cfg.shadow_sample_rate, cfg.v2_percentage) == (0.25, 5)
        assert (await get_config(c)).shadow_sample_rate == 0.25
