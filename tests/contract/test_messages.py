"""Direct, own and delivered messages under both read models, each exactly once."""

from __future__ import annotations

from ..conftest import Client
from ..factory import World
from .visibility import (
    both_models,
    check,
)


class TestDirectMessages:
    """Direct messages need a delivery to the caller."""

    async def test_v2_counts_user_and_guest_deliveries(self, client: Client, world: World) -> None:
        """v2: delivered by user_id, or by guest_id alone (late sign-up), both show."""
        event = await world.event()
        user, guest = await world.member(event)
        by_user = await world.message(event, "direct")
        await world.deliver(by_user, user_id=user)
        by_guest = await world.message(event, "direct")
        await world.deliver(by_guest, guest_id=guest, user_id=None)
        await world.message(event, "direct")  # no delivery at all
        got = await check(client, world, event, user, "v2", [by_guest, by_user])
        assert all(m.is_delivery_backed for m in got.values())

    async def test_v1_counts_only_user_deliveries(self, client: Client, world: World) -> None:
        """v1: a guest_id-only delivery does not count, a user_id delivery does."""
        event = await world.event()
        user, guest = await world.member(event)
        by_user = await world.message(event, "direct")
        await world.deliver(by_user, user_id=user)
        by_guest = await world.message(event, "direct")
        await world.deliver(by_guest, guest_id=guest, user_id=None)
        await check(client, world, event, user, "v1", [by_user])

    @both_models
    async def test_another_guests_direct_is_invisible(
        self, client: Client, world: World, model: str
    ) -> None:
        """A direct message delivered to someone else is not in the caller's feed."""
        event = await world.event()
        user, _ = await world.member(event)
        other, other_guest = await world.member(event)
        theirs = await world.message(event, "direct")
        await world.deliver(theirs, guest_id=other_guest, user_id=other)
        only_guest_row = await world.message(event, "direct")
        await world.deliver(only_guest_row, guest_id=other_guest)
        await check(client, world, event, user, model, [])
        expected_other = [only_guest_row, theirs] if model == "v2" else [theirs]
        await check(client, world, event, other, model, expected_other)

    async def test_v2_delivery_to_second_guest_row_counts(
        self, client: Client, world: World
    ) -> None:
        """v2: a delivery to any of the caller's active guest rows counts."""
        host = await world.user("Host Too")
        event = await world.event(host)
        await world.guest(event, host, role="host")
        guest_row = await world.guest(event, host)
        dm = await world.message(event, "direct")
        await world.deliver(dm, guest_id=guest_row)
        await check(client, world, event, host, "v2", [dm])

    async def test_v2_delivery_to_removed_row_does_not_count(
        self, client: Client, world: World
    ) -> None:
        """v2: a delivery addressed only to the caller's removed guest row is not theirs."""
        event = await world.event()
        user, _ = await world.member(event)
        old_row = await world.guest(event, user, removed=True)
        dm = await world.message(event, "direct")
        await world.deliver(dm, guest_id=old_row)
        await check(client, world, event, user, "v2", [])


class TestV1AgainstV2:
    """Where the delivery-backed and message-backed models differ."""

    async def test_v1_is_deliveries_plus_own(self, client: Client, world: World) -> None:
        """v1: every type with a user_id delivery, plus own messages, nothing else."""
        event = await world.event()
        user, guest = await world.member(event)
        ann = await world.message(event, "announcement")
        await world.deliver(ann, guest_id=guest, user_id=user)
        ch = await world.channel(event, ["nobody"])
        await world.deliver(ch, guest_id=guest, user_id=user)
        dm = await world.message(event, "direct")
        await world.deliver(dm, user_id=user)
        own = await world.message(event, "direct", sender=user)
        await world.message(event, "announcement")  # not delivered to the user
        await world.channel(event, None)  # not delivered to the user
        await check(client, world, event, user, "v1", [own, dm, ch, ann])

    async def test_undelivered_announcement_is_only_in_v2(
        self, client: Client, world: World
    ) -> None:
        """An announcement with no delivery to the caller is absent in v1, present in v2."""
        event = await world.event()
        user, _ = await world.member(event)
        other, other_guest = await world.member(event)
        ann = await world.message(event, "announcement")
        await world.deliver(ann, guest_id=other_guest, user_id=other)
        await check(client, world, event, user, "v1", [])
        got = await check(client, world, event, user, "v2", [ann])
        assert got[ann].delivery_status == ""

    async def test_v2_channel_follows_tags_not_deliveries(
        self, client: Client, world: World
    ) -> None:
        """A channel delivered to the user but no longer targeting them: v1 shows it, v2 not."""
        event = await world.event()
        user, guest = await world.member(event, tags=["friends"])
        ch = await world.channel(event, ["family"])
        await world.deliver(ch, guest_id=guest, user_id=user)
        await check(client, world, event, user, "v1", [ch])
        await check(client, world, event, user, "v2", [])


