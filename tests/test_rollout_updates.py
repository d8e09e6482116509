"""RolloutService's config RPCs: reading, optimistic updates and their audit rows, the log."""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from guestfeed.v1 import feed_pb2
from guestfeed_server.domain.model import ReadModel

from .conftest import Client
from .helpers import error_info, field_violations
from .rollout_helpers import (
    ADMIN,
    Own,
    R,
    admin,
    decision,
    get_config,
    history,
    pb_config,
    read_model,
    rpc_error,
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
