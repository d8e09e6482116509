"""CompareReadModels: V1 against V2 per guest, with reasons found in the data."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import asyncpg
import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_server.auth import Role

from .conftest import Client
from .factory import World
from .helpers import MODELS, error_info, read_all
from .rollout_helpers import Own
from .scenarios import EventSpec, build_event, event_specs

R = rollout_pb2
TYPES = {
    feed_pb2.MESSAGE_TYPE_DIRECT: "direct",
    feed_pb2.MESSAGE_TYPE_ANNOUNCEMENT: "announcement",
    feed_pb2.MESSAGE_TYPE_CHANNEL: "channel",
}


def service() -> list[tuple[str, str]]:
    return Client.auth(uuid.uuid4(), Role.SERVICE_ROLE)


async def compare(
    client: Client, event: uuid.UUID, user: uuid.UUID | None = None, **kw: Any
) -> tuple[dict[str, R.GuestComparison], R.ComparisonSummary]:
    """Every guest's comparison by user id, and the summary (which comes last)."""
    guests: dict[str, R.GuestComparison] = {}
    summary = None
    request = R.CompareReadModelsRequest(event_id=str(event), user_id=str(user or ""))
    async for response in client.rollout.CompareReadModels(request, metadata=service(), **kw):
        assert summary is None, "the summary must come last"
        if response.HasField("summary"):
            summary = response.summary
        else:
            guests[response.guest.user_id] = response.guest
    assert summary is not None
    return guests, summary


def reasons(guest: R.GuestComparison) -> dict[str, int]:
    return {h.message_id: h.reason for h in guest.v1_only}


class TestReasons:
    async def test_tags_that_changed_after_delivery(self, client: Client, world: World) -> None:
        """A channel delivered while the guest had the tag, the tag since changed:
        V1-only with TAGS_NO_LONGER_MATCH and the targets and tags in the detail."""
        event = await world.event()
        user, guest = await world.member(event, tags=["vip"])
        chan = await world.channel(event, ["vip"])
        await world.deliver(chan, guest_id=guest, user_id=user)
        await world.pool.execute(
            "UPDATE public.event_guests SET guest_tags = '{family}' WHERE id = $1", guest
        )
        guests, summary = await compare(client, event)
        (hidden,) = guests[str(user)].v1_only
        assert hidden.message_id == str(chan)
        assert hidden.reason == R.V1_ONLY_REASON_TAGS_NO_LONGER_MATCH
        assert hidden.message_type == feed_pb2.MESSAGE_TYPE_CHANNEL
        assert "[vip]" in hidden.detail and "[family]" in hidden.detail
        assert summary.guests_with_v1_only == 1 and summary.v1_only_total == 1

    async def test_channel_without_scheduled_message(self, client: Client, world: World) -> None:
        """A delivered channel message with no scheduled message: V2 fails closed."""
        event = await world.event()
        user, guest = await world.member(event)
        chan = await world.message(event, "channel")
        await world.deliver(chan, guest_id=guest, user_id=user)
        guests, _ = await compare(client, event)
        assert reasons(guests[str(user)]) == {
            str(chan): R.V1_ONLY_REASON_CHANNEL_WITHOUT_SCHEDULED_MESSAGE
        }

    async def test_delivered_to_a_removed_row(self, client: Client, world: World) -> None:
        """Delivered (with the user id) to a guest row since removed, whose tag matched;
        the user's active row does not qualify: GUEST_ROW_REMOVED."""
        event = await world.event()
        user, _ = await world.member(event, tags=["plain"])
        old_row = await world.guest(event, user, tags=["vip"], name="Old row")
        chan = await world.channel(event, ["vip"])
        await world.deliver(chan, guest_id=old_row, user_id=user)
        await world.remove(old_row)
        guests, _ = await compare(client, event)
        (hidden,) = guests[str(user)].v1_only
        assert hidden.reason == R.V1_ONLY_REASON_GUEST_ROW_REMOVED
        assert str(old_row) in hidden.detail

    async def test_counts_and_what_only_v2_adds(self, client: Client, world: World) -> None:
        """Counts: V1 = delivered + own; V2 adds the undelivered announcement and the
        channel the guest's tags meet; common is what both show."""
        event = await world.event()
        user, guest = await world.member(event, tags=["a"])
        for _ in range(2):
            mid = await world.message(event, "announcement")
            await world.deliver(mid, guest_id=guest, user_id=user)
        await world.message(event, "announcement")  # never delivered
        await world.channel(event, ["a"])  # targeted, never delivered
        await world.message(event, "direct", sender=user)  # own
        guests, summary = await compare(client, event)
        g = guests[str(user)]
        assert (g.v1_count, g.v2_count, g.common_count) == (3, 5, 3)
        assert {TYPES[c.message_type]: c.count for c in g.v2_only} == {
            "announcement": 1,
            "channel": 1,
        }
        assert (summary.guests_compared, summary.guests_with_v1_only) == (1, 0)


