"""Who sees which message, under both read models.

Every read is checked twice: the server's feed must equal `oracle.feed`
field for field, and the oracle must equal an expectation written by hand
here, so a mistake in the oracle cannot hide a mistake in the SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, timedelta

import grpc
import pytest

from guestfeed.v1 import feed_pb2
from guestfeed_server.auth import Role

from .conftest import Client, start_client
from .factory import World
from .helpers import MODELS, error_info, read_all
from .oracle import Expected, feed
from .pgbouncer import MISSING, PGBOUNCER, running_pgbouncer

TYPE_NAMES = {
    feed_pb2.MESSAGE_TYPE_DIRECT: "direct",
    feed_pb2.MESSAGE_TYPE_ANNOUNCEMENT: "announcement",
    feed_pb2.MESSAGE_TYPE_CHANNEL: "channel",
}

both_models = pytest.mark.parametrize("model", ["v1", "v2"])


@pytest.fixture(scope="module", params=["direct", "pgbouncer-session", "pgbouncer-transaction"])
async def client(
    request: pytest.FixtureRequest, client: Client, server_dsn: str, admin_dsn: str
) -> AsyncIterator[Client]:
    """The whole suite runs straight against PostgreSQL and through a real PgBouncer in
    each pool mode (skipped where pgbouncer is not installed)."""
    if request.param == "direct":
        yield client
        return
    if PGBOUNCER is None:
        pytest.skip(MISSING)
    mode = request.param.removeprefix("pgbouncer-")
    with running_pgbouncer(server_dsn, mode, server_pool=3 if mode == "transaction" else 40) as b:
        pooled = await start_client(b.dsn(admin_dsn), GUESTFEED_DB_POOL_MODE=mode)
        try:
            yield pooled
        finally:
            await pooled.stop()


def as_expected(m: feed_pb2.GuestMessage) -> Expected:
    """The oracle's view of a served message."""
    return Expected(
        message_id=uuid.UUID(m.message_id),
        type=TYPE_NAMES[m.message_type],
        is_own=m.is_own_message,
        is_delivery_backed=m.is_delivery_backed,
        delivery_status=m.delivery_status,
        sender_name=m.sender_name,
    )


async def check(
    client: Client,
    world: World,
    event: uuid.UUID,
    user: uuid.UUID,
    model: str,
    expected: list[uuid.UUID],
) -> dict[uuid.UUID, feed_pb2.GuestMessage]:
    """Asserts server == oracle (all fields) and oracle == `expected` (ids, newest first)."""
    got = await read_all(client, event, user, model)
    oracle = feed(world, event, user, model)
    assert [as_expected(m) for m in got] == oracle
    assert [e.message_id for e in oracle] == expected
    assert len({m.message_id for m in got}) == len(got)
    return {uuid.UUID(m.message_id): m for m in got}


async def stream_all(
    client: Client, event: uuid.UUID, user: uuid.UUID, model: str, page_size: int = 2
) -> list[feed_pb2.GuestMessage]:
    """The whole feed through StreamMessages."""
    call = client.feed.StreamMessages(
        feed_pb2.StreamMessagesRequest(
            event_id=str(event), page_size=page_size, read_model=MODELS[model]
        ),
        metadata=client.auth(user),
    )
    return [m async for resp in call for m in resp.messages]


async def assert_denied(client: Client, event: uuid.UUID, user: uuid.UUID, model: str) -> None:
    """Both feed RPCs answer PERMISSION_DENIED with an ErrorInfo."""
    with pytest.raises(grpc.aio.AioRpcError) as listed:
        await read_all(client, event, user, model)
    assert listed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(listed.value)
    assert info is not None and info.reason
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await stream_all(client, event, user, model)
    assert streamed.value.code() == grpc.StatusCode.PERMISSION_DENIED


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
