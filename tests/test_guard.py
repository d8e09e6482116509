"""The auto-rollback guard, on real faults against a real database and real servers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_server.domain.model import ReadModel
from guestfeed_server.domain.signals import PageOutcome
from guestfeed_server.rollout.admin import RolloutAdmin
from guestfeed_server.rollout.guard import Guard
from guestfeed_server.rollout.store import load
from guestfeed_server.storage import Database

from .conftest import Client
from .factory import World
from .rollout_helpers import Own, admin, get_config, history, pb_config, serving, update

R = rollout_pb2
# Fast: a v2 page blocked behind the lock gives up after 0.3 s; the guard looks
# every 0.2 s; config changes arrive by NOTIFY or a 0.3 s re-read.
FAST = {
    "GUESTFEED_QUERY_TIMEOUT_S": "0.3",
    "GUESTFEED_GUARD_INTERVAL_S": "0.2",
    "GUESTFEED_ROLLOUT_REFRESH_S": "0.3",
}


def guard_pb(**kw: object) -> R.GuardConfig:
    settings: dict[str, object] = {
        "window_seconds": 10,
        "min_requests": 5,
        "max_error_share": 0.01,
        "max_avg_latency_ms": 1000,
        "max_p95_latency_ms": 0,
        "act_on_shadow_v1_only": True,
    }
    settings.update(kw)
    return R.GuardConfig(**settings)  # type: ignore[arg-type]


async def guests(world: World, n: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """n events, each with a guest and a delivered announcement: (event, user)."""
    out = []
    for _ in range(n):
        event = await world.event()
        user, row = await world.member(event)
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=row, user_id=user)
        out.append((event, user))
    return out


async def page(c: Client, event: uuid.UUID, user: uuid.UUID, model: int = 0) -> grpc.StatusCode:
    try:
        await c.feed.ListMessages(
            feed_pb2.ListMessagesRequest(event_id=str(event), read_model=model),
            # Naming a model is for service callers; guests get the rollout's.
            metadata=c.pinning(user) if model else c.auth(user),
        )
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@contextlib.asynccontextmanager
async def v2_blocked(dsn: str) -> AsyncIterator[None]:
    """V2 pages read scheduled_messages; an exclusive lock makes them time out (V1 does not)."""
    locker = await asyncpg.connect(dsn)
    try:
        await locker.execute("BEGIN; LOCK TABLE public.scheduled_messages IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        await locker.execute("ROLLBACK")
        await locker.close()


def guard_rows(changes: list[R.RolloutChange]) -> list[R.RolloutChange]:
    return [c for c in changes if c.changed_by.startswith("guard@")]


async def until(predicate: object, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not await predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.1)


@pytest.fixture
async def guarded(own: Own) -> AsyncIterator[Client]:
    """A fast replica on the test's own database."""
    async with serving(own.dsn, **FAST) as c:
        yield c


