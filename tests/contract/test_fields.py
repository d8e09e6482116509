"""What each served message says: delivery status, sender, source, and the mapped fields."""

from __future__ import annotations

from datetime import UTC, timedelta

from guestfeed.v1 import feed_pb2

from ..conftest import Client
from ..factory import World
from .visibility import (
    both_models,
    check,
)


class TestDeliveryStatus:
    """delivery_status is the caller's latest delivery, else 'sent' (own) or ''."""

    @both_models
    async def test_latest_retry_wins(self, client: Client, world: World, model: str) -> None:
        """failed then delivered reads delivered; delivered then failed reads failed."""
        event = await world.event()
        user, guest = await world.member(event)
        recovered = await world.message(event, "direct")
        await world.deliver(recovered, guest_id=guest, user_id=user, status="failed")
        await world.deliver(recovered, guest_id=guest, user_id=user, status="delivered")
        regressed = await world.message(event, "direct")
        await world.deliver(regressed, guest_id=guest, user_id=user, status="delivered")
        await world.deliver(regressed, guest_id=guest, user_id=user, status="failed")
        got = await check(client, world, event, user, model, [regressed, recovered])
        assert got[recovered].delivery_status == "delivered"
        assert got[regressed].delivery_status == "failed"

    @both_models
    async def test_latest_is_by_created_at_not_insert_order(
        self, client: Client, world: World, model: str
    ) -> None:
        """A delivery inserted first but created later is the latest one."""
        event = await world.event()
        user, guest = await world.member(event)
        dm = await world.message(event, "direct")
        early, late = world.tick(), world.tick()
        await world.deliver(dm, guest_id=guest, user_id=user, status="delivered", created_at=late)
        await world.deliver(dm, guest_id=guest, user_id=user, status="failed", created_at=early)
        got = await check(client, world, event, user, model, [dm])
        assert got[dm].delivery_status == "delivered"

    @both_models
    async def test_own_message_without_delivery_is_sent(
        self, client: Client, world: World, model: str
    ) -> None:
        """An own message with no delivery to the caller reads 'sent'."""
        event = await world.event()
        user, _ = await world.member(event)
        other, other_guest = await world.member(event)
        own = await world.message(event, "announcement", sender=user)
        await world.deliver(own, guest_id=other_guest, user_id=other, status="failed")
        got = await check(client, world, event, user, model, [own])
        assert got[own].delivery_status == "sent"

    async def test_v2_undelivered_announcement_has_empty_status(
        self, client: Client, world: World
    ) -> None:
        """A v2 announcement with no delivery to the caller has an empty status."""
        event = await world.event()
        user, _ = await world.member(event)
        ann = await world.message(event, "announcement")
        ch = await world.channel(event, None)
        got = await check(client, world, event, user, "v2", [ch, ann])
        assert got[ann].delivery_status == "" and got[ch].delivery_status == ""

    async def test_v2_announcement_reports_its_delivery(self, client: Client, world: World) -> None:
        """A v2 announcement delivered to the caller reports that delivery's status."""
        event = await world.event()
        user, guest = await world.member(event)
        ann = await world.message(event, "announcement")
        await world.deliver(ann, guest_id=guest, status="sent")
        got = await check(client, world, event, user, "v2", [ann])
        assert got[ann].delivery_status == "sent"
        assert not got[ann].is_delivery_backed

    async def test_v2_latest_across_user_and_guest_deliveries(
        self, client: Client, world: World
    ) -> None:
        """v2 picks the latest of the user_id and guest_id deliveries; v1 sees only user_id."""
        event = await world.event()
        user, guest = await world.member(event)
        dm = await world.message(event, "direct")
        await world.deliver(dm, user_id=user, status="failed")
        await world.deliver(dm, guest_id=guest, status="delivered")
        got_v2 = await check(client, world, event, user, "v2", [dm])
        assert got_v2[dm].delivery_status == "delivered"
        got_v1 = await check(client, world, event, user, "v1", [dm])
        assert got_v1[dm].delivery_status == "failed"


