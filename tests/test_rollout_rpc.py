"""RolloutService.GetReadModel in Phase 0, and which model the feed serves by default."""

from __future__ import annotations

import uuid

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_server.auth import Role
from guestfeed_server.rollout.bucketing import bucket

from .conftest import Client
from .factory import World
from .helpers import MODELS, error_info, field_violations, guest_with_feed
from .oracle import feed


async def get_read_model(
    client: Client, event_id: str, user_id: str, metadata: list[tuple[str, str]] | None
) -> rollout_pb2.GetReadModelResponse:
    return await client.rollout.GetReadModel(
        rollout_pb2.GetReadModelRequest(event_id=event_id, user_id=user_id), metadata=metadata
    )


async def rollout_error(
    client: Client, event_id: str, user_id: str, metadata: list[tuple[str, str]] | None
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get_read_model(client, event_id, user_id, metadata)
    return caught.value


class TestGetReadModel:
    @settings(
        max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(event=st.uuids(), user=st.uuids())
    async def test_self_gets_v1_and_the_pairs_bucket(
        self, client: Client, event: uuid.UUID, user: uuid.UUID
    ) -> None:
        """Asking about oneself gives READ_MODEL_V1 and bucket(event_id, user_id) in 0..99."""
        resp = await get_read_model(client, str(event), str(user), Client.auth(user))
        assert resp.read_model == feed_pb2.READ_MODEL_V1
        assert resp.bucket == bucket(str(event), str(user))
        assert 0 <= resp.bucket <= 99

    async def test_bucket_uses_canonical_lowercase_ids(self, client: Client) -> None:
        """Uppercase ids name the same pair: same bucket as their canonical lowercase form."""
        event, user = uuid.uuid4(), uuid.uuid4()
        upper = await get_read_model(
            client, str(event).upper(), str(user).upper(), Client.auth(user)
        )
        lower = await get_read_model(client, str(event), str(user), Client.auth(user))
        assert upper.bucket == lower.bucket == bucket(str(event), str(user))

    async def test_needs_no_guest_row(self, client: Client, world: World) -> None:
        """The answer depends on the ids alone: a real guest and a stranger are answered alike."""
        event = await world.event()
        guest, _ = await world.member(event)
        stranger = await world.user()
        for user in (guest, stranger):
            resp = await get_read_model(client, str(event), str(user), Client.auth(user))
            assert (resp.read_model, resp.bucket) == (
                feed_pb2.READ_MODEL_V1,
                bucket(str(event), str(user)),
            )

    async def test_other_user_with_authenticated_token_is_denied(self, client: Client) -> None:
        """An authenticated user may not ask about someone else: PERMISSION_DENIED."""
        me, other = uuid.uuid4(), uuid.uuid4()
        err = await rollout_error(client, str(uuid.uuid4()), str(other), Client.auth(me))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "service_role" in (err.details() or "")
        info = error_info(err)
        assert info is not None
        assert (info.domain, info.reason) == ("guestfeed.v1", "NOT_SELF")

    async def test_other_user_with_service_role_is_answered(self, client: Client) -> None:
        """A service_role token may ask about any user and gets that user's bucket."""
        service, other, event = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        resp = await get_read_model(
            client, str(event), str(other), Client.auth(service, Role.SERVICE_ROLE)
        )
        assert resp.read_model == feed_pb2.READ_MODEL_V1
        assert resp.bucket == bucket(str(event), str(other))

    @pytest.mark.parametrize(
        ("event_id", "user_id", "expected"),
        [
            ("not-a-uuid", "SELF", {"event_id": "INVALID_UUID"}),
            ("EVENT", "12345", {"user_id": "INVALID_UUID"}),
            ("nope", "nada", {"event_id": "INVALID_UUID", "user_id": "INVALID_UUID"}),
            ("", "", {"event_id": "REQUIRED", "user_id": "REQUIRED"}),
            ("", "bad", {"event_id": "REQUIRED", "user_id": "INVALID_UUID"}),
        ],
    )
    async def test_bad_ids_are_invalid_argument_with_violations(
        self, client: Client, event_id: str, user_id: str, expected: dict[str, str]
    ) -> None:
        """Non-UUID or missing ids are INVALID_ARGUMENT, with one field violation per bad id."""
        me = uuid.uuid4()
        event_id = str(uuid.uuid4()) if event_id == "EVENT" else event_id
        user_id = str(me) if user_id == "SELF" else user_id
        err = await rollout_error(client, event_id, user_id, Client.auth(me))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations = field_violations(err)
        assert set(violations) == set(expected)
        for field_name in expected:
            assert field_name in (err.details() or "")
        info = error_info(err)
        assert info is not None and info.domain == "guestfeed.v1"
        if len(expected) == 1:
            assert info.reason == next(iter(expected.values()))

    async def test_validation_precedes_the_self_check(self, client: Client) -> None:
        """A non-UUID user_id is INVALID_ARGUMENT for any caller, not PERMISSION_DENIED."""
        err = await rollout_error(
            client, str(uuid.uuid4()), "someone-else", Client.auth(uuid.uuid4())
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_no_token_is_unauthenticated(self, client: Client) -> None:
        """Without a token GetReadModel is UNAUTHENTICATED, even with valid ids."""
        user = uuid.uuid4()
        err = await rollout_error(client, str(uuid.uuid4()), str(user), None)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_no_token_and_bad_ids_is_unauthenticated(self, client: Client) -> None:
        """Authentication comes before validation: bad ids without a token are UNAUTHENTICATED."""
        err = await rollout_error(client, "x", "y", None)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


class TestFeedReadModelDefault:
    async def test_unspecified_list_is_served_by_v1(self, client: Client, world: World) -> None:
        """ListMessages with read_model UNSPECIFIED is served by V1 (Phase 0), with v1's content."""
        event, user = await guest_with_feed(world)
        resp = await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(event_id=str(event)), metadata=Client.auth(user)
        )
        assert resp.read_model == feed_pb2.READ_MODEL_V1
        assert [m.message_id for m in resp.messages] == [
            str(e.message_id) for e in feed(world, event, user, "v1")
        ]

    @pytest.mark.parametrize("model", ["v1", "v2"])
    async def test_explicit_model_is_served(self, client: Client, world: World, model: str) -> None:
        """A service caller's explicit read_model is the one that serves, and the response
        says so."""
        event, user = await guest_with_feed(world)
        resp = await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(event_id=str(event), read_model=MODELS[model]),
            metadata=Client.pinning(user),
        )
        assert resp.read_model == MODELS[model]
        assert [m.message_id for m in resp.messages] == [
            str(e.message_id) for e in feed(world, event, user, model)
        ]

    @pytest.mark.parametrize(
        ("requested", "served"),
        [
            (feed_pb2.READ_MODEL_UNSPECIFIED, feed_pb2.READ_MODEL_V1),
            (feed_pb2.READ_MODEL_V2, feed_pb2.READ_MODEL_V2),
        ],
    )
    async def test_stream_reports_the_serving_model_on_every_response(
        self, client: Client, world: World, requested: int, served: int
    ) -> None:
        """Every StreamMessages response names the model: V1 when unspecified, V2 when a
        service caller asks."""
        event, user = await guest_with_feed(world)
        call = client.feed.StreamMessages(
            feed_pb2.StreamMessagesRequest(event_id=str(event), page_size=1, read_model=requested),  # type: ignore[arg-type]
            metadata=Client.pinning(user),
        )
        responses = [r async for r in call]
        assert len(responses) >= 3
        assert {r.read_model for r in responses} == {served}

    async def test_unspecified_with_v2_token_keeps_v2(self, client: Client, world: World) -> None:
        """Resuming a V2 token with read_model UNSPECIFIED stays on V2 (the token's model)."""
        event, user = await guest_with_feed(world)
        first = await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(
                event_id=str(event), page_size=2, read_model=feed_pb2.READ_MODEL_V2
            ),
            metadata=Client.pinning(user),
        )
        assert first.next_page_token
        rest = await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(event_id=str(event), page_token=first.next_page_token),
            metadata=Client.pinning(user),
        )
        assert rest.read_model == feed_pb2.READ_MODEL_V2
        expected = [str(e.message_id) for e in feed(world, event, user, "v2")]
        assert [m.message_id for m in (*first.messages, *rest.messages)] == expected
