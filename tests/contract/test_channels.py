"""Who sees a channel message: v2 by its scheduled message's target tags, v1 by deliveries."""

from __future__ import annotations

from ..conftest import Client
from ..factory import World
from .visibility import (
    check,
)


class TestChannelTargetingV2:
    """v2 shows a channel message to the guests its scheduled message targets."""

    async def test_untargeted_channels_reach_every_guest(
        self, client: Client, world: World
    ) -> None:
        """NULL and '{}' target tags both mean every guest, with or without tags."""
        event = await world.event()
        tagless, _ = await world.member(event)
        tagged, _ = await world.member(event, tags=["family"])
        null_tags = await world.channel(event, None)
        empty_tags = await world.channel(event, [])
        for user in (tagless, tagged):
            await check(client, world, event, user, "v2", [empty_tags, null_tags])

    async def test_one_tag_channel_reaches_only_that_tag(
        self, client: Client, world: World
    ) -> None:
        """A channel targeting one tag is shown to its holders and hidden from others."""
        event = await world.event()
        family, _ = await world.member(event, tags=["family"])
        friend, _ = await world.member(event, tags=["friends"])
        tagless, _ = await world.member(event)
        ch = await world.channel(event, ["family"])
        await check(client, world, event, family, "v2", [ch])
        await check(client, world, event, friend, "v2", [])
        await check(client, world, event, tagless, "v2", [])

    async def test_several_tags_match_any(self, client: Client, world: World) -> None:
        """A channel targeting several tags reaches a guest holding any one of them."""
        event = await world.event()
        second, _ = await world.member(event, tags=["friends"])
        first, _ = await world.member(event, tags=["family"])
        neither, _ = await world.member(event, tags=["work"])
        ch = await world.channel(event, ["family", "friends"])
        await check(client, world, event, second, "v2", [ch])
        await check(client, world, event, first, "v2", [ch])
        await check(client, world, event, neither, "v2", [])

    async def test_guest_with_several_tags_sees_each_matching_channel(
        self, client: Client, world: World
    ) -> None:
        """A guest with tags a and b sees channels for a, for b and for b-or-z, not for c."""
        event = await world.event()
        user, _ = await world.member(event, tags=["a", "b"])
        for_a = await world.channel(event, ["a"])
        for_b = await world.channel(event, ["b"])
        await world.channel(event, ["c"])
        for_bz = await world.channel(event, ["z", "b"])
        await check(client, world, event, user, "v2", [for_bz, for_b, for_a])

    async def test_two_guest_rows_give_the_union_of_tags(
        self, client: Client, world: World
    ) -> None:
        """A host who is also a guest gets the tags of both of their active rows."""
        host = await world.user("Hosting Guest")
        event = await world.event(host)
        await world.guest(event, host, tags=["hosts"], role="host")
        await world.guest(event, host, tags=["family"])
        for_hosts = await world.channel(event, ["hosts"])
        for_family = await world.channel(event, ["family"])
        await world.channel(event, ["friends"])
        await check(client, world, event, host, "v2", [for_family, for_hosts])

    async def test_removed_row_tags_do_not_count(self, client: Client, world: World) -> None:
        """Only active guest rows contribute tags; a removed row's tags are gone."""
        event = await world.event()
        user, _ = await world.member(event, tags=["family"])
        await world.guest(event, user, tags=["vip"], removed=True)
        for_family = await world.channel(event, ["family"])
        await world.channel(event, ["vip"])
        await check(client, world, event, user, "v2", [for_family])


class TestChannelJoinsItsOwnScheduledMessage:
    """The plan joined scheduled messages by event; the audience is the message's own."""

    async def test_only_the_targeted_channel_is_shown_once(
        self, client: Client, world: World
    ) -> None:
        """Not targeted by A but by B (and an untargeted schedule exists): only B, once."""
        event = await world.event()
        user, _ = await world.member(event, tags=["b"])
        # Under a join by event these would make every channel visible, B several times.
        await world.schedule(event, None)
        await world.schedule(event, ["b"])
        chan_a = await world.channel(event, ["a"])
        chan_b = await world.channel(event, ["b"])
        got = await check(client, world, event, user, "v2", [chan_b])
        assert chan_a not in got

    async def test_each_channel_checked_against_its_own_audience(
        self, client: Client, world: World
    ) -> None:
        """Two channels, two audiences: each guest sees exactly the one for them."""
        event = await world.event()
        user_a, _ = await world.member(event, tags=["a"])
        user_b, _ = await world.member(event, tags=["b"])
        chan_a = await world.channel(event, ["a"])
        chan_b = await world.channel(event, ["b"])
        await check(client, world, event, user_a, "v2", [chan_a])
        await check(client, world, event, user_b, "v2", [chan_b])

    async def test_scheduled_message_of_another_event_is_not_an_audience(
        self, client: Client, world: World
    ) -> None:
        """A channel message pointing at another event's (untargeted) schedule is hidden."""
        event = await world.event()
        other_event = await world.event()
        user, _ = await world.member(event)
        foreign = await world.schedule(other_event, None)
        await world.message(event, "channel", scheduled_id=foreign)
        local = await world.channel(event, None)
        await check(client, world, event, user, "v2", [local])

    async def test_channel_without_scheduled_message_is_hidden_in_v2(
        self, client: Client, world: World
    ) -> None:
        """No scheduled message, no known audience: v2 fails closed."""
        event = await world.event()
        user, _ = await world.member(event)
        await world.message(event, "channel")
        await check(client, world, event, user, "v2", [])

    async def test_channel_without_scheduled_message_shows_in_v1_when_delivered(
        self, client: Client, world: World
    ) -> None:
        """v1 only asks for a delivery, so an unscheduled channel delivered to the user shows."""
        event = await world.event()
        user, guest = await world.member(event)
        ch = await world.message(event, "channel")
        await world.deliver(ch, guest_id=guest, user_id=user)
        await check(client, world, event, user, "v1", [ch])
        await check(client, world, event, user, "v2", [])
