"""The demo data `make run` serves: a feed in both models and a comparison worth reading."""

from __future__ import annotations

import uuid

import asyncpg

from guestfeed.v1 import rollout_pb2
from guestfeed_server.auth import Role
from guestfeed_server.cli.demo import DEMO_GUEST_ID, EVENT_ID, seed_demo, uid
from guestfeed_server.storage.migrate import migrate

from .conftest import Client, start_client
from .helpers import read_all

R = rollout_pb2


async def seeded(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        first = await seed_demo(conn)
        again = await seed_demo(conn)
    finally:
        await conn.close()
    assert first.seeded and not again.seeded, "seeding twice must leave the data alone"


class TestDemo:
    async def test_demo_guest_reads_a_feed_in_both_models(self, fresh_db: str) -> None:
        """The guest `serve --demo` prints sees announcements in v1 and v2."""
        await seeded(fresh_db)
        client = await start_client(fresh_db)
        try:
            for model in ("v1", "v2"):
                got = await read_all(client, EVENT_ID, DEMO_GUEST_ID, model)
                assert len(got) >= 10, (model, len(got))
        finally:
            await client.stop()

    async def test_compare_explains_the_retagged_guest(self, fresh_db: str) -> None:
        """The demo has one v1-only case: a channel SMS to a guest since retagged."""
        await seeded(fresh_db)
        client = await start_client(fresh_db)
        try:
            request = R.CompareReadModelsRequest(event_id=str(EVENT_ID))
            meta = Client.auth(uuid.uuid4(), Role.SERVICE_ROLE)
            hidden: dict[str, list[R.V1OnlyMessage]] = {}
            async for response in client.rollout.CompareReadModels(request, metadata=meta):
                if response.HasField("guest") and response.guest.v1_only:
                    hidden[response.guest.user_id] = list(response.guest.v1_only)
        finally:
            await client.stop()
        (only,) = hidden[str(uid("user:guest:1"))]
        assert only.reason == R.V1_ONLY_REASON_TAGS_NO_LONGER_MATCH
        assert only.message_id == str(uid(f"msg:{uid('sched:work')}"))
        assert list(hidden) == [str(uid("user:guest:1"))], "guest 4 still carries the tag"
