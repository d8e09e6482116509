"""The server answers a guest's feed end to end."""

from __future__ import annotations

from .conftest import Client
from .factory import World
from .helpers import read_all
from .oracle import feed


class TestSmoke:
    async def test_guest_reads_announcement_in_both_models(
        self, client: Client, world: World
    ) -> None:
        """A guest sees an announcement delivered to them under v1 and v2."""
        event = await world.event()
        user, guest = await world.member(event)
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=guest, user_id=user)
        for model in ("v1", "v2"):
            got = await read_all(client, event, user, model)
            assert [m.message_id for m in got] == [
                str(e.message_id) for e in feed(world, event, user, model)
            ]
            assert len(got) == 1
