"""WatchMessages against a real server and PostgreSQL: what arrives, when, and exactly once."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from guestfeed.v1 import feed_pb2

from .conftest import Client
from .factory import World
from .helpers import MODELS, error_info
from .watch_helpers import Watch, announce, settle, writer


class TestLive:
    async def test_an_announcement_arrives_within_a_second(
        self, client: Client, world: World
    ) -> None:
        """A guest watching from now sees a host's announcement well within a second,
        with its fields, after a first (empty) response that says the watch is live."""
        event = await world.event()
        user, _ = await world.member(event)
        host = await world.user("Hal Host")
        w = await Watch.open(client.feed, event, client.pinning(user), model=MODELS["v2"])
        try:
            assert w.responses and not w.responses[0].messages and w.token
            started = time.monotonic()
            mid = await announce(world, event, sender=host)
            await w.wait_ids([mid], timeout=2)
            assert w.arrival[str(mid)] - started < 1.0
            (m,) = [m for r in w.responses for m in r.messages]
            assert m.sender_name == "Hal Host" and not m.is_own_message
            assert m.message_type == feed_pb2.MESSAGE_TYPE_ANNOUNCEMENT
            assert m.created_at.seconds > 0
            assert w.responses[-1].read_model == feed_pb2.READ_MODEL_V2
        finally:
            await w.close()

    async def test_late_commit_is_delivered_exactly_once(
        self, client: Client, world: World
    ) -> None:
        """A inserts an announcement and stays open 2 s while B inserts and commits
        another; then A commits. Both arrive, once each. A's row is older than B's
        (created_at is the transaction's start), so a `created_at > last seen`
        poll would have skipped it for good; the horizon waits for A instead, which
        is the cost: B arrives only when A ends, both in key order."""
        event = await world.event()
        user, _ = await world.member(event)
        hub = client.app.watch
        assert hub is not None
        w = await Watch.open(client.feed, event, client.pinning(user), model=MODELS["v2"])
        try:
            async with writer(world) as a:
                late = await a.message(event, "announcement")
                async with writer(world) as b:
                    early = await b.message(event, "announcement")
                await asyncio.sleep(2)
                assert w.ids == []
                assert hub.lag_s > 1.5  # held back by A (guestfeed.watch.horizon_lag)
            await w.wait_ids([late, early], timeout=2)
            await settle(client)
            assert w.ids == [str(late), str(early)]
            assert world.messages[late].created_at < world.messages[early].created_at
        finally:
            await w.close()

    async def test_direct_message_arrives_when_its_delivery_commits(
        self, client: Client, world: World
    ) -> None:
        """A direct message committed first is not shown; its delivery to the guest,
        committed a second later, shows it (both models), flagged delivery-backed."""
        event = await world.event()
        user, guest = await world.member(event)
        watches = [
            await Watch.open(client.feed, event, client.pinning(user), model=MODELS[m])
            for m in ("v1", "v2")
        ]
        try:
            async with writer(world) as tx:
                mid = await tx.message(event, "direct")
            await asyncio.sleep(1)
            await settle(client)
            assert all(w.ids == [] for w in watches)
            async with writer(world) as tx:
                await tx.deliver(mid, guest_id=guest, user_id=user, status="pending")
            for w in watches:
                await w.wait_ids([mid], timeout=2)
                (m,) = [m for r in w.responses for m in r.messages]
                assert m.is_delivery_backed and m.delivery_status == "pending"
        finally:
            for w in watches:
                await w.close()

    async def test_what_is_never_delivered(self, client: Client, world: World) -> None:
        """A channel message for a tag the guest lacks, another event's messages, and
        someone else's direct message never arrive; a retry never repeats a message."""
        event = await world.event()
        other_event = await world.event()
        user, guest = await world.member(event, tags=["family"])
        other, other_guest = await world.member(event, tags=["kids"])
        kids = await world.schedule(event, ["kids"])
        family = await world.schedule(event, ["family"])
        w = await Watch.open(client.feed, event, client.pinning(user), model=MODELS["v2"])
        try:
            async with writer(world) as tx:
                hidden = [
                    await tx.message(event, "channel", scheduled_id=kids),
                    await tx.message(other_event, "announcement"),
                    await tx.message(event, "direct"),
                ]
                await tx.deliver(hidden[2], guest_id=other_guest, user_id=other)
                shown = await tx.message(event, "channel", scheduled_id=family)
                mine = await tx.message(event, "direct")
                await tx.deliver(mine, guest_id=guest, user_id=user)
            async with writer(world) as tx:
                await tx.deliver(mine, guest_id=guest, user_id=user)  # an SMS retry
            await w.wait_ids([shown, mine])
            await settle(client)
            assert sorted(w.ids) == sorted([str(shown), str(mine)])
        finally:
            await w.close()

    async def test_own_messages_arrive(self, client: Client, world: World) -> None:
        """The guest's own message arrives in both models, as theirs."""
        event = await world.event()
        user, _ = await world.member(event, full_name="Rita Reader")
        for model in ("v1", "v2"):
            w = await Watch.open(client.feed, event, client.pinning(user), model=MODELS[model])
            try:
                async with writer(world) as tx:
                    mid = await tx.message(event, "direct", sender=user)
                await w.wait_ids([mid])
                (m,) = [m for r in w.responses for m in r.messages]
                assert m.is_own_message and m.delivery_status == "sent"
                assert m.sender_name == "Rita Reader"
            finally:
                await w.close()


class TestResume:
    async def test_watch_from_the_first_pages_watch_token(
        self, client: Client, world: World
    ) -> None:
        """Page 1 of ListMessages (and of StreamMessages) carries a watch_token; later
        pages do not. Watching from it gets what was written after the page, once."""
        event = await world.event()
        user, _ = await world.member(event)
        old = [await announce(world, event) for _ in range(3)]
        page = await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(event_id=str(event), page_size=2, read_model=MODELS["v2"]),
            metadata=client.pinning(user),
        )
        assert page.watch_token and page.next_page_token
        page2 = await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(
                event_id=str(event),
                page_size=2,
                read_model=MODELS["v2"],
                page_token=page.next_page_token,
            ),
            metadata=client.pinning(user),
        )
        assert page2.watch_token == ""
        streamed = [
            r
            async for r in client.feed.StreamMessages(
                feed_pb2.StreamMessagesRequest(
                    event_id=str(event), page_size=1, read_model=MODELS["v2"]
                ),
                metadata=client.pinning(user),
            )
        ]
        assert streamed[0].watch_token and not any(r.watch_token for r in streamed[1:])
        gap = await announce(world, event)  # after the page, before the watch
        w = await Watch.open(
            client.feed, event, client.pinning(user), token=page.watch_token, model=MODELS["v2"]
        )
        try:
            await w.wait_ids([gap])
            after = await announce(world, event)
            await w.wait_ids([after])
            await settle(client)
            # Nothing missed, nothing twice; messages the page already held may come
            # again (the token is a horizon read before the page: clients merge by id).
            assert w.ids[-2:] == [str(gap), str(after)]
            assert len(w.ids) == len(set(w.ids))
            assert set(w.ids) <= {str(m) for m in (*old, gap, after)}
        finally:
            await w.close()

    async def test_resume_mid_stream_after_a_disconnect(self, client: Client, world: World) -> None:
        """Disconnected after some messages, with writes in the gap (a late commit
        among them), a watch resumed from the last token misses and repeats nothing."""
        event = await world.event()
        user, guest = await world.member(event)
        w = await Watch.open(client.feed, event, client.pinning(user), model=MODELS["v1"])
        first = []
        for _ in range(3):
            async with writer(world) as tx:
                mid = await tx.message(event, "announcement")
                await tx.deliver(mid, guest_id=guest, user_id=user)
            first.append(mid)
        await w.wait_ids(first)
        token = w.token
        await w.close()
        gap = []
        async with writer(world) as late:
            gap.append(await late.message(event, "announcement"))
            await late.deliver(gap[-1], guest_id=guest, user_id=user)
            for _ in range(4):
                async with writer(world) as tx:
                    gap.append(await tx.message(event, "announcement"))
                    await tx.deliver(gap[-1], guest_id=guest, user_id=user)
        again = await Watch.open(
            client.feed, event, client.pinning(user), token=token, model=MODELS["v1"]
        )
        try:
            await again.wait_ids(gap)
            await settle(client)
            assert sorted(again.ids) == sorted(map(str, gap))
            assert len(again.ids) == len(set(again.ids))
            assert not set(again.ids) & set(w.ids)
        finally:
            await again.close()

    async def test_a_too_old_token_is_failed_precondition(
        self, admin_dsn: str, world: World
    ) -> None:
        """More messages since the token than GUESTFEED_WATCH_MAX_CATCHUP: the watch
        fails with FAILED_PRECONDITION, WATCH_TOKEN_EXPIRED, telling the client to
        reload with ListMessages."""
        from .conftest import start_client

        c = await start_client(admin_dsn, GUESTFEED_WATCH_MAX_CATCHUP="5")
        try:
            event = await world.event()
            user, _ = await world.member(event)
            w = await Watch.open(c.feed, event, c.pinning(user), model=MODELS["v2"])
            token = w.token
            await w.close()
            async with writer(world) as tx:
                for _ in range(6):
                    await tx.message(event, "announcement")
            await settle(c)
            late = await Watch.open(c.feed, event, c.pinning(user), token=token, model=MODELS["v2"])
            await late.ended.wait()
            assert late.error is not None
            assert late.error.code() == grpc.StatusCode.FAILED_PRECONDITION
            info = error_info(late.error)
            assert info is not None and info.reason == "WATCH_TOKEN_EXPIRED"
            assert "ListMessages" in (late.error.details() or "")
        finally:
            await c.stop()


