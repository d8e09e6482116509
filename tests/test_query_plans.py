"""Every page query walks indexes: no sequential scan of messages or deliveries.

A plan check on a generated event large enough that PostgreSQL would rather
scan than probe if the right index were missing (thousands of messages, a
hundred thousand delivery rows). It asserts the plan's shape, never a time.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from guestfeed_server.domain.budget import Budget
from guestfeed_server.domain.model import Cursor
from guestfeed_server.storage import Database, V1DeliveriesStore, V2MessagesStore
from guestfeed_server.storage.base import START
from guestfeed_server.storage.migrate import migrate

from .conftest import scratch_database

WATCHED = {"messages", "message_deliveries"}

# One event: 120 guests (tags from a small set), 6,000 messages in bulk sends
# of 20 sharing a timestamp, half announcements delivered to every guest,
# channels over 200 scheduled messages, directs to one guest each, some own.
DATASET_SQL = """
INSERT INTO public.users (id, full_name)
SELECT md5('u' || i)::uuid, 'User ' || i FROM generate_series(0, 120) i;
INSERT INTO public.events (id, title, host_user_id) VALUES ($1, 'plan check', md5('u0')::uuid);
INSERT INTO public.event_guests (id, event_id, user_id, guest_name, guest_tags)
SELECT md5('g' || i)::uuid, $1, md5('u' || i)::uuid, 'Guest ' || i,
       (ARRAY[ARRAY['a','b'], ARRAY['c','a'], ARRAY['d','e'], ARRAY['f','g']])[1 + i % 4][1:1 + i % 2]
  FROM generate_series(1, 120) i;
INSERT INTO public.scheduled_messages (id, event_id, content, message_type, target_guest_tags, send_at)
SELECT md5('s' || i)::uuid, $1, 's', 'channel',
       (ARRAY[NULL, '{}', '{a}', '{b,c}', '{e}'])[1 + i % 5]::text[], now()
  FROM generate_series(0, 199) i;
INSERT INTO public.messages (id, event_id, sender_user_id, content, message_type, scheduled_message_id, created_at)
SELECT md5('m' || i)::uuid, $1,
       CASE WHEN i % 10 = 9 THEN md5('u' || (1 + i % 120))::uuid ELSE md5('u0')::uuid END,
       'message ' || i,
       (CASE WHEN i % 10 < 5 THEN 'announcement' WHEN i % 10 < 8 THEN 'channel' ELSE 'direct' END)::public.message_type_enum,
       CASE WHEN i % 10 BETWEEN 5 AND 7 THEN md5('s' || (i % 200))::uuid END,
       timestamptz '2026-01-01' + ((i / 20) * interval '1 minute')
  FROM generate_series(0, 5999) i;
INSERT INTO public.message_deliveries (message_id, guest_id, user_id, sms_status, created_at)
SELECT m.id, g.id, g.user_id, 'delivered', m.created_at
  FROM public.messages m JOIN public.event_guests g ON g.event_id = m.event_id
 WHERE m.event_id = $1 AND m.message_type = 'announcement';
INSERT INTO public.message_deliveries (message_id, guest_id, user_id, sms_status, created_at)
SELECT m.id, md5('g' || (1 + (hashtext(m.id::text) & 127) % 120))::uuid,
       md5('u' || (1 + (hashtext(m.id::text) & 127) % 120))::uuid, 'delivered', m.created_at
  FROM public.messages m WHERE m.event_id = $1 AND m.message_type = 'direct';
"""


@dataclass
class Dataset:
    conn: asyncpg.Connection
    dsn: str
    event_id: uuid.UUID
    viewers: list[uuid.UUID]


@pytest.fixture(scope="module")
async def dataset(server_dsn: str) -> AsyncIterator[Dataset]:
    """The generated event on a scratch database, migrated and analyzed."""
    async with scratch_database(server_dsn, "guestfeed_plans") as (_, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            event = uuid.uuid4()
            for statement in DATASET_SQL.strip().split(";\n"):
                if "$1" in statement:
                    await conn.execute(statement, event)
                else:
                    await conn.execute(statement)
            await conn.execute("ANALYZE")
            viewers = [
                r["user_id"]
                for r in await conn.fetch(
                    "SELECT user_id FROM public.event_guests WHERE event_id = $1 "
                    "ORDER BY id LIMIT 4",
                    event,
                )
            ]
            yield Dataset(conn, dsn, event, viewers)
        finally:
            await conn.close()


def _scans(node: dict[str, Any]) -> Iterator[tuple[str, str]]:
    relation = node.get("Relation Name")
    if relation:
        yield node["Node Type"], relation
    for child in node.get("Plans", []):
        yield from _scans(child)


async def _plan(conn: asyncpg.Connection, sql: str, *args: object) -> list[tuple[str, str]]:
    raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    return list(_scans(json.loads(raw)[0]["Plan"]))


STORES = [V1DeliveriesStore, V2MessagesStore]


class TestPagePlans:
    @pytest.mark.parametrize("store", STORES, ids=lambda s: s.__name__)
    @pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
    async def test_first_and_deep_pages_never_scan_big_tables(
        self, dataset: Dataset, store: Any, plan_mode: str
    ) -> None:
        """First and 20th pages, custom and generic plans: index scans only on
        messages and message_deliveries."""
        conn = dataset.conn
        await conn.execute(f"SET plan_cache_mode = {plan_mode}")
        try:
            for viewer in dataset.viewers:
                # A deep cursor: the 20th page of 50 starts about 1000 rows down.
                row = await conn.fetchrow(
                    "SELECT created_at, id FROM public.messages WHERE event_id = $1 "
                    "ORDER BY created_at DESC, id DESC OFFSET 1000 LIMIT 1",
                    dataset.event_id,
                )
                assert row is not None
                for cursor in (START, Cursor(row["created_at"], row["id"])):
                    scans = await _plan(
                        conn,
                        store.sql,
                        dataset.event_id,
                        viewer,
                        cursor.created_at,
                        cursor.message_id,
                        51,
                    )
                    watched = [(n, r) for n, r in scans if r in WATCHED]
                    assert watched, "the plan reads neither table: the check would be vacuous"
                    seq = [(n, r) for n, r in watched if n == "Seq Scan"]
                    assert not seq, f"{store.__name__} {plan_mode}: {seq} in {scans}"
        finally:
            await conn.execute("RESET plan_cache_mode")

    async def test_pages_return_rows_on_this_dataset(self, dataset: Dataset) -> None:
        """The plans above are of queries that really return full pages here."""
        pool = await asyncpg.create_pool(dataset.dsn, min_size=1, max_size=1)
        assert pool is not None
        try:
            for store in STORES:
                read = await store(Database(pool)).read(
                    dataset.event_id, dataset.viewers[0], None, 51, Budget(10)
                )
                assert read.viewer is not None
                assert len(read.messages) == 51
        finally:
            await pool.close()
