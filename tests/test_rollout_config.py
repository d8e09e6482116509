"""RolloutService's config RPCs and the live rollout, each test on a database of its own.

The shared `client` server relies on the default config (v2 disabled), so
nothing here touches its database: every test that changes the config gets a
scratch database, migrated, with its own server.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestfeed.v1 import feed_pb2
from guestfeed_server.api.server import ROLLOUT_HEALTH_NAME
from guestfeed_server.auth import Principal, Role
from guestfeed_server.domain.model import ReadModel
from guestfeed_server.rollout import Reason, RolloutConfig, decide
from guestfeed_server.rollout.admin import RolloutAdmin
from guestfeed_server.rollout.bucketing import bucket
from guestfeed_server.rollout.live import RolloutState
from guestfeed_server.storage import Database

from .conftest import Client
from .factory import World
from .helpers import error_info, field_violations, guest_with_feed
from .oracle import feed
from .rollout_helpers import (
    ADMIN,
    NOT_SERVING,
    SERVING,
    Own,
    R,
    admin,
    decision,
    eventually,
    get_config,
    health,
    history,
    pb_config,
    read_model,
    rpc_error,
    serving,
    update,
)


class TestGetRolloutConfig:
    async def test_fresh_database_has_phase_zero_config(self, own: Own) -> None:
        """A migrated database holds revision 1: v2 disabled, 0%, no overrides, the JS hash."""
        cfg = await get_config(own.client)
        assert (
            cfg.revision,
            cfg.v2_enabled,
            cfg.v2_percentage,
            dict(cfg.user_overrides),
            dict(cfg.event_overrides),
            cfg.hash_version,
            cfg.updated_by,
        ) == (1, False, 0, {}, {}, R.HASH_VERSION_JS_SIMPLE_HASH_V1, "guestfeed migrate")
        assert cfg.HasField("updated_at")

    @pytest.mark.parametrize("rpc", ["get", "update", "list", "preview"])
    async def test_admin_rpcs_deny_authenticated_tokens(self, own: Own, rpc: str) -> None:
        """Each config RPC needs service_role: an authenticated token is PERMISSION_DENIED."""
        c, user = own.client, Client.auth(uuid.uuid4())
        calls = {
            "get": lambda: c.rollout.GetRolloutConfig(R.GetRolloutConfigRequest(), metadata=user),
            "update": lambda: update(c, 1, pb_config(pct=100), metadata=user),
            "list": lambda: c.rollout.ListRolloutChanges(
                R.ListRolloutChangesRequest(), metadata=user
            ),
            "preview": lambda: c.rollout.PreviewRolloutChange(
                R.PreviewRolloutChangeRequest(config=pb_config(pct=100)), metadata=user
            ),
        }
        err = await rpc_error(calls[rpc]())
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(err)
        assert info is not None and info.reason == "SERVICE_ROLE_REQUIRED"
        assert (await get_config(c)).revision == 1
        assert await history(c) == []

    async def test_no_token_is_unauthenticated(self, own: Own) -> None:
        """GetRolloutConfig without a token is UNAUTHENTICATED."""
        err = await rpc_error(own.client.rollout.GetRolloutConfig(R.GetRolloutConfigRequest()))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


class TestUpdateRolloutConfig:
    async def test_update_bumps_revision_and_records_who_and_when(self, own: Own) -> None:
        """A good update stores the config at revision+1, by service_role:<sub>, at now()."""
        c = own.client
        before = await get_config(c)
        u, e = uuid.uuid4(), uuid.uuid4()
        got = await update(c, 1, pb_config(True, 25, {u: ReadModel.V2}, {e: ReadModel.V1}))
        assert got == await get_config(c)
        assert (
            got.revision,
            got.v2_enabled,
            got.v2_percentage,
            dict(got.user_overrides),
            dict(got.event_overrides),
            got.hash_version,
            got.updated_by,
        ) == (
            2,
            True,
            25,
            {str(u): feed_pb2.READ_MODEL_V2},
            {str(e): feed_pb2.READ_MODEL_V1},
            R.HASH_VERSION_JS_SIMPLE_HASH_V1,
            f"service_role:{ADMIN}",
        )
        at = got.updated_at.ToDatetime(UTC)
        assert before.updated_at.ToDatetime(UTC) < at
        assert abs(at - datetime.now(UTC)) < timedelta(seconds=30)
        third = await update(c, 2, pb_config(False, 25), metadata=admin(u))
        assert (third.revision, third.updated_by) == (3, f"service_role:{u}")

    async def test_output_only_fields_are_ignored(self, own: Own) -> None:
        """revision and updated_by in the proposal do not reach the stored config."""
        got = await update(own.client, 1, pb_config(pct=10, revision=99, updated_by="mallory"))
        assert (got.revision, got.updated_by) == (2, f"service_role:{ADMIN}")

    async def test_unspecified_hash_version_keeps_stored_one(self, own: Own) -> None:
        """hash_version UNSPECIFIED keeps the stored JS_SIMPLE_HASH_V1."""
        got = await update(own.client, 1, pb_config(hash_version=R.HASH_VERSION_UNSPECIFIED))
        assert got.hash_version == R.HASH_VERSION_JS_SIMPLE_HASH_V1
        rows = await own.pool.fetch("SELECT hash_version FROM guestfeed.rollout_config")
        assert [r["hash_version"] for r in rows] == ["js_simple_hash_v1"]

    async def test_override_keys_are_stored_in_canonical_form(self, own: Own) -> None:
        """An upper-case UUID key is stored lower-case and decides for that user."""
        event, user = uuid.uuid4(), uuid.uuid4()
        got = await update(own.client, 1, pb_config(True, 0, {str(user).upper(): ReadModel.V2}))
        assert dict(got.user_overrides) == {str(user): feed_pb2.READ_MODEL_V2}
        assert decision(await read_model(own.client, event, user)) == (
            feed_pb2.READ_MODEL_V2,
            R.DECISION_REASON_USER_OVERRIDE,
            2,
        )

    async def test_same_id_twice_in_overrides_is_invalid(self, own: Own) -> None:
        """One id spelled twice (lower and upper case) is INVALID_ARGUMENT; nothing changes."""
        user = uuid.uuid4()
        twice = {str(user): ReadModel.V2, str(user).upper(): ReadModel.V1}
        err = await rpc_error(update(own.client, 1, pb_config(True, 0, twice)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        (violation,) = field_violations(err)
        assert violation.lower() == f"config.user_overrides[{user}]"
        assert ((await get_config(own.client)).revision, await history(own.client)) == (1, [])

    @pytest.mark.parametrize("stale", [1, 3, 99])
    async def test_stale_expected_revision_is_aborted(self, own: Own, stale: int) -> None:
        """An expected_revision other than the stored one is ABORTED and changes nothing."""
        c = own.client
        await update(c, 1, pb_config(pct=5))
        cfg, log = await get_config(c), await history(c)
        err = await rpc_error(update(c, stale, pb_config(pct=90)))
        assert err.code() == grpc.StatusCode.ABORTED
        info = error_info(err)
        assert info is not None
        assert (info.reason, dict(info.metadata)) == (
            "REVISION_MISMATCH",
            {"current_revision": "2"},
        )
        assert (await get_config(c), await history(c)) == (cfg, log)

    @pytest.mark.parametrize(
        ("kw", "fields"),
        [
            ({"reason": ""}, {"reason"}),
            ({"reason": "   "}, {"reason"}),
            ({"reason": "x" * 1001}, {"reason"}),
            ({"config": pb_config(pct=-1)}, {"config.v2_percentage"}),
            ({"config": pb_config(pct=101)}, {"config.v2_percentage"}),
            (
                {"config": pb_config(users={"not-a-uuid": ReadModel.V2})},
                {"config.user_overrides[not-a-uuid]"},
            ),
            (
                {"config": pb_config(events={"nope": ReadModel.V1})},
                {"config.event_overrides[nope]"},
            ),
            (
                {"config": pb_config(users={ADMIN: feed_pb2.READ_MODEL_UNSPECIFIED})},
                {f"config.user_overrides[{ADMIN}]"},
            ),
            ({"config": pb_config(events={ADMIN: 7})}, {f"config.event_overrides[{ADMIN}]"}),
            ({"config": pb_config(hash_version=7)}, {"config.hash_version"}),
            ({"config": None}, {"config"}),
            ({"expected": 0}, {"expected_revision"}),
            ({"expected": -1}, {"expected_revision"}),
            (
                {"expected": 0, "reason": "", "config": pb_config(pct=101)},
                {"expected_revision", "reason", "config.v2_percentage"},
            ),
        ],
        ids=[
            "no-reason",
            "blank-reason",
            "long-reason",
            "pct-minus-1",
            "pct-101",
            "user-key-not-uuid",
            "event-key-not-uuid",
            "user-value-unspecified",
            "event-value-unknown",
            "hash-unknown",
            "no-config",
            "revision-0",
            "revision-minus-1",
            "three-at-once",
        ],
    )
    async def test_invalid_update_names_every_bad_field(
        self, own: Own, kw: dict[str, Any], fields: set[str]
    ) -> None:
        """Bad requests are INVALID_ARGUMENT, a BadRequest violation per field; nothing changes."""
        c = own.client
        args: dict[str, Any] = {"expected": 1, "config": pb_config(pct=50), "reason": "why"}
        args.update(kw)
        err = await rpc_error(update(c, args["expected"], args["config"], args["reason"]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(err)) == fields
        assert (await get_config(c)).revision == 1
        assert await history(c) == []

    async def test_concurrent_updates_on_one_revision_let_exactly_one_win(self, own: Own) -> None:
        """Five updates racing on one expected_revision: one succeeds, four are ABORTED."""
        c = own.client
        for rnd in range(4):  # a few rounds: a missing row lock shows as a race
            base = (await get_config(c)).revision
            results = await asyncio.gather(
                *(
                    update(c, base, pb_config(pct=10 * rnd + i), reason=f"racer {rnd}.{i}")
                    for i in range(5)
                ),
                return_exceptions=True,
            )
            wins = [r for r in results if isinstance(r, R.RolloutConfig)]
            losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(wins) == 1 and len(losses) == 4
            assert {e.code() for e in losses} == {grpc.StatusCode.ABORTED}
            assert wins[0].revision == base + 1
            assert await get_config(c) == wins[0]
            change = (await history(c))[0]
            assert (change.revision, change.reason) == (
                base + 1,
                f"racer {rnd}.{wins[0].v2_percentage - 10 * rnd}",
            )
        assert [ch.revision for ch in await history(c)] == [5, 4, 3, 2]


class TestListRolloutChanges:
    async def test_fresh_database_has_an_empty_log(self, own: Own) -> None:
        """No change yet: an empty page and no token."""
        resp = await own.client.rollout.ListRolloutChanges(
            R.ListRolloutChangesRequest(), metadata=admin()
        )
        assert (list(resp.changes), resp.next_page_token) == ([], "")

    async def test_changes_say_who_when_before_after_and_why(self, own: Own) -> None:
        """Newest first; each entry holds its actor, time, reason and the configs around it."""
        c = own.client
        subs = [uuid.uuid4() for _ in range(3)]
        configs = [await get_config(c)]
        for i, sub in enumerate(subs):
            configs.append(
                await update(
                    c,
                    configs[-1].revision,
                    pb_config(i % 2 == 0, 10 * i, {sub: ReadModel.V2}),
                    reason=f"step {i}",
                    metadata=admin(sub),
                )
            )
        log = await history(c)
        assert [ch.revision for ch in log] == [4, 3, 2]
        for ch, i in zip(log, (2, 1, 0), strict=True):
            assert (ch.changed_by, ch.reason) == (f"service_role:{subs[i]}", f"step {i}")
            assert ch.before == configs[i]
            assert ch.after == configs[i + 1]
            assert ch.changed_at == configs[i + 1].updated_at

    @pytest.mark.parametrize(
        ("changes", "size", "pages"),
        [
            (5, 2, [[6, 5], [4, 3], [2]]),
            (4, 2, [[5, 4], [3, 2]]),
            (3, 3, [[4, 3, 2]]),
            (3, 0, [[4, 3, 2]]),
        ],
        ids=["5-by-2", "4-by-2-exact", "3-by-3-exact", "3-default-size"],
    )
    async def test_pages_follow_next_page_token_to_the_end(
        self, own: Own, changes: int, size: int, pages: list[list[int]]
    ) -> None:
        """Pages are newest first; every page but the last has a token, the last has none."""
        c = own.client
        for rev in range(1, changes + 1):
            await update(c, rev, pb_config(pct=rev))
        got, token = [], ""
        for _ in range(len(pages) + 1):
            resp = await c.rollout.ListRolloutChanges(
                R.ListRolloutChangesRequest(page_size=size, page_token=token), metadata=admin()
            )
            got.append(([ch.revision for ch in resp.changes], bool(resp.next_page_token)))
            token = resp.next_page_token
            if not token:
                break
        assert got == [(p, i < len(pages) - 1) for i, p in enumerate(pages)]

    async def test_token_pages_stay_put_when_changes_are_added(self, own: Own) -> None:
        """A change made between pages does not shift the older pages a token leads to."""
        c = own.client
        for rev in range(1, 6):
            await update(c, rev, pb_config(pct=rev))

        async def page(token: str) -> R.ListRolloutChangesResponse:
            return await c.rollout.ListRolloutChanges(
                R.ListRolloutChangesRequest(page_size=2, page_token=token), metadata=admin()
            )

        first = await page("")
        await update(c, 6, pb_config(pct=60))
        second = await page(first.next_page_token)
        assert [ch.revision for ch in first.changes] == [6, 5]
        assert [ch.revision for ch in second.changes] == [4, 3]
        assert [ch.revision for ch in (await page("")).changes] == [7, 6]

    async def test_negative_page_size_is_invalid_argument(self, own: Own) -> None:
        """page_size -1 is INVALID_ARGUMENT on page_size."""
        err = await rpc_error(
            own.client.rollout.ListRolloutChanges(
                R.ListRolloutChangesRequest(page_size=-1), metadata=admin()
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(err)) == {"page_size"}

    @pytest.mark.parametrize(
        "token",
        [
            "not a token!",
            "AAAA",
            base64.urlsafe_b64encode(struct.pack(">Bq", 2, 3)).decode().rstrip("="),
            base64.urlsafe_b64encode(struct.pack(">Bq", 1, 0)).decode().rstrip("="),
        ],
    )
    async def test_bad_page_token_is_invalid_argument(self, own: Own, token: str) -> None:
        """A token this service did not issue is INVALID_ARGUMENT on page_token."""
        err = await rpc_error(
            own.client.rollout.ListRolloutChanges(
                R.ListRolloutChangesRequest(page_token=token), metadata=admin()
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(err)) == {"page_token"}


CASES = {
    "user override v2 at 0%": (pb_config(True, 0, users={"U": ReadModel.V2}), "v2", "USER"),
    "event override v1 at 100%": (pb_config(True, 100, events={"E": ReadModel.V1}), "v1", "EVENT"),
    "event override v2 at 0%": (pb_config(True, 0, events={"E": ReadModel.V2}), "v2", "EVENT"),
    "100%": (pb_config(True, 100), "v2", "PERCENTAGE"),
    "0%": (pb_config(True, 0), "v1", "PERCENTAGE"),
    "killed with override": (pb_config(False, 100, users={"U": ReadModel.V2}), "v1", "KILL"),
}
REASONS = {
    "USER": R.DECISION_REASON_USER_OVERRIDE,
    "EVENT": R.DECISION_REASON_EVENT_OVERRIDE,
    "PERCENTAGE": R.DECISION_REASON_PERCENTAGE,
    "KILL": R.DECISION_REASON_KILL_SWITCH,
}
FEED_MODELS = {"v1": feed_pb2.READ_MODEL_V1, "v2": feed_pb2.READ_MODEL_V2}


def for_pair(template: R.RolloutConfig, event: uuid.UUID, user: uuid.UUID) -> R.RolloutConfig:
    """`template` with its "U"/"E" override keys replaced by the pair's ids."""
    out = R.RolloutConfig()
    out.CopyFrom(template)
    out.ClearField("user_overrides")
    out.ClearField("event_overrides")
    out.user_overrides.update({str(user): v for v in template.user_overrides.values()})
    out.event_overrides.update({str(event): v for v in template.event_overrides.values()})
    return out


