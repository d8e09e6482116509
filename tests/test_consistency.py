"""The sampled v1/v2 consistency check: the comparison, the sampler on real data, the server."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from guestfeed.v1 import feed_pb2
from guestfeed_server.domain.budget import Budget
from guestfeed_server.domain.model import FeedMessage, MessageType, ReadModel, Viewer
from guestfeed_server.feed.consistency import WINDOW, Comparison, ConsistencySampler, compare
from guestfeed_server.storage import Database, make_store
from guestfeed_server.telemetry import Telemetry

from .conftest import Client
from .factory import BASE, World
from .oracle import feed
from .telemetry_helpers import points, traced_server
from .tracing import shared_tracing


def msg(at: int, ident: int) -> FeedMessage:
    """A feed message at BASE + `at` seconds with id UUID(int=ident)."""
    return FeedMessage(
        message_id=uuid.UUID(int=ident),
        content="",
        created_at=BASE + timedelta(seconds=at),
        delivery_status="",
        sender_name="",
        sender_avatar_url="",
        message_type=MessageType.ANNOUNCEMENT,
        is_own_message=False,
        is_delivery_backed=False,
    )


def newest_first(rows: Iterable[FeedMessage]) -> list[FeedMessage]:
    return sorted(rows, key=lambda m: m.cursor, reverse=True)


def feed_of(*ats: int) -> list[FeedMessage]:
    """Messages at the given seconds; the id is the second, so each is distinct."""
    return newest_first(msg(a, a + 1) for a in ats)


class TestCompare:
    def test_identical_feeds_agree(self) -> None:
        """The same messages on both sides: equal counts, nothing missing or extra."""
        rows = feed_of(5, 4, 3)
        assert compare(rows, list(rows), 10) == Comparison(3, 3, 0, 0)
        assert compare(rows, list(rows), 10).difference == 0

    def test_message_only_v1_shows_is_missing_in_v2(self) -> None:
        """A message in v1 and not v2 is missing_in_v2, and the difference is negative."""
        result = compare(feed_of(5, 4, 3), feed_of(5, 3), 10)
        assert result == Comparison(3, 2, 1, 0)
        assert result.difference == -1

    def test_message_only_v2_shows_is_only_in_v2(self) -> None:
        """Messages v2 adds (undelivered announcements) are only_in_v2, difference positive."""
        result = compare(feed_of(5, 3), feed_of(6, 5, 4, 3), 10)
        assert result == Comparison(2, 4, 0, 2)
        assert result.difference == 2

    def test_full_windows_are_cut_to_the_range_both_cover(self) -> None:
        """Both lists full: only messages at or above the newer of the two floors count."""
        v1 = feed_of(10, 9, 8)  # full, reaches back to 8
        v2 = newest_first([msg(10, 11), msg(9, 100), msg(9, 10)])  # full, reaches back to (9, 10)
        # Without the cut, 8 would look lost; it is merely below v2's window.
        assert compare(v1, v2, 3) == Comparison(2, 3, 0, 1)

    def test_short_list_reaches_the_start_of_history(self) -> None:
        """A list shorter than the window is complete: only the full list's floor cuts."""
        v1 = feed_of(10, 5)  # all of v1's history
        v2 = feed_of(10, 9, 8)  # full window: reaches back to 8
        assert compare(v1, v2, 3) == Comparison(1, 3, 0, 2)
        assert compare(v2, v1, 3) == Comparison(3, 1, 2, 0)

    def test_both_short_compares_everything(self) -> None:
        """Both histories within the window: plain set comparison."""
        assert compare(feed_of(9, 7, 1), feed_of(8, 7), 5) == Comparison(3, 2, 2, 1)

    def test_empty_feeds(self) -> None:
        """Nothing on either side is an agreement of zero messages."""
        assert compare([], [], WINDOW) == Comparison(0, 0, 0, 0)
        assert compare([], feed_of(3, 2), WINDOW) == Comparison(0, 2, 0, 2)

    @settings(max_examples=200, deadline=None)
    @given(
        # Keyed by message id: a message has one timestamp, whichever side shows it.
        messages=st.dictionaries(
            st.integers(1, 10_000),
            st.tuples(st.integers(0, 30), st.sampled_from(["both", "v1", "v2"])),
            max_size=40,
        ),
        window=st.integers(1, 15),
    )
    def test_windows_never_invent_or_hide_differences(
        self, messages: dict[int, tuple[int, str]], window: int
    ) -> None:
        """Over newest-`window` pages of any two histories the comparison is sound and exact."""
        h1 = newest_first(msg(t, i) for i, (t, side) in messages.items() if side != "v2")
        h2 = newest_first(msg(t, i) for i, (t, side) in messages.items() if side != "v1")
        result = compare(h1[:window], h2[:window], window)
        ids1, ids2 = {m.message_id for m in h1}, {m.message_id for m in h2}
        # Never a loss (or a gain) that the whole histories do not have.
        assert result.missing_in_v2 <= len(ids1 - ids2)
        assert result.only_in_v2 <= len(ids2 - ids1)
        # Both counts are over one range: what they share is the same number of messages.
        assert result.v1_count - result.missing_in_v2 == result.v2_count - result.only_in_v2
        assert result.difference == result.v2_count - result.v1_count
        if len(h1) < window and len(h2) < window:
            assert result == Comparison(len(ids1), len(ids2), len(ids1 - ids2), len(ids2 - ids1))
        if ids1 <= ids2:
            assert result.missing_in_v2 == 0 and result.difference >= 0


