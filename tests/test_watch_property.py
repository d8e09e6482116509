"""Random interleavings of writer transactions against watchers: exactly the oracle's feed.

Up to three writer transactions are opened, written to (announcements,
channel messages for the guest's tag and for another, direct messages to
the guest by user id or by guest row only, to someone else, the guest's own,
and late deliveries of direct messages already committed), committed or
rolled back, in any order, with pauses that let the hub tick in between.
A V1 and a V2 watcher, both started before the first write, must each end
up with exactly the oracle's feed for their model (tests/oracle.py), every
message once.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Client
from .factory import World
from .helpers import MODELS
from .oracle import feed
from .watch_helpers import Tx, Watch, settle, writer

KINDS = (
    "announcement",
    "channel_mine",
    "channel_other",
    "direct_user",
    "direct_guest_only",
    "direct_other",
    "own",
    "late_delivery",
)
SLOTS = 3


@dataclass(frozen=True)
class Op:
    what: str  # open, write, commit, rollback, pause
    slot: int = 0
    kind: str = ""
    pause_ms: int = 0


ops = st.lists(
    st.one_of(
        st.builds(Op, what=st.just("open"), slot=st.integers(0, SLOTS - 1)),
        st.builds(
            Op,
            what=st.just("write"),
            slot=st.integers(0, SLOTS - 1),
            kind=st.sampled_from(KINDS),
        ),
        st.builds(Op, what=st.sampled_from(["commit", "rollback"]), slot=st.integers(0, 2)),
        st.builds(Op, what=st.just("pause"), pause_ms=st.integers(0, 150)),
    ),
    min_size=1,
    max_size=25,
)


@dataclass
class Scene:
    event: uuid.UUID
    user: uuid.UUID
    guest: uuid.UUID
    other: uuid.UUID
    other_guest: uuid.UUID
    mine: uuid.UUID
    theirs: uuid.UUID


async def _scene(world: World) -> Scene:
    event = await world.event()
    user, guest = await world.member(event, tags=["vip"])
    other, other_guest = await world.member(event, tags=["kids"])
    mine = await world.schedule(event, ["vip"])
    theirs = await world.schedule(event, ["kids"])
    return Scene(event, user, guest, other, other_guest, mine, theirs)


async def _write(tx: Tx, s: Scene, kind: str, world: World) -> None:
    if kind == "announcement":
        await tx.message(s.event, "announcement")
    elif kind in ("channel_mine", "channel_other"):
        sid = s.mine if kind == "channel_mine" else s.theirs
        await tx.message(s.event, "channel", scheduled_id=sid)
    elif kind == "direct_user":
        mid = await tx.message(s.event, "direct")
        await tx.deliver(mid, guest_id=s.guest, user_id=s.user)
    elif kind == "direct_guest_only":
        mid = await tx.message(s.event, "direct")
        await tx.deliver(mid, guest_id=s.guest)
    elif kind == "direct_other":
        mid = await tx.message(s.event, "direct")
        await tx.deliver(mid, guest_id=s.other_guest, user_id=s.other)
    elif kind == "own":
        await tx.message(s.event, "direct", sender=s.user)
    else:  # a delivery (first or a retry) of a committed direct message
        directs = [
            m.id for m in world.messages.values() if m.event_id == s.event and m.type == "direct"
        ]
        if directs:
            await tx.deliver(directs[len(directs) // 2], guest_id=s.guest, user_id=s.user)


class TestInterleavings:
    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(plan=ops)
    @pytest.mark.timeout(600)
    async def test_delivered_set_is_the_oracles(
        self, client: Client, world: World, plan: list[Op]
    ) -> None:
        """Whatever the interleaving: delivered == the oracle's visible set, no repeats."""
        s = await _scene(world)
        watches = {
            m: await Watch.open(client.feed, s.event, client.pinning(s.user), model=MODELS[m])
            for m in ("v1", "v2")
        }
        open_: dict[int, tuple[Tx, object]] = {}
        try:
            for op in plan:
                if op.what == "pause":
                    await asyncio.sleep(op.pause_ms / 1000)
                elif op.what == "open" and op.slot not in open_:
                    cm = writer(world)
                    open_[op.slot] = (await cm.__aenter__(), cm)
                elif op.what == "write" and op.slot in open_:
                    await _write(open_[op.slot][0], s, op.kind, world)
                elif op.what in ("commit", "rollback") and op.slot in open_:
                    tx, cm = open_.pop(op.slot)
                    await (tx.commit() if op.what == "commit" else tx.rollback())
                    await cm.__aexit__(None, None, None)  # type: ignore[attr-defined]
        finally:
            for tx, cm in open_.values():
                await tx.commit()
                await cm.__aexit__(None, None, None)  # type: ignore[attr-defined]
        try:
            for model, w in watches.items():
                want = [str(e.message_id) for e in feed(world, s.event, s.user, model)]
                await w.until(lambda w=w, want=want: set(want) <= set(w.ids), 5)
            await settle(client)
            for model, w in watches.items():
                want = {str(e.message_id) for e in feed(world, s.event, s.user, model)}
                assert w.error is None, w.error
                assert len(w.ids) == len(set(w.ids)), (model, w.ids)
                assert set(w.ids) == want, (model, set(w.ids) ^ want)
        finally:
            for w in watches.values():
                await w.close()