class TestReadModelFollowsUpdates:
    @pytest.mark.parametrize("case", CASES)
    async def test_get_read_model_reflects_an_update_at_once(self, own: Own, case: str) -> None:
        """Right after UpdateRolloutConfig returns, the same server decides by the new revision."""
        template, model, reason = CASES[case]
        event, user = uuid.uuid4(), uuid.uuid4()
        new = await update(own.client, 1, for_pair(template, event, user))
        resp = await read_model(own.client, event, user)
        assert decision(resp) == (FEED_MODELS[model], REASONS[reason], new.revision)
        assert resp.bucket == bucket(str(event), str(user))

    async def test_percentage_boundary_over_the_wire(self, own: Own) -> None:
        """At v2_percentage == bucket the pair is V1; at bucket + 1 it is V2 (revisions 2, 3)."""
        c, event, user = own.client, uuid.uuid4(), uuid.uuid4()
        b = bucket(str(event), str(user))
        await update(c, 1, pb_config(True, b))
        at = await read_model(c, event, user)
        await update(c, 2, pb_config(True, b + 1))
        above = await read_model(c, event, user)
        assert [decision(at), decision(above)] == [
            (feed_pb2.READ_MODEL_V1, R.DECISION_REASON_PERCENTAGE, 2),
            (feed_pb2.READ_MODEL_V2, R.DECISION_REASON_PERCENTAGE, 3),
        ]