def sampler_metrics() -> tuple[Telemetry, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return Telemetry.create(
        trace.NoOpTracerProvider(), MeterProvider(metric_readers=[reader])
    ), reader


def total(reader: InMemoryMetricReader, name: str) -> Any:
    found = points(reader, name)
    return sum(p.value for _, p in found) if found else None


async def viewer(pool: asyncpg.Pool, event: uuid.UUID, user: uuid.UUID) -> Viewer:
    store = make_store(ReadModel.V1, Database(pool))
    v = (await store.read(event, user, None, 1, Budget(5))).viewer
    assert v is not None
    return v


def sampler(pool: asyncpg.Pool, t: Telemetry, rate: float = 1.0) -> ConsistencySampler:
    stores = {m: make_store(m, Database(pool)) for m in ReadModel}
    return ConsistencySampler(stores, t.metrics, rate=rate, timeout_s=5)


async def differing_feed(world: World) -> tuple[uuid.UUID, uuid.UUID]:
    """3 messages in both models, 1 only v1 shows, 2 only v2 shows."""
    event = await world.event()
    user, guest = await world.member(event, tags=["vip"])
    for _ in range(3):
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=guest, user_id=user)
    for _ in range(2):  # announcements the SMS pipeline never delivered: v2 only
        await world.message(event, "announcement")
    mid = await world.channel(event, ["other"])  # delivered, but not (or no longer) targeted
    await world.deliver(mid, guest_id=guest, user_id=user)
    return event, user


