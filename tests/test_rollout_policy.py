"""The rollout's precedence (`decide`, `StaticPolicy`) and `RolloutConfig`, without a server."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestfeed_server.domain.errors import InvalidArgument
from guestfeed_server.domain.model import ReadModel
from guestfeed_server.rollout import (
    HashVersion,
    Reason,
    RolloutConfig,
    StaticPolicy,
    decide,
)
from guestfeed_server.rollout.bucketing import bucket

V1, V2 = ReadModel.V1, ReadModel.V2
EVENT = uuid.UUID("0b7e2d1c-6a1f-4f43-9d52-3f0a9e5c1d20")
USER = uuid.UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")

models = st.sampled_from([V1, V2])
override_maps = st.dictionaries(st.uuids(), models, max_size=4)


def _config(**kw: object) -> RolloutConfig:
    """An enabled config at revision 7 unless told otherwise."""
    base: dict[str, object] = {"v2_enabled": True, "revision": 7}
    base.update(kw)
    return RolloutConfig(**base)  # type: ignore[arg-type]


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


class TestPrecedence:
    def test_deploy_kill_switch_beats_everything(self) -> None:
        """deploy_v2_allowed=False: V1/DEPLOY_KILL_SWITCH over 100%, overrides and fail-safe."""
        cfg = _config(v2_percentage=100, user_overrides={USER: V2}, event_overrides={EVENT: V2})
        answers = [
            decide(cfg, EVENT, USER, deploy_v2_allowed=False),
            decide(cfg, EVENT, USER, deploy_v2_allowed=False, fail_safe=True),
            StaticPolicy(cfg, deploy_v2_allowed=False).decide(EVENT, USER),
        ]
        for d in answers:
            assert (d.read_model, d.reason, d.config_revision) == (V1, Reason.DEPLOY_KILL_SWITCH, 7)
            assert d.bucket == bucket(str(EVENT), str(USER))

    def test_stored_kill_switch_beats_overrides_and_full_percentage(self) -> None:
        """v2_enabled=false gives V1/KILL_SWITCH even with V2 overrides for the pair at 100%."""
        cfg = _config(
            v2_enabled=False,
            v2_percentage=100,
            user_overrides={USER: V2},
            event_overrides={EVENT: V2},
        )
        for d in (decide(cfg, EVENT, USER), StaticPolicy(cfg).decide(EVENT, USER)):
            assert (d.read_model, d.reason, d.config_revision) == (V1, Reason.KILL_SWITCH, 7)

    @pytest.mark.parametrize(("user_model", "event_model", "pct"), [(V1, V2, 100), (V2, V1, 0)])
    def test_user_override_beats_event_override(
        self, user_model: ReadModel, event_model: ReadModel, pct: int
    ) -> None:
        """A user override wins over a contrary event override and the percentage."""
        cfg = _config(
            v2_percentage=pct,
            user_overrides={USER: user_model},
            event_overrides={EVENT: event_model},
        )
        d = decide(cfg, EVENT, USER)
        assert (d.read_model, d.reason, d.config_revision) == (user_model, Reason.USER_OVERRIDE, 7)

    def test_user_override_applies_to_that_user_only(self) -> None:
        """Another user of the same event falls through to the event override."""
        cfg = _config(user_overrides={USER: V1}, event_overrides={EVENT: V2})
        d = decide(cfg, EVENT, uuid.uuid4())
        assert (d.read_model, d.reason) == (V2, Reason.EVENT_OVERRIDE)

    @pytest.mark.parametrize(("forced", "pct"), [(V1, 100), (V2, 0)])
    def test_event_override_beats_percentage(self, forced: ReadModel, pct: int) -> None:
        """An event override forces V1 at 100% and V2 at 0%."""
        cfg = _config(v2_percentage=pct, event_overrides={EVENT: forced})
        d = decide(cfg, EVENT, USER)
        assert (d.read_model, d.reason, d.config_revision) == (forced, Reason.EVENT_OVERRIDE, 7)

    def test_event_override_applies_to_that_event_only(self) -> None:
        """A pair in another event is decided by the percentage."""
        cfg = _config(v2_percentage=100, event_overrides={EVENT: V1})
        d = decide(cfg, uuid.uuid4(), USER)
        assert (d.read_model, d.reason) == (V2, Reason.PERCENTAGE)

    @settings(max_examples=25, deadline=None)
    @given(event=st.uuids(), user=st.uuids(), pct=st.integers(0, 100), rev=st.integers(1, 10**12))
    def test_percentage_gives_v2_iff_bucket_below_it(
        self, event: uuid.UUID, user: uuid.UUID, pct: int, rev: int
    ) -> None:
        """Without overrides a pair gets V2 exactly when its bucket < v2_percentage."""
        b = bucket(str(event), str(user))
        d = decide(_config(v2_percentage=pct, revision=rev), event, user)
        assert (d.read_model, d.bucket, d.reason, d.config_revision) == (
            V2 if b < pct else V1,
            b,
            Reason.PERCENTAGE,
            rev,
        )

    def test_percentage_boundary_is_exclusive(self) -> None:
        """At v2_percentage == bucket the pair is V1; one more and it is V2."""
        b = bucket(str(EVENT), str(USER))
        assert b < 100
        assert decide(_config(v2_percentage=b), EVENT, USER).read_model is V1
        assert decide(_config(v2_percentage=b + 1), EVENT, USER).read_model is V2

    def test_fail_safe_gives_v1(self) -> None:
        """fail_safe=True gives V1/FAIL_SAFE over the stored config and overrides."""
        cfg = _config(v2_percentage=100, user_overrides={USER: V2}, revision=0)
        d = decide(cfg, EVENT, USER, fail_safe=True)
        assert (d.read_model, d.reason, d.config_revision) == (V1, Reason.FAIL_SAFE, 0)
        assert d.bucket == bucket(str(EVENT), str(USER))

    def test_static_policy_default_is_phase_zero(self) -> None:
        """StaticPolicy() holds the default config: V1 by the stored kill switch, revision 0."""
        d = StaticPolicy().decide(EVENT, USER)
        assert (d.read_model, d.reason, d.config_revision) == (V1, Reason.KILL_SWITCH, 0)

    @settings(max_examples=25, deadline=None)
    @given(
        event=st.uuids(),
        user=st.uuids(),
        enabled=st.booleans(),
        pct=st.integers(0, 100),
        users=override_maps,
        events=override_maps,
        deploy=st.booleans(),
    )
    def test_bucket_is_reported_whatever_the_reason(
        self,
        event: uuid.UUID,
        user: uuid.UUID,
        enabled: bool,
        pct: int,
        users: dict[uuid.UUID, ReadModel],
        events: dict[uuid.UUID, ReadModel],
        deploy: bool,
    ) -> None:
        """Every decision carries the pair's own bucket and the config's revision."""
        cfg = _config(
            v2_enabled=enabled,
            v2_percentage=pct,
            user_overrides=users,
            event_overrides=events,
            revision=42,
        )
        d = StaticPolicy(cfg, deploy_v2_allowed=deploy).decide(event, user)
        assert (d.bucket, d.config_revision) == (bucket(str(event), str(user)), 42)


class TestMonotonic:
    @settings(max_examples=25, deadline=None)
    @given(
        event=st.uuids(),
        user=st.uuids(),
        pcts=st.tuples(st.integers(0, 100), st.integers(0, 100)).map(sorted),
        enabled=st.booleans(),
        user_forced=st.none() | models,
        event_forced=st.none() | models,
        users=override_maps,
        events=override_maps,
    )
    def test_raising_percentage_never_moves_a_pair_back_to_v1(
        self,
        event: uuid.UUID,
        user: uuid.UUID,
        pcts: list[int],
        enabled: bool,
        user_forced: ReadModel | None,
        event_forced: ReadModel | None,
        users: dict[uuid.UUID, ReadModel],
        events: dict[uuid.UUID, ReadModel],
    ) -> None:
        """For p1 <= p2 and the same overrides, V2 at p1 implies V2 at p2."""
        if user_forced is not None:
            users = {**users, user: user_forced}
        if event_forced is not None:
            events = {**events, event: event_forced}
        low, high = (
            decide(
                _config(
                    v2_enabled=enabled,
                    v2_percentage=p,
                    user_overrides=users,
                    event_overrides=events,
                ),
                event,
                user,
            )
            for p in pcts
        )
        assert not (low.read_model is V2 and high.read_model is V1)
        assert low.reason is high.reason

    @settings(max_examples=25, deadline=None)
    @given(event=st.uuids(), user=st.uuids())
    def test_zero_percent_nobody_and_hundred_percent_everybody(
        self, event: uuid.UUID, user: uuid.UUID
    ) -> None:
        """Without overrides 0% gives every pair V1 and 100% gives every pair V2."""
        assert decide(_config(v2_percentage=0), event, user).read_model is V1
        assert decide(_config(v2_percentage=100), event, user).read_model is V2

    @settings(max_examples=15, deadline=None)
    @given(seed=st.integers(0, 2**32), pct=st.integers(0, 100))
    def test_fraction_on_v2_is_close_to_percentage(self, seed: int, pct: int) -> None:
        """Over 2000 random uuid pairs the share on V2 is within 6 points of v2_percentage."""
        rng = random.Random(seed)
        cfg = _config(v2_percentage=pct)
        n = 2000
        on_v2 = sum(decide(cfg, _uuid(rng), _uuid(rng)).read_model is V2 for _ in range(n))
        assert abs(on_v2 / n - pct / 100) <= 0.06


class TestRolloutConfig:
    def test_default_is_phase_zero(self) -> None:
        """The default config is v2 disabled at 0%, no overrides, the JS hash, revision 0."""
        cfg = RolloutConfig()
        assert (
            cfg.v2_enabled,
            cfg.v2_percentage,
            dict(cfg.user_overrides),
            dict(cfg.event_overrides),
            cfg.hash_version,
            cfg.revision,
        ) == (False, 0, {}, {}, HashVersion.JS_SIMPLE_HASH_V1, 0)

    @pytest.mark.parametrize("pct", [0, 1, 99, 100])
    def test_validate_accepts_zero_to_hundred(self, pct: int) -> None:
        """validate() returns the config itself for a percentage in 0..100."""
        cfg = RolloutConfig(v2_percentage=pct)
        assert cfg.validate() is cfg

    @pytest.mark.parametrize("pct", [-1, 101, -(2**31), 2**31 - 1])
    def test_validate_rejects_out_of_range_percentage(self, pct: int) -> None:
        """validate() raises InvalidArgument naming config.v2_percentage."""
        with pytest.raises(InvalidArgument) as caught:
            RolloutConfig(v2_percentage=pct).validate()
        assert [(v.field, v.reason) for v in caught.value.violations] == [
            ("config.v2_percentage", "PERCENTAGE_OUT_OF_RANGE")
        ]

    def test_with_changes_copies(self) -> None:
        """with_changes returns a new config and leaves the original as it was."""
        cfg = RolloutConfig(v2_percentage=5)
        new = cfg.with_changes(v2_percentage=50, v2_enabled=True)
        assert (new.v2_percentage, new.v2_enabled) == (50, True)
        assert (cfg.v2_percentage, cfg.v2_enabled) == (5, False)

    @settings(max_examples=25, deadline=None)
    @given(
        enabled=st.booleans(),
        pct=st.integers(0, 100),
        users=override_maps,
        events=override_maps,
        rev=st.integers(0, 10**12),
        at=st.none() | st.datetimes(timezones=st.just(UTC)),
        by=st.text(max_size=20),
    )
    def test_json_round_trips(
        self,
        enabled: bool,
        pct: int,
        users: dict[uuid.UUID, ReadModel],
        events: dict[uuid.UUID, ReadModel],
        rev: int,
        at: datetime | None,
        by: str,
    ) -> None:
        """from_json(to_json(c)) == c: the audit log keeps every field."""
        cfg = RolloutConfig(enabled, pct, users, events, HashVersion.JS_SIMPLE_HASH_V1, rev, at, by)
        assert RolloutConfig.from_json(cfg.to_json()) == cfg