class TestAccess:
    async def test_removed_guest_is_denied_within_two_seconds(
        self, client: Client, world: World
    ) -> None:
        """Removing the guest mid-watch ends the watch with PERMISSION_DENIED in < 2 s."""
        event = await world.event()
        user, guest = await world.member(event)
        w = await Watch.open(client.feed, event, client.auth(user))
        started = time.monotonic()
        await world.remove(guest)
        async with asyncio.timeout(2):
            await w.ended.wait()
        assert time.monotonic() - started < 2
        assert w.error is not None and w.error.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_not_a_guest_is_denied_at_once(self, client: Client, world: World) -> None:
        """A user who is not a guest of the event gets PERMISSION_DENIED, no response."""
        event = await world.event()
        stranger = await world.user()
        w = await Watch.open(client.feed, event, client.auth(stranger))
        await w.ended.wait()
        assert not w.responses
        assert w.error is not None and w.error.code() == grpc.StatusCode.PERMISSION_DENIED

    @pytest.mark.parametrize("change", ["user", "event", "model", "page_token", "garbage"])
    async def test_a_token_is_bound(self, client: Client, world: World, change: str) -> None:
        """A watch token used by another user, on another event, with another model,
        a page token as a watch token, or a made-up one: INVALID_ARGUMENT."""
        event = await world.event()
        user, _ = await world.member(event)
        other, _ = await world.member(event)
        await announce(world, event)
        w = await Watch.open(client.feed, event, client.pinning(user), model=MODELS["v2"])
        token = w.token
        await w.close()
        who, ev, model = user, event, MODELS["v2"]
        if change == "user":
            who = other
        elif change == "event":
            ev = await world.event()
            await world.guest(ev, user)
        elif change == "model":
            model = MODELS["v1"]
        elif change == "page_token":
            page = await client.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(event), page_size=1),
                metadata=client.auth(user),
            )
            token = page.next_page_token or "x"
        else:
            token = "bm90IGEgdG9rZW4"
        bad = await Watch.open(client.feed, ev, client.pinning(who), token=token, model=model)
        await bad.ended.wait()
        assert bad.error is not None
        assert bad.error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad.error
        assert "resume_token" in (bad.error.details() or "")
