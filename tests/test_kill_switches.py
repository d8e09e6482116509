"""Both kill switches always win; naming a read model is for service callers only."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from guestfeed.v1 import feed_pb2
from guestfeed_server.domain.model import Cursor, ReadModel
from guestfeed_server.feed.choice import ChoiceSource, choose
from guestfeed_server.feed.tokens import PageTokens, TokenScope
from guestfeed_server.rollout import RolloutConfig, StaticPolicy

from .conftest import Client
from .factory import World
from .rollout_helpers import Own, get_config, pb_config, serving, update
from .telemetry_helpers import one_server_span, points, traced_server
from .tracing import Tracing

V1, V2 = feed_pb2.READ_MODEL_V1, feed_pb2.READ_MODEL_V2


async def feed_of(world: World, n: int = 6) -> tuple[uuid.UUID, uuid.UUID]:
    """An event whose guest has n delivered announcements plus one undelivered (v2-only)."""
    event = await world.event()
    user, guest = await world.member(event)
    for _ in range(n):
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=guest, user_id=user)
    await world.message(event, "announcement")
    return event, user


async def page(
    c: Client,
    event: uuid.UUID,
    user: uuid.UUID,
    *,
    model: int = 0,
    token: str = "",
    size: int = 50,
    service: bool = False,
) -> feed_pb2.ListMessagesResponse:
    return await c.feed.ListMessages(
        feed_pb2.ListMessagesRequest(
            event_id=str(event), page_size=size, page_token=token, read_model=model
        ),
        metadata=Client.pinning(user) if service else Client.auth(user),
    )


async def stream(
    c: Client, event: uuid.UUID, user: uuid.UUID, *, model: int = 0, service: bool = False
) -> list[feed_pb2.StreamMessagesResponse]:
    request = feed_pb2.StreamMessagesRequest(event_id=str(event), page_size=2, read_model=model)
    meta = Client.pinning(user) if service else Client.auth(user)
    return [r async for r in c.feed.StreamMessages(request, metadata=meta)]


async def v1_ids(c: Client, event: uuid.UUID, user: uuid.UUID) -> list[str]:
    return [m.message_id for m in (await page(c, event, user, model=V1, service=True)).messages]


class TestStoredKillSwitch:
    async def test_explicit_v2_is_served_from_v1_for_everyone(self, own: Own) -> None:
        """v2_enabled=false at 100 % with a V2 user override: a guest's and a service
        caller's explicit V2, listed or streamed, are served from V1 and say so."""
        world = own.world()
        event, user = await feed_of(world)
        await update(own.client, 1, pb_config(False, 100, {user: 2}))
        for service in (False, True):
            resp = await page(own.client, event, user, model=V2, service=service)
            assert resp.read_model == V1
            responses = await stream(own.client, event, user, model=V2, service=service)
            assert {r.read_model for r in responses} == {V1}
        assert [m.message_id for m in resp.messages] == await v1_ids(own.client, event, user)

    async def test_a_v2_token_continues_in_v1_from_the_same_position(self, own: Own) -> None:
        """A V2 page token issued before the kill resumes in V1 right after its cursor,
        for ListMessages and StreamMessages, and the next token is a V1 token."""
        world = own.world()
        event, user = await feed_of(world)
        await update(own.client, 1, pb_config(True, 100))
        first = await page(own.client, event, user, size=2)
        assert first.read_model == V2 and first.next_page_token
        await update(own.client, 2, pb_config(False, 100))
        rest = await page(own.client, event, user, token=first.next_page_token, size=2)
        assert rest.read_model == V1
        everything = await v1_ids(own.client, event, user)
        last_seen = first.messages[-1].message_id
        after = everything[everything.index(last_seen) + 1 :] if last_seen in everything else None
        assert after is not None, "the first page's last message is delivery-backed"
        assert [m.message_id for m in rest.messages] == after[:2]
        more = await page(own.client, event, user, token=rest.next_page_token, size=50)
        assert more.read_model == V1
        assert [m.message_id for m in (*rest.messages, *more.messages)] == after
        streamed = [
            r
            async for r in own.client.feed.StreamMessages(
                feed_pb2.StreamMessagesRequest(
                    event_id=str(event), page_size=50, page_token=first.next_page_token
                ),
                metadata=Client.auth(user),
            )
        ]
        assert {r.read_model for r in streamed} == {V1}
        assert [m.message_id for r in streamed for m in r.messages] == after


