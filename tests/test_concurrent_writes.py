"""Paging while the host app writes: keyset pages never repeat and never skip.

A guest pages through their feed (ListMessages, page by page, following the
tokens, in each read model) while another connection commits bulk sends:
messages and their deliveries in one transaction each, some tied to the
microsecond with rows already there (ids above and below theirs), some
older than the page being read, some newer than everything, and SMS retries
(a second delivery) on messages already in the feed. Each bulk send runs
concurrently with a page request. Whatever the interleaving, every message
that was in the feed before the first page is served exactly once, pages
stay in (created_at, id) descending order, and a new message appears at
most once (or not at all).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestfeed.v1 import feed_pb2

from .conftest import Client
from .factory import Delivery, Message, World
from .helpers import MODELS
from .oracle import feed
from .scenarios import TIMES

# Rows the viewer sees in both models, in one, or in neither.
KINDS = (
    "announcement_delivered",  # both (v1 by its delivery)
    "announcement",  # v2 only
    "direct_to_user",  # both
    "direct_to_guest",  # v2 only (v1 matches deliveries on user_id)
    "own",  # both
    "direct_to_other",  # neither
)
# Instants: the shared ones (ties, two of them a microsecond apart), then one
# older than every existing row and one newer than all of them.
WHEN = (*TIMES, TIMES[0] - timedelta(days=1), TIMES[-1] + timedelta(days=1))
MAX_INITIAL = 30


@dataclass(frozen=True)
class Row:
    """A message to write: what it is, when, and where its id falls among its ties."""

    kind: str
    at: int
    rank: int


@dataclass(frozen=True)
class Batch:
    """One bulk send, committed while the page `after_page` is being read."""

    after_page: int
    rows: tuple[Row, ...]
    # Existing messages (by index) that get one more delivery to the viewer.
    retries: tuple[int, ...]


@dataclass(frozen=True)
class Scenario:
    initial: tuple[Row, ...]
    batches: tuple[Batch, ...]
    page_size: int


def _rows(instants: int, max_size: int) -> st.SearchStrategy[tuple[Row, ...]]:
    row = st.builds(
        Row,
        kind=st.sampled_from(KINDS),
        at=st.integers(0, instants - 1),
        rank=st.integers(0, 4 * (MAX_INITIAL + 1)),
    )
    # A uniform count: plain st.lists favours tiny feeds, and paging needs many rows.
    return st.integers(0, max_size).flatmap(
        lambda n: st.lists(row, min_size=n, max_size=n).map(tuple)
    )


scenarios = st.builds(
    Scenario,
    initial=_rows(len(TIMES), MAX_INITIAL),
    batches=st.lists(
        st.builds(
            Batch,
            after_page=st.integers(0, 12),
            rows=_rows(len(WHEN), 6),
            retries=st.lists(st.integers(0, MAX_INITIAL - 1), max_size=3).map(tuple),
        ),
        min_size=1,
        max_size=4,
    ).map(tuple),
    page_size=st.integers(1, 5),
)


@dataclass
class Event:
    """One event's people, and how its rows are written (ids and all)."""

    world: World
    id: uuid.UUID
    host: uuid.UUID
    viewer: uuid.UUID
    guest: uuid.UUID
    other: uuid.UUID
    other_guest: uuid.UUID
    # Low bits of this event's message ids: unique in the shared database, and
    # the same for every row, so ids order by rank (the drawn data), then by
    # `serial`, never by chance.
    salt: int
    serial: int = 0

    def message_id(self, rank: int) -> uuid.UUID:
        self.serial += 1
        return uuid.UUID(int=(rank << 64) | (self.salt + self.serial))

    def rows(self, rows: tuple[Row, ...], *, initial: bool) -> tuple[list[Message], list[Delivery]]:
        """The messages and deliveries a bulk send writes for `rows`."""
        messages: list[Message] = []
        deliveries: list[Delivery] = []
        for i, row in enumerate(rows):
            at = WHEN[row.at]
            # Existing rows are spaced out; new ones land anywhere between them.
            mid = self.message_id(4 * (i + 1) if initial else row.rank)
            kind = row.kind
            sender = self.viewer if kind == "own" else self.host
            type_ = "announcement" if kind.startswith("announcement") else "direct"
            messages.append(Message(mid, self.id, sender, type_, None, at, f"{kind} {i}"))
            to = {
                "announcement_delivered": (self.viewer, self.guest),
                "direct_to_user": (self.viewer, None),
                "direct_to_guest": (None, self.guest),
                "direct_to_other": (self.other, self.other_guest),
            }.get(kind)
            if to is not None:
                deliveries.append(self.delivery(mid, *to, at))
        return messages, deliveries

    def delivery(
        self, message: uuid.UUID, user: uuid.UUID | None, guest: uuid.UUID | None, at: datetime
    ) -> Delivery:
        return Delivery(uuid.uuid4(), message, guest, user, "delivered", at)