@both_models
class TestOwnMessages:
    """The caller's own messages, in both models."""

    async def test_own_messages_are_flagged_exactly(
        self, client: Client, world: World, model: str
    ) -> None:
        """is_own_message is true on the caller's own messages and false on the rest."""
        event = await world.event()
        user, guest = await world.member(event, tags=["x"])
        other, _ = await world.member(event)
        theirs = await world.message(event, "announcement", sender=other)
        await world.deliver(theirs, guest_id=guest, user_id=user)
        own_dm = await world.message(event, "direct", sender=user)
        own_ann = await world.message(event, "announcement", sender=user)
        own_ch = await world.channel(event, ["not-mine"], sender=user)
        got = await check(client, world, event, user, model, [own_ch, own_ann, own_dm, theirs])
        assert {mid for mid, m in got.items() if m.is_own_message} == {own_ch, own_ann, own_dm}

    async def test_own_message_delivered_to_self_appears_once(
        self, client: Client, world: World, model: str
    ) -> None:
        """An own message that also has a delivery to the caller is listed once."""
        event = await world.event()
        user, guest = await world.member(event)
        own = await world.message(event, "announcement", sender=user)
        await world.deliver(own, guest_id=guest, user_id=user, status="delivered")
        got = await check(client, world, event, user, model, [own])
        assert got[own].is_own_message
        assert got[own].delivery_status == "delivered"
        assert got[own].is_delivery_backed is (model == "v1")


class TestNoDuplicates:
    """Each message appears once, however many rows or branches lead to it."""

    @both_models
    async def test_sms_retries_show_message_once(
        self, client: Client, world: World, model: str
    ) -> None:
        """Several delivery rows for one message (retries) yield one feed entry."""
        event = await world.event()
        user, guest = await world.member(event)
        ann = await world.message(event, "announcement")
        dm = await world.message(event, "direct")
        for mid in (ann, dm):
            for status in ("failed", "undelivered", "delivered"):
                await world.deliver(mid, guest_id=guest, user_id=user, status=status)
        await world.deliver(dm, guest_id=guest, status="failed")
        got = await check(client, world, event, user, model, [dm, ann])
        assert got[ann].delivery_status == "delivered"
        assert got[dm].delivery_status == ("failed" if model == "v2" else "delivered")

    async def test_message_in_two_v2_branches_appears_once(
        self, client: Client, world: World
    ) -> None:
        """Own announcement, own direct with a delivery, own untargeted channel: once each."""
        event = await world.event()
        user, guest = await world.member(event)
        own_ann = await world.message(event, "announcement", sender=user)
        own_dm = await world.message(event, "direct", sender=user)
        await world.deliver(own_dm, guest_id=guest, user_id=user)
        await world.deliver(own_dm, guest_id=guest, user_id=user)
        own_ch = await world.channel(event, None, sender=user)
        got = await check(client, world, event, user, "v2", [own_ch, own_dm, own_ann])
        assert got[own_dm].is_delivery_backed and got[own_dm].is_own_message
        assert not got[own_ann].is_delivery_backed