class TestDeployKillSwitch:
    async def test_explicit_v2_and_v2_tokens_are_served_from_v1(self, own: Own) -> None:
        """GUESTFEED_READMODEL_V2=false: a service caller's explicit V2 and a V2 token from
        another replica are served from V1 on this one."""
        world = own.world()
        event, user = await feed_of(world)
        await update(own.client, 1, pb_config(True, 100))
        first = await page(own.client, event, user, size=2)
        assert first.read_model == V2
        async with serving(own.dsn, GUESTFEED_READMODEL_V2="false") as killed:
            assert (await page(killed, event, user, model=V2, service=True)).read_model == V1
            resumed = await page(killed, event, user, token=first.next_page_token)
            assert resumed.read_model == V1
            responses = await stream(killed, event, user, model=V2, service=True)
            assert {r.read_model for r in responses} == {V1}


class TestWhoMayNameAModel:
    async def test_a_guest_gets_the_rollouts_model_whatever_they_ask(self, own: Own) -> None:
        """v2 enabled at 0 %: a guest asking for V2 gets V1; at 100 % asking for V1 gets V2."""
        world = own.world()
        event, user = await feed_of(world)
        await update(own.client, 1, pb_config(True, 0))
        assert (await page(own.client, event, user, model=V2)).read_model == V1
        assert {r.read_model for r in await stream(own.client, event, user, model=V2)} == {V1}
        await update(own.client, 2, pb_config(True, 100))
        assert (await page(own.client, event, user, model=V1)).read_model == V2

    async def test_testers_get_v2_by_their_override(self, own: Own) -> None:
        """An internal tester with a V2 user override gets V2 at 0 %, asked or not."""
        world = own.world()
        event, user = await feed_of(world)
        await update(own.client, 1, pb_config(True, 0, {user: 2}))
        assert (await page(own.client, event, user)).read_model == V2
        assert (await page(own.client, event, user, model=V2)).read_model == V2

    async def test_a_service_caller_may_name_either_model(self, own: Own) -> None:
        """With v2 enabled at 0 %, a service caller's V2 (and V1 at 100 %) is served."""
        world = own.world()
        event, user = await feed_of(world)
        await update(own.client, 1, pb_config(True, 0))
        assert (await page(own.client, event, user, model=V2, service=True)).read_model == V2
        await update(own.client, 2, pb_config(True, 100))
        assert (await page(own.client, event, user, model=V1, service=True)).read_model == V1

    async def test_an_event_forced_to_v1_moves_v2_tokens_to_v1(self, own: Own) -> None:
        """The guard's event override to V1 moves a V2 paging session to V1 at its position;
        a percentage drop does not."""
        world = own.world()
        event, user = await feed_of(world)
        await update(own.client, 1, pb_config(True, 100))
        first = await page(own.client, event, user, size=2)
        await update(own.client, 2, pb_config(True, 0))
        kept = await page(own.client, event, user, token=first.next_page_token, size=2)
        assert kept.read_model == V2
        await update(own.client, 3, pb_config(True, 100, events={event: 1}))
        moved = await page(own.client, event, user, token=first.next_page_token, size=2)
        assert moved.read_model == V1
        assert (await get_config(own.client)).revision == 4


