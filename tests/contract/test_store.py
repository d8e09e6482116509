"""The store contract, held at the store level: both read models, one suite.

Each `FeedStore` is called as the use case calls it (`read`, through the
service's own database handle) and must give the oracle's feed: ordered by
(created_at, id) descending, each message once, no leaks across events, tags
or removed guests, the viewer only for an active guest. The same rules are
held over gRPC by the rest of this package and by test_pagination.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from guestfeed_server.domain.budget import Budget
from guestfeed_server.domain.model import Cursor, FeedMessage, ReadModel
from guestfeed_server.storage import Database, FeedStore, V2MessagesStore, make_store
from guestfeed_server.storage.base import START

from ..conftest import test_settings as settings_for
from ..factory import BASE, World
from ..oracle import Expected, feed
from ..scenarios import EventSpec, build_event, event_specs

BUDGET = Budget(10)
MODELS = {"v1": ReadModel.V1, "v2": ReadModel.V2}
both_models = pytest.mark.parametrize("model", list(MODELS))


@pytest.fixture(scope="module")
async def db(admin_dsn: str) -> AsyncIterator[Database]:
    """The service's own database handle (production pool) on the test database."""
    handle = await Database.open(admin_dsn, settings_for())
    yield handle
    await handle.close()


def store(db: Database, model: str) -> FeedStore:
    return make_store(MODELS[model], db)


def as_expected(m: FeedMessage) -> Expected:
    return Expected(
        m.message_id,
        m.message_type.value,
        m.is_own_message,
        m.is_delivery_backed,
        m.delivery_status,
        m.sender_name,
    )


async def pages(
    s: FeedStore, event: uuid.UUID, user: uuid.UUID, size: int
) -> list[list[FeedMessage]]:
    """Every page as the use case walks them: size + 1 asked, size kept, resume below."""
    out: list[list[FeedMessage]] = []
    cursor: Cursor | None = None
    for _ in range(1000):
        read = await s.read(event, user, cursor, size + 1, BUDGET)
        assert read.viewer is not None
        out.append(read.messages[:size])
        if len(read.messages) <= size:
            return out
        cursor = read.messages[size - 1].cursor
    raise AssertionError("the walk did not end")


class TestContract:
    @both_models
    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(spec=event_specs)
    async def test_pages_tile_the_oracle_feed(
        self, db: Database, world: World, model: str, spec: EventSpec
    ) -> None:
        """Whatever the data and page size, pages concatenate to the oracle's feed, field for
        field, each message once, every page but the last full."""
        world.ordered_ids = True
        event, viewer = await build_event(world, spec)
        size = spec.page_size or 50
        walked = await pages(store(db, model), event, viewer, size)
        got = [m for p in walked for m in p]
        assert [as_expected(m) for m in got] == feed(world, event, viewer, model)
        assert len({m.message_id for m in got}) == len(got)
        assert all(len(p) == size for p in walked[:-1])

    @both_models
    async def test_only_active_guests_get_a_viewer(
        self, db: Database, world: World, model: str
    ) -> None:
        """A removed guest, a stranger, a guest of another event: no viewer, no messages."""
        event, other = await world.event(), await world.event()
        member, _ = await world.member(event)
        removed, row = await world.member(event)
        await world.remove(row)
        elsewhere, _ = await world.member(other)
        stranger = await world.user()
        await world.message(event, "announcement")
        s = store(db, model)
        assert (await s.read(event, member, None, 10, BUDGET)).viewer is not None
        for user in (removed, elsewhere, stranger):
            read = await s.read(event, user, None, 10, BUDGET)
            assert (read.viewer, read.messages) == (None, [])

    @both_models
    async def test_the_viewer_is_the_union_of_active_rows(
        self, db: Database, world: World, model: str
    ) -> None:
        """Two active rows: both guest ids, the union of their tags, the first name."""
        event = await world.event()
        user, first = await world.member(event, tags=["a"])
        second = await world.guest(event, user, tags=["b", "a"], name="Second", role="host")
        read = await store(db, model).read(event, user, None, 10, BUDGET)
        assert read.viewer is not None
        assert (set(read.viewer.guest_ids), read.viewer.tags) == ({first, second}, ("a", "b"))


class TestV2Floor:
    async def test_the_floor_never_cuts_a_page_short(self, db: Database, world: World) -> None:
        """Page size 2 over announcements at t+3 and t+2 and an untargeted channel at t+1:
        pages are exactly [[a1, a2], [channel]] (a floor two announcements too high would
        lose the channel at the page boundary)."""
        event = await world.event()
        user, _ = await world.member(event)
        t = BASE + timedelta(days=400)
        channel = await world.channel(event, None, created_at=t + timedelta(seconds=1))
        a2 = await world.message(event, "announcement", created_at=t + timedelta(seconds=2))
        a1 = await world.message(event, "announcement", created_at=t + timedelta(seconds=3))
        walked = await pages(store(db, "v2"), event, user, 2)
        assert [[m.message_id for m in p] for p in walked] == [[a1, a2], [channel]]

    async def test_a_page_probes_deliveries_no_more_than_it_needs(
        self, db: Database, world: World, admin_pool: Any
    ) -> None:
        """Past a run of 300 direct messages to other guests, a v2 page of 2 probes
        message_deliveries only for the rows it reads: the floor stops the direct branch
        at the third announcement (without it, or set too low: 300 probes)."""
        event = await world.event()
        user, _ = await world.member(event)
        other, other_guest = await world.member(event)
        t = BASE + timedelta(days=500)
        rows = [(uuid.uuid4(), t + timedelta(seconds=i)) for i in range(300)]
        await admin_pool.executemany(
            "INSERT INTO public.messages (id, event_id, content, message_type, created_at) "
            "VALUES ($1, $2, 'd', 'direct', $3)",
            [(mid, event, at) for mid, at in rows],
        )
        await admin_pool.executemany(
            "INSERT INTO public.message_deliveries (message_id, guest_id, user_id, sms_status) "
            "VALUES ($1, $2, $3, 'delivered')",
            [(mid, other_guest, other) for mid, _ in rows],
        )
        # As many announcements as the page reads (2 kept + 1 to see a next page).
        for k in (1000, 1001, 1002):
            await world.message(event, "announcement", created_at=t + timedelta(seconds=k))
        at = START
        raw = await admin_pool.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + V2MessagesStore.sql,
            event,
            user,
            at.created_at,
            at.message_id,
            3,
        )
        probes = sum(
            node.get("Actual Loops", 0)
            for node in _nodes(json.loads(raw)[0]["Plan"])
            if node.get("Relation Name") == "message_deliveries"
        )
        # The three rows read need three latest-status probes; the direct
        # branch, stopped by the floor, adds none.
        assert probes <= 3, probes


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *[n for child in node.get("Plans", []) for n in _nodes(child)]]