class TestV2Failing:
    async def test_the_guard_kills_v2_exactly_once_while_v1_keeps_serving(
        self, own: Own, guarded: Client
    ) -> None:
        """V2 at 100%, V2 pages time out behind a lock across three events: the guard turns
        the kill switch on once, with an audit row naming the signal; explicit V1 pages and,
        after the kill, everyone's pages are served throughout."""
        pairs = await guests(own.world(), 3)
        await update(own.client, 1, pb_config(pct=100, guard=guard_pb()))
        killed = False
        async with v2_blocked(own.dsn):
            deadline = time.monotonic() + 20
            while not killed:
                assert time.monotonic() < deadline, "the guard never acted"
                codes = await asyncio.gather(*(page(guarded, e, u) for e, u in pairs))
                assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK}
                v1 = await asyncio.gather(
                    *(page(guarded, e, u, feed_pb2.READ_MODEL_V1) for e, u in pairs)
                )
                assert set(v1) == {grpc.StatusCode.OK}
                killed = not (await get_config(own.client)).v2_enabled
            # After the kill the rollout's answer is V1: served despite the lock.
            await until(lambda: _all_ok(guarded, pairs))
        rows = guard_rows(await history(own.client))
        assert len(rows) == 1
        (row,) = rows
        assert row.reason.startswith("auto-rollback: error_share 1 > 0.01 over 10s (")
        assert row.before.v2_enabled and not row.after.v2_enabled

    async def test_two_replicas_seeing_one_breach_make_one_change(
        self, own: Own, guarded: Client
    ) -> None:
        """Both replicas' guards see V2 fail; the config changes once, by one of them."""
        pairs = await guests(own.world(), 3)
        await update(own.client, 1, pb_config(pct=100, guard=guard_pb()))
        async with serving(own.dsn, **FAST) as second, v2_blocked(own.dsn):
            deadline = time.monotonic() + 20
            while (await get_config(own.client)).v2_enabled:
                assert time.monotonic() < deadline, "no guard acted"
                await asyncio.gather(*(page(c, e, u) for c in (guarded, second) for e, u in pairs))
            # Both keep looking for a while: neither may write a second change.
            await asyncio.sleep(1.0)
        assert len(guard_rows(await history(own.client))) == 1

    async def test_failures_concentrated_in_one_event_force_that_event_only(
        self, own: Own, guarded: Client
    ) -> None:
        """V2 failing for one event's pages only: that event is forced to V1, V2 stays on."""
        pairs = await guests(own.world(), 1)
        await update(own.client, 1, pb_config(pct=100, guard=guard_pb()))
        async with v2_blocked(own.dsn):
            deadline = time.monotonic() + 20
            while not (await get_config(own.client)).event_overrides:
                assert time.monotonic() < deadline, "the guard never acted"
                await asyncio.gather(*(page(guarded, e, u) for e, u in pairs * 3))
        cfg = await get_config(own.client)
        assert cfg.v2_enabled
        assert dict(cfg.event_overrides) == {str(pairs[0][0]): feed_pb2.READ_MODEL_V1}


class TestV1OnlyMessages:
    async def test_a_hidden_message_forces_its_event_to_v1_and_no_other(
        self, own: Own, guarded: Client
    ) -> None:
        """Tags changed after a channel's delivery: the comparison names the reason, a shadow
        read finds it, and the guard forces that event, not the other, to V1."""
        world = own.world()
        event = await world.event()
        user, row = await world.member(event, tags=["vip"])
        chan = await world.channel(event, ["vip"])
        await world.deliver(chan, guest_id=row, user_id=user)
        await world.pool.execute(
            "UPDATE public.event_guests SET guest_tags = '{}' WHERE id = $1", row
        )
        ((other_event, other_user),) = await guests(world, 1)
        await update(
            own.client,
            1,
            pb_config(enabled=True, pct=0, shadow_sample_rate=1.0, guard=guard_pb()),
        )
        found = [
            r.guest
            async for r in own.client.rollout.CompareReadModels(
                R.CompareReadModelsRequest(event_id=str(event)), metadata=admin()
            )
            if r.HasField("guest")
        ]
        assert [h.reason for h in found[0].v1_only] == [R.V1_ONLY_REASON_TAGS_NO_LONGER_MATCH]
        await until(lambda: _refreshed(guarded, 2))
        assert await page(guarded, other_event, other_user) == grpc.StatusCode.OK
        assert await page(guarded, event, user) == grpc.StatusCode.OK
        await until(lambda: _overridden(own.client))
        cfg = await get_config(own.client)
        assert dict(cfg.event_overrides) == {str(event): feed_pb2.READ_MODEL_V1}
        assert cfg.v2_enabled
        (row_,) = guard_rows(await history(own.client))
        assert "shadow_v1_only 1 > 0 over 10s" in row_.reason and str(event) in row_.reason


