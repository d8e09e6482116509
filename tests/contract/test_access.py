"""Who may read a feed at all, and what never crosses events; reads never write."""

from __future__ import annotations

import uuid

import grpc
import pytest

from guestfeed.v1 import feed_pb2
from guestfeed_server.auth import Role

from ..conftest import Client
from ..factory import World
from ..helpers import MODELS, read_all
from .visibility import (
    assert_denied,
    both_models,
    check,
    stream_all,
)


@both_models
class TestOtherEvents:
    """Nothing from another event leaks into a feed."""

    async def test_other_events_messages_never_show(
        self, client: Client, world: World, model: str
    ) -> None:
        """Event B's messages, deliveries and own messages stay out of event A's feed."""
        event_a = await world.event()
        event_b = await world.event()
        user, guest_a = await world.member(event_a)
        guest_b = await world.guest(event_b, user)
        in_a = await world.message(event_a, "announcement")
        await world.deliver(in_a, guest_id=guest_a, user_id=user)
        ann_b = await world.message(event_b, "announcement")
        dm_b = await world.message(event_b, "direct")
        unscheduled_b = await world.message(event_b, "channel")
        for mid in (ann_b, dm_b, unscheduled_b):
            await world.deliver(mid, guest_id=guest_b, user_id=user)
        open_b = await world.channel(event_b, None)
        own_b = await world.message(event_b, "direct", sender=user)
        await check(client, world, event_a, user, model, [in_a])
        # And event B's feed is B's alone (v1: delivered + own; v2: by the v2 rules).
        want_b = {
            "v1": [own_b, unscheduled_b, dm_b, ann_b],
            "v2": [own_b, open_b, dm_b, ann_b],
        }
        await check(client, world, event_b, user, model, want_b[model])

    async def test_deliveries_to_user_in_other_event_do_not_grant_visibility(
        self, client: Client, world: World, model: str
    ) -> None:
        """A message of event B delivered to a guest of A only is not in A's feed."""
        event_a = await world.event()
        event_b = await world.event()
        user, _ = await world.member(event_a)
        dm_b = await world.message(event_b, "direct")
        await world.deliver(dm_b, user_id=user)
        await check(client, world, event_a, user, model, [])


@both_models
class TestAccess:
    """Only active guests read a feed."""

    async def test_removed_guest_is_denied(self, client: Client, world: World, model: str) -> None:
        """A guest whose only row is removed gets PERMISSION_DENIED."""
        event = await world.event()
        user, guest = await world.member(event)
        await world.message(event, "announcement")
        await world.remove(guest)
        await assert_denied(client, event, user, model)

    async def test_non_guest_is_denied(self, client: Client, world: World, model: str) -> None:
        """A user with no guest row in the event gets PERMISSION_DENIED."""
        event = await world.event()
        await world.member(event)
        stranger = await world.user("Stranger")
        await assert_denied(client, event, stranger, model)

    async def test_guest_of_another_event_is_denied(
        self, client: Client, world: World, model: str
    ) -> None:
        """An active guest of event B reading event A gets PERMISSION_DENIED from both RPCs,
        even with deliveries of A's messages addressed to them."""
        event_a, event_b = await world.event(), await world.event()
        await world.member(event_a)
        user, _ = await world.member(event_b)
        mid = await world.message(event_a, "announcement")
        await world.deliver(mid, user_id=user)
        await assert_denied(client, event_a, user, model)

    async def test_unknown_event_is_denied(self, client: Client, world: World, model: str) -> None:
        """An event that does not exist gets PERMISSION_DENIED (not NOT_FOUND)."""
        user = await world.user()
        await assert_denied(client, uuid.uuid4(), user, model)

    async def test_host_without_guest_row_is_denied(
        self, client: Client, world: World, model: str
    ) -> None:
        """events.host_user_id alone grants nothing: reading needs a guest row."""
        host = await world.user("Just Host")
        event = await world.event(host)
        await assert_denied(client, event, host, model)

    async def test_service_role_does_not_bypass_guest_check(
        self, client: Client, world: World, model: str
    ) -> None:
        """A service_role token for a non-guest is still PERMISSION_DENIED."""
        event = await world.event()
        admin = await world.user("Admin")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(event), read_model=MODELS[model]),
                metadata=client.auth(admin, Role.SERVICE_ROLE),
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_removed_row_plus_active_row_still_reads(
        self, client: Client, world: World, model: str
    ) -> None:
        """A removed row does not block a user who has another active row."""
        event = await world.event()
        user, old_guest = await world.member(event)
        new_guest = await world.guest(event, user)
        await world.remove(old_guest)
        ann = await world.message(event, "announcement")
        await world.deliver(ann, guest_id=new_guest, user_id=user)
        await check(client, world, event, user, model, [ann])

    async def test_hosts_who_are_guests_read(
        self, client: Client, world: World, model: str
    ) -> None:
        """The event's host with a host-role guest row reads, own messages included."""
        host = await world.user("Party Host")
        event = await world.event(host)
        host_row = await world.guest(event, host, role="host")
        own = await world.message(event, "announcement", sender=host)
        dm = await world.message(event, "direct")
        await world.deliver(dm, guest_id=host_row, user_id=host)
        got = await check(client, world, event, host, model, [dm, own])
        assert got[own].is_own_message and got[own].sender_name == "Party Host"


class TestReadsAreReadOnly:
    """Reading a feed never writes message_deliveries."""

    async def test_reads_leave_deliveries_untouched(self, client: Client, world: World) -> None:
        """All delivery rows (every column) are identical before and after many reads."""
        event = await world.event()
        user, guest = await world.member(event, tags=["a"])
        late, late_guest = await world.member(event)
        for kind in ("announcement", "direct", "channel"):
            sid = await world.schedule(event, ["a"]) if kind == "channel" else None
            mid = await world.message(event, kind, scheduled_id=sid)
            await world.deliver(mid, guest_id=guest, user_id=user, status="pending")
            await world.deliver(mid, guest_id=guest, user_id=user, status="sent")
            await world.deliver(mid, guest_id=late_guest, status="failed")
        await world.message(event, "direct", sender=user)
        await world.message(event, "announcement", sender=late)

        snapshot = "SELECT * FROM public.message_deliveries ORDER BY id"
        before = [tuple(r) for r in await world.pool.fetch(snapshot)]
        assert len(before) >= 9
        for model in ("v1", "v2"):
            for reader in (user, late):
                assert await read_all(client, event, reader, model, page_size=1)
                assert await stream_all(client, event, reader, model, page_size=1)
        after = [tuple(r) for r in await world.pool.fetch(snapshot)]
        assert after == before