@pytest.fixture
def rpc_lines() -> Iterator[list[dict[str, Any]]]:
    """The fields of every 'rpc' log line written while the test runs."""
    lines: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(dict(record.__dict__))

    logger, handler = logging.getLogger("guestfeed.rpc"), Keep()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class TestTelemetrySaysWhy:
    async def test_span_log_and_metric_name_the_kill_switch(
        self,
        admin_dsn: str,
        world: World,
        tracing: Tracing,
        spans: InMemorySpanExporter,
        rpc_lines: list[dict[str, Any]],
    ) -> None:
        """An explicit V2 served from V1 by the stored kill switch: the span, the rpc log
        line and the decisions metric say kill_switch, and the span and line say v2 was asked."""
        event, user = await feed_of(world)
        killed = StaticPolicy(RolloutConfig(v2_enabled=False, v2_percentage=100))
        async with traced_server(admin_dsn, tracing, rollout=killed) as t:
            spans.clear()
            resp = await page(t.client, event, user, model=V2, service=True)
            assert resp.read_model == V1
            for _ in range(100):
                if rpc_lines:
                    break
                await asyncio.sleep(0.02)
            attrs = one_server_span(spans).attributes or {}
            assert attrs["guestfeed.read_model"] == "v1"
            assert attrs["guestfeed.rollout.reason"] == "kill_switch"
            assert attrs["guestfeed.read_model.requested"] == "v2"
            (line,) = rpc_lines
            assert (line["read_model"], line["model_choice"], line["requested_read_model"]) == (
                "v1",
                "kill_switch",
                "v2",
            )
            decided = points(t.reader, "guestfeed.rollout.decisions")
            assert [(a, p.value) for a, p in decided] == [
                ({"guestfeed.read_model": "v1", "guestfeed.rollout.reason": "kill_switch"}, 1)
            ]


_TOKENS = PageTokens("k" * 40)
_AT = datetime(2026, 1, 1, tzinfo=UTC)


class TestChoiceRules:
    @settings(max_examples=300, deadline=None)
    @given(
        deploy=st.booleans(),
        enabled=st.booleans(),
        pct=st.integers(0, 100),
        user_override=st.sampled_from([None, ReadModel.V1, ReadModel.V2]),
        event_override=st.sampled_from([None, ReadModel.V1, ReadModel.V2]),
        requested=st.sampled_from([None, ReadModel.V1, ReadModel.V2]),
        token_model=st.sampled_from([None, ReadModel.V1, ReadModel.V2]),
        service=st.booleans(),
        event=st.uuids(),
        user=st.uuids(),
    )
    def test_the_rules_hold_for_every_combination(
        self,
        deploy: bool,
        enabled: bool,
        pct: int,
        user_override: ReadModel | None,
        event_override: ReadModel | None,
        requested: ReadModel | None,
        token_model: ReadModel | None,
        service: bool,
        event: uuid.UUID,
        user: uuid.UUID,
    ) -> None:
        """Killed: V1 always. Else a service caller's explicit model; else the token's,
        unless an override now sends the pair to V1; else the rollout's answer."""
        config = RolloutConfig(
            v2_enabled=enabled,
            v2_percentage=pct,
            user_overrides={user: user_override} if user_override else {},
            event_overrides={event: event_override} if event_override else {},
        )
        policy = StaticPolicy(config, deploy_v2_allowed=deploy)
        token = None
        if token_model is not None:
            scope = TokenScope(event, user, token_model)
            token = _TOKENS.open(_TOKENS.encode(scope, Cursor(_AT, uuid.uuid4())))
        choice = choose(requested, token, policy, event, user, may_pin=service)
        rollout = policy.decide(event, user).read_model
        if not deploy or not enabled:
            assert choice.read_model is ReadModel.V1
        elif requested is not None and service:
            assert (choice.read_model, choice.source) == (requested, ChoiceSource.EXPLICIT)
        elif token is not None and not (
            token.read_model is ReadModel.V2
            and rollout is ReadModel.V1
            and (user_override is ReadModel.V1 or event_override is ReadModel.V1)
        ):
            assert (choice.read_model, choice.source) == (token.read_model, ChoiceSource.PAGE_TOKEN)
        else:
            assert (choice.read_model, choice.source) == (rollout, ChoiceSource.ROLLOUT)
        assert choice.requested is requested