@both_models
class TestSenderName:
    """sender_name and sender_avatar_url fall back as the plan says."""

    async def test_sender_full_name_and_avatar(
        self, client: Client, world: World, model: str
    ) -> None:
        """A sender with a name and avatar is shown with both."""
        event = await world.event()
        user, guest = await world.member(event)
        sender = await world.user("Ada Host", avatar_url="https://example.test/ada.png")
        ann = await world.message(event, "announcement", sender=sender)
        await world.deliver(ann, guest_id=guest, user_id=user)
        got = await check(client, world, event, user, model, [ann])
        assert got[ann].sender_name == "Ada Host"
        assert got[ann].sender_avatar_url == "https://example.test/ada.png"

    async def test_nameless_or_missing_sender_is_host(
        self, client: Client, world: World, model: str
    ) -> None:
        """A sender with NULL full_name, or no sender at all, reads 'Host' with no avatar."""
        event = await world.event()
        user, guest = await world.member(event)
        nameless = await world.user(None)
        from_nameless = await world.message(event, "announcement", sender=nameless)
        from_nobody = await world.message(event, "announcement")
        for mid in (from_nameless, from_nobody):
            await world.deliver(mid, guest_id=guest, user_id=user)
        got = await check(client, world, event, user, model, [from_nobody, from_nameless])
        for mid in (from_nameless, from_nobody):
            assert got[mid].sender_name == "Host"
            assert got[mid].sender_avatar_url == ""

    async def test_own_message_falls_back_to_guest_name(
        self, client: Client, world: World, model: str
    ) -> None:
        """Own message, NULL full_name: the caller's guest_name."""
        event = await world.event()
        user = await world.user(None)
        await world.guest(event, user, name="Cousin Vinny")
        own = await world.message(event, "direct", sender=user)
        got = await check(client, world, event, user, model, [own])
        assert got[own].sender_name == "Cousin Vinny"

    async def test_own_message_without_any_name_is_you(
        self, client: Client, world: World, model: str
    ) -> None:
        """Own message, NULL full_name and NULL guest_name: 'You'."""
        event = await world.event()
        user, _ = await world.member(event, full_name=None)
        own = await world.message(event, "announcement", sender=user)
        got = await check(client, world, event, user, model, [own])
        assert got[own].sender_name == "You"

    async def test_own_message_prefers_full_name(
        self, client: Client, world: World, model: str
    ) -> None:
        """Own message with a full_name shows it, not the guest_name."""
        event = await world.event()
        user = await world.user("Real Name")
        await world.guest(event, user, name="List Name")
        own = await world.message(event, "announcement", sender=user)
        got = await check(client, world, event, user, model, [own])
        assert got[own].sender_name == "Real Name"


class TestDeliveryBacked:
    """is_delivery_backed says which path produced the message."""

    async def test_v1_backed_means_a_user_delivery(self, client: Client, world: World) -> None:
        """v1: true with a user_id delivery (own or not), false for an undelivered own message."""
        event = await world.event()
        user, guest = await world.member(event)
        ann = await world.message(event, "announcement")
        await world.deliver(ann, user_id=user)
        own_plain = await world.message(event, "direct", sender=user)
        own_delivered = await world.message(event, "announcement", sender=user)
        await world.deliver(own_delivered, guest_id=guest, user_id=user)
        got = await check(client, world, event, user, "v1", [own_delivered, own_plain, ann])
        assert {m for m, g in got.items() if g.is_delivery_backed} == {ann, own_delivered}

    async def test_v2_backed_means_a_delivered_direct(self, client: Client, world: World) -> None:
        """v2: true only on direct messages with a delivery, never on announcements/channels."""
        event = await world.event()
        user, guest = await world.member(event)
        ann = await world.message(event, "announcement")
        await world.deliver(ann, guest_id=guest, user_id=user)
        ch = await world.channel(event, None)
        await world.deliver(ch, guest_id=guest, user_id=user)
        dm = await world.message(event, "direct")
        await world.deliver(dm, guest_id=guest)
        own_dm = await world.message(event, "direct", sender=user)
        got = await check(client, world, event, user, "v2", [own_dm, dm, ch, ann])
        assert {m for m, g in got.items() if g.is_delivery_backed} == {dm}


@both_models
class TestFieldMapping:
    """Database values reach the proto unchanged."""

    async def test_message_type_content_and_created_at(
        self, client: Client, world: World, model: str
    ) -> None:
        """Each type maps to its enum; content and created_at (to the µs) match the row."""
        event = await world.event()
        user, guest = await world.member(event)
        ids = {}
        for kind, micros in (("direct", 1), ("announcement", 654_321), ("channel", 999_999)):
            at = world.tick() + timedelta(microseconds=micros)
            sid = await world.schedule(event, None) if kind == "channel" else None
            mid = await world.message(
                event, kind, scheduled_id=sid, created_at=at, content=f"hello {kind} ✓"
            )
            await world.deliver(mid, guest_id=guest, user_id=user)
            ids[kind] = mid
        got = await check(
            client, world, event, user, model, [ids["channel"], ids["announcement"], ids["direct"]]
        )
        want_types = {
            "direct": feed_pb2.MESSAGE_TYPE_DIRECT,
            "announcement": feed_pb2.MESSAGE_TYPE_ANNOUNCEMENT,
            "channel": feed_pb2.MESSAGE_TYPE_CHANNEL,
        }
        for kind, mid in ids.items():
            row = await world.pool.fetchrow(
                "SELECT content, created_at FROM public.messages WHERE id = $1", mid
            )
            msg = got[mid]
            assert msg.message_type == want_types[kind]
            assert msg.content == row["content"] == f"hello {kind} ✓"
            assert msg.created_at.ToDatetime(tzinfo=UTC) == row["created_at"]
            assert msg.created_at.nanos == row["created_at"].microsecond * 1000
            assert msg.created_at.seconds == int(row["created_at"].timestamp())
