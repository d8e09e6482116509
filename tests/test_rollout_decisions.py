"""Decisions follow the stored config at once: GetReadModel, the feed, the deploy kill switch."""

from __future__ import annotations

import uuid

import pytest

from guestfeed.v1 import feed_pb2
from guestfeed_server.domain.model import ReadModel
from guestfeed_server.rollout.bucketing import bucket

from .conftest import Client
from .factory import World
from .helpers import guest_with_feed
from .oracle import feed
from .rollout_helpers import (
    Own,
    R,
    decision,
    decision_of,
    eventually,
    get_config,
    pb_config,
    preview,
    read_model,
    serving,
    update,
)

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


async def list_page(
    c: Client, event: uuid.UUID, user: uuid.UUID, token: str = "", page_size: int = 50
) -> feed_pb2.ListMessagesResponse:
    return await c.feed.ListMessages(
        feed_pb2.ListMessagesRequest(event_id=str(event), page_size=page_size, page_token=token),
        metadata=Client.auth(user),
    )


def ids(world: World, event: uuid.UUID, user: uuid.UUID, model: str) -> list[str]:
    return [str(e.message_id) for e in feed(world, event, user, model)]


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
            (pb_config(True, 100), pb_config(True, 0), "v2"),
        ],
        ids=["v1-token-after-enable", "v2-token-after-percentage-drop"],
    )
    async def test_page_token_keeps_its_model_across_a_flip(
        self, own: Own, start: R.RolloutConfig, flip: R.RolloutConfig, model: str
    ) -> None:
        """A token resumed with read_model UNSPECIFIED keeps the model it was issued under
        while only the percentage moves (a kill moves it: tests/test_kill_switches.py)."""
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
                lambda: decision_of(own.client, event, user),
                (feed_pb2.READ_MODEL_V2, R.DECISION_REASON_USER_OVERRIDE, 2),
                2.0,
            )