class TestNoDataNoDecision:
    async def test_silence_and_thin_traffic_decide_nothing(self, own: Own) -> None:
        """No traffic for several windows: no action. 19 failures with 20 needed: no action.
        The 20th failure is enough (so the guard here can act at all)."""
        await update(
            own.client, 1, pb_config(pct=100, guard=guard_pb(window_seconds=60, min_requests=20))
        )
        now = [1000.0]
        db = Database(own.pool)
        admin_ = RolloutAdmin(db, deploy_v2_allowed=True, query_timeout_s=5)
        async with own.pool.acquire() as conn:
            config = await load(conn)
        guard = Guard(admin_, lambda: config, replica="test", interval_s=60, clock=lambda: now[0])
        for _ in range(5):  # five silent windows
            now[0] += 60
            assert await guard.evaluate() == []
        for _ in range(19):  # spread over events: a service-wide breach
            guard.observe_page(PageOutcome(uuid.uuid4(), ReadModel.V2, 300.0, failed=True))
            guard.observe_page(PageOutcome(uuid.uuid4(), ReadModel.V1, 5.0, failed=True))
        assert not guard.status().enough_data
        assert await guard.evaluate() == []
        assert (await get_config(own.client)).v2_enabled
        guard.observe_page(PageOutcome(uuid.uuid4(), ReadModel.V2, 300.0, failed=True))
        assert guard.status().enough_data
        assert len(await guard.evaluate()) == 1
        assert not (await get_config(own.client)).v2_enabled

    async def test_a_paused_guard_watches_but_does_not_act(self, own: Own) -> None:
        """guard_enabled false: the breach shows in the status and nothing is written."""
        await update(own.client, 1, pb_config(pct=100, guard=guard_pb(), guard_enabled=False))
        db = Database(own.pool)
        admin_ = RolloutAdmin(db, deploy_v2_allowed=True, query_timeout_s=5)
        async with own.pool.acquire() as conn:
            config = await load(conn)
        guard = Guard(admin_, lambda: config, replica="test", interval_s=60)
        for i in range(10):
            guard.observe_page(PageOutcome(uuid.uuid4(), ReadModel.V2, 3000.0, failed=i < 5))
        status = guard.status()
        assert any(s.breached for s in status.signals)
        assert await guard.evaluate() == []
        assert (await get_config(own.client)).revision == 2


class TestStatus:
    async def test_status_shows_signals_thresholds_requests_and_the_last_action(
        self, own: Own, guarded: Client
    ) -> None:
        """GetGuardStatus after a kill: the counts, each signal against its threshold, and
        the guard's audit row as the last action."""
        pairs = await guests(own.world(), 3)
        await update(own.client, 1, pb_config(pct=100, guard=guard_pb()))
        async with v2_blocked(own.dsn):
            while (await get_config(own.client)).v2_enabled:
                await asyncio.gather(*(page(guarded, e, u) for e, u in pairs))
        status = await guarded.rollout.GetGuardStatus(R.GetGuardStatusRequest(), metadata=admin())
        assert status.enabled and status.window_seconds == 10 and status.min_requests == 5
        names = {s.name: s for s in status.signals}
        assert {"error_share", "avg_latency_ms", "p95_latency_ms"} <= set(names)
        assert names["error_share"].threshold == pytest.approx(0.01)
        assert status.last_action.changed_by.startswith("guard@")
        assert status.last_action.reason.startswith("auto-rollback: error_share")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await guarded.rollout.GetGuardStatus(
                R.GetGuardStatusRequest(), metadata=guarded.auth(pairs[0][1])
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


class TestPausing:
    async def test_pausing_and_retuning_are_separate_fields(self, own: Own) -> None:
        """guard_enabled alone keeps the thresholds; new thresholds alone keep it paused;
        both unset keep both."""
        cfg = await update(own.client, 1, pb_config(guard=guard_pb()))
        assert cfg.guard_enabled and cfg.guard.window_seconds == 10
        cfg = await update(own.client, 2, pb_config(guard_enabled=False))
        assert not cfg.guard_enabled and cfg.guard.window_seconds == 10
        cfg = await update(own.client, 3, pb_config(guard=guard_pb(window_seconds=30)))
        assert not cfg.guard_enabled and cfg.guard.window_seconds == 30
        cfg = await update(own.client, 4, pb_config(pct=5))
        assert not cfg.guard_enabled and cfg.guard.window_seconds == 30


async def _all_ok(c: Client, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> bool:
    return set(await asyncio.gather(*(page(c, e, u) for e, u in pairs))) == {grpc.StatusCode.OK}


async def _refreshed(c: Client, revision: int) -> bool:
    cfg = await c.rollout.GetRolloutConfig(R.GetRolloutConfigRequest(), metadata=admin())
    return bool(cfg.replica_revision >= revision)


async def _overridden(c: Client) -> bool:
    return bool((await get_config(c)).event_overrides)
