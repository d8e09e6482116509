"""PreviewRolloutChange: who a proposed config would move, counted against a Python oracle."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestfeed_server.domain.model import ReadModel
from guestfeed_server.rollout import RolloutConfig, decide

from .factory import World
from .helpers import field_violations
from .rollout_helpers import (
    Own,
    R,
    get_config,
    history,
    pb_config,
    preview,
    rpc_error,
    update,
)


@dataclass
class Arranged:
    own: Own
    world: World
    events: list[uuid.UUID]  # by active signed-up users: 3, 2, 1
    pairs: set[tuple[uuid.UUID, uuid.UUID]]


@pytest.fixture
async def arranged(own: Own) -> Arranged:
    """Three events with 3, 2 and 1 active signed-up users, plus rows preview must skip."""
    world = own.world()
    big, mid, small = [await world.event() for _ in range(3)]
    a, _ = await world.member(big)
    await world.guest(big, a, role="host")  # a second row: still one pair
    await world.member(big)
    shared = await world.user()
    for e in (big, mid):  # one user in two events: two pairs
        await world.guest(e, shared)
    await world.member(mid)
    await world.member(small)
    _, gone_guest = await world.member(small)
    await world.remove(gone_guest)
    await world.guest(small, None, name="No account")
    pairs = {
        (g.event_id, g.user_id) for g in world.guests if g.user_id is not None and not g.removed
    }  # the oracle's pairs: set semantics count a user's two rows in one event once
    assert Counter(e for e, _ in pairs) == {big: 3, mid: 2, small: 1}
    return Arranged(own, world, [big, mid, small], pairs)  # type: ignore[arg-type]  # user_id narrowed above


def impacts(resp: R.PreviewRolloutChangeResponse) -> list[tuple[str, int, int, int]]:
    return [(e.event_id, e.guests_changing, e.guests_to_v2, e.guests_to_v1) for e in resp.events]


class TestPreviewRolloutChange:
    async def test_full_enable_moves_every_active_signed_up_pair(self, arranged: Arranged) -> None:
        """Proposing 100% moves each distinct active (event, user) pair to V2, events by count."""
        c = arranged.own.client
        resp = await preview(c, pb_config(True, 100))
        assert (
            resp.current_revision,
            resp.guests_evaluated,
            resp.guests_changing,
            resp.guests_to_v2,
            resp.guests_to_v1,
            resp.events_changing,
        ) == (1, 6, 6, 6, 0, 3)
        assert impacts(resp) == [
            (str(e), n, n, 0) for e, n in zip(arranged.events, (3, 2, 1), strict=True)
        ]

    async def test_max_events_limits_the_list(self, arranged: Arranged) -> None:
        """max_events 2 lists the two events with most changing guests; totals still count all."""
        resp = await preview(arranged.own.client, pb_config(True, 100), max_events=2)
        assert [e.event_id for e in resp.events] == [str(e) for e in arranged.events[:2]]
        assert (resp.guests_changing, resp.events_changing) == (6, 3)

    async def test_proposing_the_current_config_changes_nobody(self, arranged: Arranged) -> None:
        """A proposal equal to the stored config moves no one, before and after an update."""
        c = arranged.own.client
        for current in (pb_config(False, 0), pb_config(True, 100)):
            stored = await get_config(c)
            if (stored.v2_enabled, stored.v2_percentage) != (
                current.v2_enabled,
                current.v2_percentage,
            ):
                stored = await update(c, stored.revision, current)
            resp = await preview(c, current)
            assert (
                resp.current_revision,
                resp.guests_evaluated,
                resp.guests_changing,
                resp.events_changing,
                list(resp.events),
            ) == (stored.revision, 6, 0, 0, [])

    async def test_preview_writes_nothing(self, arranged: Arranged) -> None:
        """Previews leave the config, its revision and the audit log as they were."""
        c = arranged.own.client
        before = await get_config(c)
        for cfg in (pb_config(True, 100), pb_config(True, 0, {uuid.uuid4(): ReadModel.V2})):
            await preview(c, cfg)
        assert (await get_config(c), await history(c)) == (before, [])

    async def test_negative_max_events_is_invalid_argument(self, arranged: Arranged) -> None:
        """max_events -1 is INVALID_ARGUMENT on max_events."""
        err = await rpc_error(preview(arranged.own.client, pb_config(), max_events=-1))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(err)) == {"max_events"}

    @settings(
        max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(data=st.data())
    async def test_counts_match_a_python_oracle(
        self, arranged: Arranged, data: st.DataObject
    ) -> None:
        """Per-event and total moves equal decide(current) vs decide(proposed) over the pairs."""
        c = arranged.own.client
        users = sorted({u for _, u in arranged.pairs})
        models = st.sampled_from(list(ReadModel))

        def configs() -> st.SearchStrategy[RolloutConfig]:
            return st.builds(
                RolloutConfig,
                v2_enabled=st.booleans(),
                v2_percentage=st.integers(0, 100),
                user_overrides=st.dictionaries(st.sampled_from(users), models, max_size=2),
                event_overrides=st.dictionaries(
                    st.sampled_from(arranged.events), models, max_size=2
                ),
            )

        current, proposed = data.draw(configs()), data.draw(configs())

        def pb(cfg: RolloutConfig) -> R.RolloutConfig:
            return pb_config(
                cfg.v2_enabled, cfg.v2_percentage, cfg.user_overrides, cfg.event_overrides
            )

        stored = await update(c, (await get_config(c)).revision, pb(current))
        resp = await preview(c, pb(proposed))
        to_v2: Counter[uuid.UUID] = Counter()
        to_v1: Counter[uuid.UUID] = Counter()
        for e, u in arranged.pairs:
            was, will = (decide(cfg, e, u).read_model for cfg in (current, proposed))
            if was is not will:
                (to_v2 if will is ReadModel.V2 else to_v1)[e] += 1
        expected = sorted(
            ((str(e), to_v2[e] + to_v1[e], to_v2[e], to_v1[e]) for e in {*to_v2, *to_v1}),
            key=lambda i: (-i[1], i[0]),
        )
        assert (
            resp.current_revision,
            resp.guests_evaluated,
            resp.guests_to_v2,
            resp.guests_to_v1,
            resp.events_changing,
        ) == (stored.revision, 6, to_v2.total(), to_v1.total(), len(expected))
        assert impacts(resp) == expected