async def commit(
    world: World, pool: asyncpg.Pool, messages: list[Message], deliveries: list[Delivery]
) -> None:
    """Writes a bulk send in one transaction; the oracle learns of it once committed."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO public.messages (id, event_id, sender_user_id, content, message_type, "
            "scheduled_message_id, created_at) "
            "VALUES ($1, $2, $3, $4, $5::public.message_type_enum, $6, $7)",
            [
                (m.id, m.event_id, m.sender, m.content, m.type, m.scheduled_id, m.created_at)
                for m in messages
            ],
        )
        await conn.executemany(
            "INSERT INTO public.message_deliveries "
            "(id, message_id, guest_id, user_id, phone_number, sms_status, created_at) "
            "VALUES ($1, $2, $3, $4, '+15550001111', $5, $6)",
            [
                (d.id, d.message_id, d.guest_id, d.user_id, d.status, d.created_at)
                for d in deliveries
            ],
        )
    world.messages.update((m.id, m) for m in messages)
    world.deliveries.extend(deliveries)


async def new_event(world: World) -> Event:
    host = await world.user("Host")
    event = await world.event(host)
    viewer, guest = await world.member(event)
    other, other_guest = await world.member(event)
    salt = uuid.uuid4().int & ((1 << 62) - 1)
    return Event(world, event, host, viewer, guest, other, other_guest, salt)


def feed_ids(world: World, event: Event, model: str) -> list[str]:
    return [str(e.message_id) for e in feed(world, event.id, event.viewer, model)]


class TestPagingDuringWrites:
    @pytest.mark.parametrize("model", ["v1", "v2"])
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenario=scenarios)
    async def test_pages_never_repeat_or_skip_while_bulk_sends_commit(
        self,
        client: Client,
        world: World,
        admin_pool: asyncpg.Pool,
        model: str,
        scenario: Scenario,
    ) -> None:
        """Every message present before page 1 is served exactly once; every served
        message is in the final feed, in its order, once; full pages carry a token."""
        event = await new_event(world)
        old_messages, old_deliveries = event.rows(scenario.initial, initial=True)
        await commit(world, admin_pool, old_messages, old_deliveries)
        before = feed_ids(world, event, model)

        size = scenario.page_size
        pages_before = max(1, -(-len(before) // size))
        sends: dict[int, list[tuple[list[Message], list[Delivery]]]] = {}
        for batch in scenario.batches:
            messages, deliveries = event.rows(batch.rows, initial=False)
            if old_messages:
                deliveries += [
                    event.delivery(
                        old_messages[i % len(old_messages)].id,
                        event.viewer,
                        None,
                        WHEN[-1],
                    )
                    for i in batch.retries
                ]
            sends.setdefault(batch.after_page % pages_before, []).append((messages, deliveries))
        most = len(old_messages) + sum(len(b.rows) for b in scenario.batches)

        pages: list[feed_pb2.ListMessagesResponse] = []
        token = ""
        while True:
            writes = [commit(world, admin_pool, m, d) for m, d in sends.pop(len(pages), [])]
            page, *_ = await asyncio.gather(
                client.feed.ListMessages(
                    feed_pb2.ListMessagesRequest(
                        event_id=str(event.id),
                        page_size=size,
                        page_token=token,
                        read_model=MODELS[model],
                    ),
                    metadata=Client.pinning(event.viewer),
                ),
                *writes,
            )
            pages.append(page)
            assert page.read_model == MODELS[model]
            token = page.next_page_token
            if not token:
                break
            assert len(pages) <= most + 1, "pagination did not end"
        for messages, deliveries in [s for batch in sends.values() for s in batch]:
            await commit(world, admin_pool, messages, deliveries)  # drawn past the last page

        served = [m.message_id for p in pages for m in p.messages]
        after = feed_ids(world, event, model)
        assert len(served) == len(set(served)), "a message was served twice"
        assert set(before) <= set(served), f"skipped: {set(before) - set(served)}"
        # In the final feed, in its order: pages never went back up past their cursor.
        place = {mid: i for i, mid in enumerate(after)}
        assert all(mid in place for mid in served), "served a message not in the feed"
        positions = [place[mid] for mid in served]
        assert positions == sorted(positions)
        assert all(len(p.messages) == size for p in pages[:-1])
        assert len(pages[-1].messages) <= size