class TestSampler:
    async def test_check_counts_lost_and_added_messages_and_records_metrics(
        self, world: World, admin_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A v1-only channel is missing_in_v2, undelivered announcements only_in_v2; metrics too."""
        event, user = await differing_feed(world)
        v1 = {e.message_id for e in feed(world, event, user, "v1")}
        v2 = {e.message_id for e in feed(world, event, user, "v2")}
        assert (len(v1 - v2), len(v2 - v1)) == (1, 2)
        t, reader = sampler_metrics()
        with caplog.at_level(logging.INFO, logger="guestfeed_server.feed.consistency"):
            result = await sampler(admin_pool, t).check(await viewer(admin_pool, event, user))
        assert result == Comparison(len(v1), len(v2), 1, 2)
        assert result.difference == 1
        assert total(reader, "guestfeed.consistency.checks") == 1
        assert total(reader, "guestfeed.consistency.missing_in_v2") == 1
        ((_, hist),) = points(reader, "guestfeed.consistency.count_difference")
        assert (hist.count, hist.sum) == (1, 1)
        (line,) = [r for r in caplog.records if r.getMessage() == "consistency check"]
        assert (line.v1_count, line.v2_count, line.missing_in_v2, line.only_in_v2) == (4, 5, 1, 2)  # type: ignore[attr-defined]

    async def test_long_feed_is_compared_over_the_common_window(
        self, world: World, admin_pool: asyncpg.Pool
    ) -> None:
        """With more than WINDOW messages, v1's older tail is not reported missing from v2."""
        event = await world.event()
        user, guest = await world.member(event)
        rows = [(world.tick(), uuid.uuid4()) for _ in range(WINDOW + 15)]
        await admin_pool.executemany(
            "INSERT INTO public.messages (id, event_id, content, message_type, created_at) "
            "VALUES ($1, $2, 'x', 'announcement', $3)",
            [(mid, event, at) for at, mid in rows],
        )
        # The newest 5 were never delivered; the other WINDOW + 10 were.
        await admin_pool.executemany(
            "INSERT INTO public.message_deliveries (message_id, guest_id, user_id, sms_status) "
            "VALUES ($1, $2, $3, 'delivered')",
            [(mid, guest, user) for _, mid in rows[:-5]],
        )
        t, reader = sampler_metrics()
        result = await sampler(admin_pool, t).check(await viewer(admin_pool, event, user))
        assert result == Comparison(WINDOW - 5, WINDOW, 0, 5)
        assert total(reader, "guestfeed.consistency.missing_in_v2") == 0

    async def test_rate_zero_never_checks_and_rate_one_checks_one_at_a_time(
        self, world: World, admin_pool: asyncpg.Pool
    ) -> None:
        """rate 0: no comparison; rate 1: one per first page, never two at once."""
        event, user = await differing_feed(world)
        v = await viewer(admin_pool, event, user)
        t, reader = sampler_metrics()
        off = sampler(admin_pool, t, rate=0.0)
        for _ in range(5):
            off.maybe_check(v)
        on = sampler(admin_pool, t, rate=1.0)
        on.maybe_check(v)
        on.maybe_check(v)  # the first has not even started: skipped
        await eventually(lambda: total(reader, "guestfeed.consistency.checks") == 1)
        await asyncio.sleep(0.05)
        on.maybe_check(v)
        await eventually(lambda: total(reader, "guestfeed.consistency.checks") == 2)
        assert total(reader, "guestfeed.consistency.missing_in_v2") == 2


async def eventually(cond: Any, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class TestServerSampling:
    async def test_first_page_triggers_a_background_check(
        self, admin_dsn: str, world: World
    ) -> None:
        """With GUESTFEED_CONSISTENCY_SAMPLE_RATE=1 a first page is compared, a resumed one not."""
        event, user = await differing_feed(world)
        async with traced_server(
            admin_dsn, shared_tracing(), GUESTFEED_CONSISTENCY_SAMPLE_RATE="1"
        ) as t:
            me = Client.auth(user)
            first = await t.client.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(event), page_size=2), metadata=me
            )
            reader = t.reader
            await eventually(lambda: total(reader, "guestfeed.consistency.checks") == 1)
            assert total(reader, "guestfeed.consistency.missing_in_v2") == 1
            ((_, hist),) = points(reader, "guestfeed.consistency.count_difference")
            assert (hist.count, hist.sum) == (1, 1)
            await t.client.feed.ListMessages(
                feed_pb2.ListMessagesRequest(
                    event_id=str(event), page_size=2, page_token=first.next_page_token
                ),
                metadata=me,
            )
            await asyncio.sleep(0.2)
            assert total(reader, "guestfeed.consistency.checks") == 1