class TestScope:
    async def test_one_named_guest(self, client: Client, world: World) -> None:
        """user_id compares that guest only."""
        event = await world.event()
        one, _ = await world.member(event)
        await world.member(event)
        guests, summary = await compare(client, event, one)
        assert list(guests) == [str(one)] and summary.guests_compared == 1

    async def test_removed_and_accountless_guests_are_not_compared(
        self, client: Client, world: World
    ) -> None:
        """Only active guests with an account; a host with two rows counts once."""
        event = await world.event()
        host, _ = await world.member(event)
        await world.guest(event, host, role="host")
        _, gone = await world.member(event)
        await world.remove(gone)
        await world.guest(event, None)
        guests, summary = await compare(client, event)
        assert list(guests) == [str(host)] and summary.guests_compared == 1

    @pytest.mark.parametrize(
        ("what", "code", "reason"),
        [
            ("no_event", grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND"),
            ("not_a_guest", grpc.StatusCode.NOT_FOUND, "GUEST_NOT_FOUND"),
            ("bad_id", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UUID"),
            ("guest_caller", grpc.StatusCode.PERMISSION_DENIED, "SERVICE_ROLE_REQUIRED"),
        ],
    )
    async def test_refusals_say_what_to_fix(
        self, client: Client, world: World, what: str, code: grpc.StatusCode, reason: str
    ) -> None:
        """Unknown event or guest: NOT_FOUND; a bad id: INVALID_ARGUMENT; a guest: denied."""
        event = await world.event()
        user, _ = await world.member(event)
        requests = {
            "no_event": (R.CompareReadModelsRequest(event_id=str(uuid.uuid4())), service()),
            "not_a_guest": (
                R.CompareReadModelsRequest(event_id=str(event), user_id=str(uuid.uuid4())),
                service(),
            ),
            "bad_id": (R.CompareReadModelsRequest(event_id="nope"), service()),
            "guest_caller": (R.CompareReadModelsRequest(event_id=str(event)), Client.auth(user)),
        }
        request, metadata = requests[what]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in client.rollout.CompareReadModels(request, metadata=metadata):
                pass
        assert caught.value.code() == code
        info = error_info(caught.value)
        assert info is not None and info.reason == reason


class TestAgreesWithTheFeed:
    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(spec=event_specs)
    async def test_each_guests_sets_equal_what_paging_the_feed_returns(
        self, client: Client, world: World, spec: EventSpec
    ) -> None:
        """For random events, each guest's V1 and V2 sets as the comparison counts them
        equal the feeds ListMessages pages out in each model."""
        world.ordered_ids = True
        event, _ = await build_event(world, spec)
        guests, summary = await compare(client, event)
        assert summary.guests_compared == len(guests) >= 2
        for user, g in guests.items():
            feeds = {
                m: {x.message_id: x for x in await read_all(client, event, uuid.UUID(user), m)}
                for m in MODELS
            }
            v1, v2 = set(feeds["v1"]), set(feeds["v2"])
            assert (g.v1_count, g.v2_count, g.common_count) == (len(v1), len(v2), len(v1 & v2))
            assert {h.message_id for h in g.v1_only} == v1 - v2
            only = Counter(TYPES[feeds["v2"][i].message_type] for i in v2 - v1)
            assert {TYPES[c.message_type]: c.count for c in g.v2_only} == dict(only)


class TestDeadlines:
    async def test_deadline_and_cancellation_stop_the_work_in_postgresql(
        self, own: Own, server_dsn: str
    ) -> None:
        """Blocked behind a lock: the deadline ends the call DEADLINE_EXCEEDED, a cancelled
        call ends too, and neither leaves its query in pg_stat_activity."""
        world = own.world()
        event = await world.event()
        await world.member(event)
        locker = await asyncpg.connect(own.dsn)
        try:
            await locker.execute(
                "BEGIN; LOCK TABLE public.message_deliveries IN ACCESS EXCLUSIVE MODE"
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await compare(own.client, event, timeout=0.5)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            call = own.client.rollout.CompareReadModels(
                R.CompareReadModelsRequest(event_id=str(event)), metadata=service()
            )
            reader = asyncio.ensure_future(call.read())
            await asyncio.sleep(0.3)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            for _ in range(50):
                waiting = await locker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
                if waiting == 0:
                    break
                await asyncio.sleep(0.05)
            assert waiting == 0
        finally:
            await locker.execute("ROLLBACK")
            await locker.close()