async def list_page(
    c: Client, event: uuid.UUID, user: uuid.UUID, token: str = "", page_size: int = 50
) -> feed_pb2.ListMessagesResponse:
    return await c.feed.ListMessages(
        feed_pb2.ListMessagesRequest(event_id=str(event), page_size=page_size, page_token=token),
        metadata=Client.auth(user),
    )


def ids(world: World, event: uuid.UUID, user: uuid.UUID, model: str) -> list[str]:
    return [str(e.message_id) for e in feed(world, event, user, model)]


class TestFeedFollowsRollout:
    async def test_unspecified_read_model_follows_the_rollout(self, own: Own) -> None:
        """Without read_model: V1 by default, V2 under a user override or 100%, V1 after kill."""
        c, world = own.client, own.world()
        event, user = await guest_with_feed(world)
        assert ids(world, event, user, "v1") != ids(world, event, user, "v2")
        served = []
        for step in (
            None,
            pb_config(True, 0, {user: ReadModel.V2}),
            pb_config(True, 100),
            pb_config(False, 100),
        ):
            if step is not None:
                await update(c, (await get_config(c)).revision, step)
            resp = await list_page(c, event, user)
            model = "v1" if resp.read_model == feed_pb2.READ_MODEL_V1 else "v2"
            assert [m.message_id for m in resp.messages] == ids(world, event, user, model)
            served.append(model)
        assert served == ["v1", "v2", "v2", "v1"]

    @pytest.mark.parametrize(
        ("start", "flip", "model"),
        [
            (pb_config(False, 0), pb_config(True, 100), "v1"),
            (pb_config(True, 100), pb_config(False, 100), "v2"),
        ],
        ids=["v1-token-after-enable", "v2-token-after-kill"],
    )
    async def test_page_token_keeps_its_model_across_a_flip(
        self, own: Own, start: R.RolloutConfig, flip: R.RolloutConfig, model: str
    ) -> None:
        """A token resumed with read_model UNSPECIFIED keeps the model it was issued under."""
        c, world = own.client, own.world()
        event, user = await guest_with_feed(world)
        await update(c, 1, start)
        first = await list_page(c, event, user, page_size=2)
        assert first.read_model == FEED_MODELS[model] and first.next_page_token
        await update(c, 2, flip)
        fresh = await list_page(c, event, user)
        assert fresh.read_model != FEED_MODELS[model]
        rest = await list_page(c, event, user, token=first.next_page_token)
        assert rest.read_model == FEED_MODELS[model]
        assert [m.message_id for m in (*first.messages, *rest.messages)] == ids(
            world, event, user, model
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


async def preview(
    c: Client, config: R.RolloutConfig, max_events: int = 0
) -> R.PreviewRolloutChangeResponse:
    return await c.rollout.PreviewRolloutChange(
        R.PreviewRolloutChangeRequest(config=config, max_events=max_events), metadata=admin()
    )


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


class TestDeployKillSwitch:
    async def test_deploy_killed_server_answers_v1_even_at_full_rollout(self, own: Own) -> None:
        """GUESTFEED_READMODEL_V2=false: V1/DEPLOY_KILL_SWITCH at 100% with a V2 override."""
        world = own.world()
        event, user = await guest_with_feed(world)
        async with serving(own.dsn, GUESTFEED_READMODEL_V2="false") as killed:
            new = await update(killed, 1, pb_config(True, 100, {user: ReadModel.V2}))
            assert decision(await read_model(killed, event, user)) == (
                feed_pb2.READ_MODEL_V1,
                R.DECISION_REASON_DEPLOY_KILL_SWITCH,
                new.revision,
            )
            assert (await list_page(killed, event, user)).read_model == feed_pb2.READ_MODEL_V1
            assert (await preview(killed, pb_config(True, 0))).guests_changing == 0
            # The other replica, without the deploy switch, follows the stored config.
            await eventually(
                lambda: _decision_of(own.client, event, user),
                (feed_pb2.READ_MODEL_V2, R.DECISION_REASON_USER_OVERRIDE, 2),
                2.0,
            )


async def _decision_of(c: Client, event: uuid.UUID, user: uuid.UUID) -> tuple[int, int, int]:
    return decision(await read_model(c, event, user))


def _as_role(dsn: str, role: str, password: str) -> str:
    """`dsn` with its user swapped (host, port, database and ?host= socket kept)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(role)}:{quote(password)}@{host}"))


class TestLiveState:
    async def test_fail_safe_until_the_config_is_readable(self, own_db: tuple[str, str]) -> None:
        """Unreadable config: V1/FAIL_SAFE/revision 0, its health entry NOT_SERVING, until GRANT."""
        _, dsn = own_db
        role, password = f"gf_nocfg_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            await conn.execute(
                f"GRANT USAGE ON SCHEMA public, guestfeed TO {role}; "
                f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; "
                f"GRANT SELECT ON guestfeed.schema_migrations TO {role}"
            )
            async with serving(_as_role(dsn, role, password), GUESTFEED_CONNECT_TIMEOUT_S="1") as c:
                event, user = uuid.uuid4(), uuid.uuid4()
                resp = await read_model(c, event, user)
                assert decision(resp) == (feed_pb2.READ_MODEL_V1, R.DECISION_REASON_FAIL_SAFE, 0)
                assert resp.bucket == bucket(str(event), str(user))
                await eventually(lambda: health(c, ROLLOUT_HEALTH_NAME), NOT_SERVING)
                assert await health(c, "") == SERVING

                await conn.execute(f"GRANT SELECT ON guestfeed.rollout_config TO {role}")
                await eventually(
                    lambda: _decision_of(c, event, user),
                    (feed_pb2.READ_MODEL_V1, R.DECISION_REASON_KILL_SWITCH, 1),
                    3.0,
                )
                await eventually(lambda: health(c, ROLLOUT_HEALTH_NAME), SERVING, 2.0)
        finally:
            await conn.execute(f"DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}")
            await conn.close()

    async def test_keeps_last_config_when_the_database_goes_away(
        self, server_dsn: str, own: Own
    ) -> None:
        """With its database gone the replica still answers by the last revision it read."""
        c = own.client
        await update(c, 1, pb_config(True, 100))
        pairs = [(uuid.uuid4(), uuid.uuid4()) for _ in range(3)]
        want = (feed_pb2.READ_MODEL_V2, R.DECISION_REASON_PERCENTAGE, 2)
        sa = await asyncpg.connect(server_dsn)
        try:
            await sa.execute(f'ALTER DATABASE "{own.name}" ALLOW_CONNECTIONS false')
            await sa.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                own.name,
            )
            await eventually(lambda: health(c, ""), NOT_SERVING)
            await asyncio.sleep(0.7)  # past two re-read periods with the database gone
            assert [await _decision_of(c, e, u) for e, u in pairs] == [want] * 3
            assert await health(c, ROLLOUT_HEALTH_NAME) == SERVING
        finally:
            await sa.execute(f'ALTER DATABASE "{own.name}" ALLOW_CONNECTIONS true')
            await sa.close()
        # Back online it follows changes again, made through another replica.
        async with serving(own.dsn) as other:
            await update(other, 2, pb_config(False, 100))
            await eventually(
                lambda: _decision_of(c, *pairs[0]),
                (feed_pb2.READ_MODEL_V1, R.DECISION_REASON_KILL_SWITCH, 3),
                5.0,
            )

    async def test_change_through_one_replica_reaches_another_within_a_second(
        self, own: Own
    ) -> None:
        """NOTIFY carries an update to a second server (slow re-read) in under 1 s."""
        event, user = uuid.uuid4(), uuid.uuid4()
        async with serving(own.dsn, GUESTFEED_ROLLOUT_REFRESH_S="60") as other:
            assert (await _decision_of(other, event, user))[2] == 1
            await update(own.client, 1, pb_config(True, 0, {user: ReadModel.V2}))
            took = await eventually(
                lambda: _decision_of(other, event, user),
                (feed_pb2.READ_MODEL_V2, R.DECISION_REASON_USER_OVERRIDE, 2),
                1.0,
            )
        assert took < 1.0

    async def test_periodic_re_read_catches_a_change_without_notify(self, own: Own) -> None:
        """A change written with no NOTIFY is picked up by the re-read (refresh 0.3 s)."""
        event, user = uuid.uuid4(), uuid.uuid4()
        await own.pool.execute(
            "UPDATE guestfeed.rollout_config SET v2_enabled = true, v2_percentage = 100, "
            "revision = revision + 1"
        )
        await eventually(
            lambda: _decision_of(own.client, event, user),
            (feed_pb2.READ_MODEL_V2, R.DECISION_REASON_PERCENTAGE, 2),
            2.0,
        )


class TestRolloutStateApply:
    async def test_admin_applies_its_own_write_to_the_replica(self, own: Own) -> None:
        """RolloutAdmin.update hands the new revision to the replica's state before returning."""
        state = RolloutState(own.dsn, deploy_v2_allowed=True, refresh_s=60)  # never started
        admin_ = RolloutAdmin(
            Database(own.pool), deploy_v2_allowed=True, query_timeout_s=5, applied=state.apply
        )
        new = await admin_.update(
            Principal(ADMIN, Role.SERVICE_ROLE),
            RolloutConfig(v2_enabled=True, v2_percentage=100),
            hash_version=None,
            expected_revision=1,
            reason="unit",
        )
        assert state.config == new and new.revision == 2
        d = state.decide(uuid.uuid4(), uuid.uuid4())
        assert (d.read_model, d.reason, d.config_revision) == (ReadModel.V2, Reason.PERCENTAGE, 2)

    def test_apply_ignores_older_and_equal_revisions(self) -> None:
        """apply() adopts newer revisions only; on_change fires once per adopted one."""
        seen: list[int] = []
        state = RolloutState(
            "postgresql://unused",
            deploy_v2_allowed=True,
            refresh_s=1,
            on_change=lambda cfg: seen.append(cfg.revision),
        )
        event, user = uuid.uuid4(), uuid.uuid4()
        assert state.fail_safe
        assert state.decide(event, user).reason is Reason.FAIL_SAFE
        newer = RolloutConfig(v2_enabled=True, v2_percentage=100, revision=5)
        assert state.apply(newer) is True
        assert state.apply(RolloutConfig(revision=4)) is False
        assert state.apply(RolloutConfig(revision=5)) is False
        assert state.config is newer and not state.fail_safe
        d = state.decide(event, user)
        assert (d.read_model, d.config_revision) == (ReadModel.V2, 5)
        assert state.apply(RolloutConfig(revision=6)) is True
        assert seen == [5, 6]

    def test_deploy_switch_applies_to_the_live_state(self) -> None:
        """A state built with deploy_v2_allowed=False answers DEPLOY_KILL_SWITCH after apply()."""
        state = RolloutState("postgresql://unused", deploy_v2_allowed=False, refresh_s=1)
        state.apply(RolloutConfig(v2_enabled=True, v2_percentage=100, revision=3))
        d = state.decide(uuid.uuid4(), uuid.uuid4())
        assert (d.read_model, d.reason, d.config_revision) == (
            ReadModel.V1,
            Reason.DEPLOY_KILL_SWITCH,
            3,
        )
