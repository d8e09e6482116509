"""Error statuses: INVALID_ARGUMENT with rich details, bugs as INTERNAL, outages as UNAVAILABLE."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_server.api import errors as grpc_errors
from guestfeed_server.domain import errors
from guestfeed_server.domain.budget import Budget
from guestfeed_server.rollout import Decision
from guestfeed_server.storage.errors import translate
from guestfeed_server.storage.migrate import migrate

from .conftest import Client, scratch_database, start_client
from .factory import World
from .helpers import error_info, field_violations, rich_status

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def list_error(client: Client, user: uuid.UUID, **fields: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(**fields), metadata=Client.auth(user)
        )  # type: ignore[arg-type]
    return caught.value


async def stream_error(client: Client, user: uuid.UUID, **fields: object) -> grpc.aio.AioRpcError:
    call = client.feed.StreamMessages(
        feed_pb2.StreamMessagesRequest(**fields), metadata=Client.auth(user)
    )  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            raise AssertionError("an invalid request must fail before any response")
    return caught.value


def assert_invalid(err: grpc.aio.AioRpcError, expected: dict[str, str]) -> dict[str, str]:
    """INVALID_ARGUMENT whose BadRequest names exactly `expected` (field -> reason)."""
    assert err.code() == INVALID, (err.code(), err.details())
    violations = field_violations(err)
    assert set(violations) == set(expected)
    status = rich_status(err)
    assert status is not None
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == err.details()
    reasons = {}
    for any_ in status.details:
        if any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
            reasons = {v.field: v.reason for v in bad.field_violations}
    assert reasons == expected
    info = error_info(err)
    assert info is not None
    assert info.domain == "guestfeed.v1"
    single = next(iter(expected.values())) if len(expected) == 1 else None
    assert info.reason == (single or "INVALID_ARGUMENT")
    for name, description in violations.items():
        assert description
        assert f"{name}: {description}" in (err.details() or "")
    return violations


@pytest.fixture
async def guest_feed(world: World) -> tuple[uuid.UUID, uuid.UUID, int]:
    """(event, user, feed length): a guest with a small feed in both models."""
    event = await world.event()
    user, guest = await world.member(event)
    for _ in range(5):
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=guest, user_id=user)
    return event, user, 5


class TestInvalidArgument:
    async def test_empty_event_id_is_required(self, client: Client) -> None:
        """An empty event_id is INVALID_ARGUMENT with a REQUIRED violation on event_id."""
        err = await list_error(client, uuid.uuid4(), event_id="")
        violations = assert_invalid(err, {"event_id": "REQUIRED"})
        assert "UUID" in violations["event_id"]

    @pytest.mark.parametrize(
        "event_id",
        [
            "abc",
            "12345678-1234-1234-1234-12345678901",
            "g2345678-1234-1234-1234-123456789012",
            " ",
            "null",
        ],
    )
    async def test_non_uuid_event_id_is_invalid(self, client: Client, event_id: str) -> None:
        """A non-UUID event_id is INVALID_ARGUMENT, quoting what was sent."""
        err = await list_error(client, uuid.uuid4(), event_id=event_id)
        violations = assert_invalid(err, {"event_id": "INVALID_UUID"})
        assert repr(event_id) in violations["event_id"]

    async def test_long_event_id_is_quoted_truncated(self, client: Client) -> None:
        """A huge bad event_id is quoted only in part, so errors stay small."""
        err = await list_error(client, uuid.uuid4(), event_id="x" * 10_000)
        violations = assert_invalid(err, {"event_id": "INVALID_UUID"})
        assert len(err.details() or "") < 300
        assert "x" * 65 not in violations["event_id"]

    @pytest.mark.parametrize("page_size", [-1, -50, -(2**31)])
    async def test_negative_page_size_is_invalid(self, client: Client, page_size: int) -> None:
        """A negative page_size is INVALID_ARGUMENT naming page_size and the value sent."""
        err = await list_error(
            client, uuid.uuid4(), event_id=str(uuid.uuid4()), page_size=page_size
        )
        violations = assert_invalid(err, {"page_size": "PAGE_SIZE_NEGATIVE"})
        assert str(page_size) in violations["page_size"]

    @pytest.mark.parametrize("read_model", [3, 7, 1000, -1])
    async def test_unknown_read_model_is_invalid(self, client: Client, read_model: int) -> None:
        """An enum number outside ReadModel is INVALID_ARGUMENT naming the accepted values."""
        err = await list_error(
            client, uuid.uuid4(), event_id=str(uuid.uuid4()), read_model=read_model
        )
        violations = assert_invalid(err, {"read_model": "UNKNOWN_ENUM_VALUE"})
        assert str(read_model) in violations["read_model"]
        assert "READ_MODEL_V1" in violations["read_model"]

    async def test_negative_max_messages_is_invalid(self, client: Client) -> None:
        """StreamMessages with max_messages < 0 is INVALID_ARGUMENT before any response."""
        err = await stream_error(client, uuid.uuid4(), event_id=str(uuid.uuid4()), max_messages=-3)
        violations = assert_invalid(err, {"max_messages": "MAX_MESSAGES_NEGATIVE"})
        assert "-3" in violations["max_messages"]

    async def test_garbage_page_token_is_invalid(self, client: Client) -> None:
        """A page_token the service never issued is INVALID_ARGUMENT: pass tokens unchanged."""
        err = await list_error(client, uuid.uuid4(), event_id=str(uuid.uuid4()), page_token="abc")
        violations = assert_invalid(err, {"page_token": "PAGE_TOKEN_MALFORMED"})
        assert "unchanged" in violations["page_token"]

    async def test_every_bad_field_is_reported_at_once(self, client: Client) -> None:
        """Several bad fields in one request produce one violation per field, all together."""
        err = await stream_error(
            client,
            uuid.uuid4(),
            event_id="nope",
            page_size=-1,
            page_token="t" * 600,
            read_model=7,
            max_messages=-1,
        )
        assert_invalid(
            err,
            {
                "event_id": "INVALID_UUID",
                "page_size": "PAGE_SIZE_NEGATIVE",
                "page_token": "PAGE_TOKEN_MALFORMED",
                "read_model": "UNKNOWN_ENUM_VALUE",
                "max_messages": "MAX_MESSAGES_NEGATIVE",
            },
        )

    async def test_list_reports_every_bad_field(self, client: Client) -> None:
        """ListMessages reports an empty event_id, negative page_size and unknown model together."""
        err = await list_error(client, uuid.uuid4(), event_id="", page_size=-5, read_model=9)
        assert_invalid(
            err,
            {
                "event_id": "REQUIRED",
                "page_size": "PAGE_SIZE_NEGATIVE",
                "read_model": "UNKNOWN_ENUM_VALUE",
            },
        )

    async def test_validation_precedes_access_check(self, client: Client, world: World) -> None:
        """A non-guest sending a bad page_size learns about the page_size, not about access."""
        event = await world.event()
        err = await list_error(client, await world.user(), event_id=str(event), page_size=-1)
        assert err.code() == INVALID

    async def test_non_guest_with_valid_request_is_denied(
        self, client: Client, world: World
    ) -> None:
        """A valid request from a non-guest is PERMISSION_DENIED with NOT_EVENT_GUEST details."""
        event = await world.event()
        err = await list_error(client, await world.user(), event_id=str(event))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(err)
        assert info is not None
        assert (info.domain, info.reason) == ("guestfeed.v1", "NOT_EVENT_GUEST")
        assert dict(info.metadata) == {"event_id": str(event)}


class TestNeverInternal:
    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(event_id=st.text(max_size=80) | st.uuids().map(str) | st.uuids().map(lambda u: u.hex))
    async def test_arbitrary_event_id(self, client: Client, event_id: str) -> None:
        """Any event_id string is either a UUID (then PERMISSION_DENIED) or INVALID_ARGUMENT."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=event_id), metadata=Client.auth(uuid.uuid4())
            )
        err = caught.value
        try:
            uuid.UUID(event_id)
        except ValueError:
            assert_invalid(err, {"event_id": "INVALID_UUID" if event_id else "REQUIRED"})
        else:
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (err.code(), err.details())

    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(page_size=st.integers(-(2**31), 2**31 - 1) | st.integers(-3, 8))
    async def test_arbitrary_page_size(
        self, client: Client, guest_feed: tuple[uuid.UUID, uuid.UUID, int], page_size: int
    ) -> None:
        """Any int32 page_size serves min(coerced size, feed) messages or is INVALID_ARGUMENT."""
        event, user, total = guest_feed
        request = feed_pb2.ListMessagesRequest(event_id=str(event), page_size=page_size)
        if page_size < 0:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.feed.ListMessages(request, metadata=Client.auth(user))
            assert_invalid(caught.value, {"page_size": "PAGE_SIZE_NEGATIVE"})
            return
        resp = await client.feed.ListMessages(request, metadata=Client.auth(user))
        size = 50 if page_size == 0 else min(page_size, 200)
        assert len(resp.messages) == min(size, total)
        assert bool(resp.next_page_token) == (size < total)

    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        token=st.text(max_size=120)
        | st.binary(min_size=40, max_size=80).map(
            lambda b: __import__("base64").urlsafe_b64encode(b).rstrip(b"=").decode()
        )
    )
    async def test_arbitrary_page_token(
        self, client: Client, guest_feed: tuple[uuid.UUID, uuid.UUID, int], token: str
    ) -> None:
        """Any forged page_token is INVALID_ARGUMENT on page_token (an empty one starts over)."""
        event, user, _ = guest_feed
        request = feed_pb2.ListMessagesRequest(event_id=str(event), page_token=token)
        if not token:
            resp = await client.feed.ListMessages(request, metadata=Client.auth(user))
            assert len(resp.messages) == 5
            return
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.feed.ListMessages(request, metadata=Client.auth(user))
        assert_invalid(caught.value, {"page_token": "PAGE_TOKEN_MALFORMED"})


# Every domain error class and the canonical code it must become.
CODES = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class TestErrorMap:
    def test_every_domain_error_class_is_mapped(self) -> None:
        """Each GuestFeedError subclass in errors.py has a code (none falls through to INTERNAL)."""
        defined = {
            obj
            for obj in vars(errors).values()
            if isinstance(obj, type)
            and issubclass(obj, errors.GuestFeedError)
            and obj is not errors.GuestFeedError
        }
        assert defined == set(CODES)

    @pytest.mark.parametrize("cls", list(CODES), ids=lambda c: c.__name__)
    def test_to_status_maps_class_to_code(self, cls: type[errors.GuestFeedError]) -> None:
        """to_status gives the class's code, its message and ErrorInfo(reason, domain, metadata)."""
        err = cls("what to fix", "SOME_REASON", {"k": "v"})
        code, status = grpc_errors.to_status(err)
        assert code == CODES[cls]
        assert status.code == getattr(code_pb2, code.name)
        assert status.message == "what to fix"
        infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
        assert len(infos) == 1
        info = error_details_pb2.ErrorInfo()
        infos[0].Unpack(info)
        assert (info.reason, info.domain, dict(info.metadata)) == (
            "SOME_REASON",
            "guestfeed.v1",
            {"k": "v"},
        )
        assert not any(d.Is(error_details_pb2.BadRequest.DESCRIPTOR) for d in status.details)

    def test_invalid_argument_carries_bad_request(self) -> None:
        """InvalidArgument.of puts every violation, in order, into a BadRequest detail."""
        err = errors.InvalidArgument.of(
            errors.FieldViolation("a", "is bad", "A_BAD"), errors.FieldViolation("b", "is worse")
        )
        code, status = grpc_errors.to_status(err)
        assert code == INVALID
        assert status.message == "a: is bad; b: is worse"
        bad = error_details_pb2.BadRequest()
        [packed] = [d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
        packed.Unpack(bad)
        assert [(v.field, v.description, v.reason) for v in bad.field_violations] == [
            ("a", "is bad", "A_BAD"),
            ("b", "is worse", ""),
        ]

    def test_subclass_maps_to_its_parents_code(self) -> None:
        """A subclass of a mapped error takes its parent's code."""

        class TokenRevoked(errors.Unauthenticated):
            pass

        code, _ = grpc_errors.to_status(TokenRevoked("revoked", "TOKEN_REVOKED"))
        assert code == grpc.StatusCode.UNAUTHENTICATED

    @pytest.mark.parametrize(
        "exc",
        [
            ValueError("x"),
            KeyError("k"),
            AttributeError("a"),
            ZeroDivisionError(),
            AssertionError(),
            asyncpg.exceptions.UndefinedColumnError("column does not exist"),
            asyncpg.exceptions.SyntaxOrAccessError("syntax"),
            asyncpg.exceptions.LockNotAvailableError("lock"),
            asyncpg.exceptions.ObjectInUseError("in use"),
        ],
        ids=lambda e: type(e).__name__,
    )
    def test_bugs_are_not_translated(self, exc: BaseException) -> None:
        """Programming errors and SQL mistakes translate to None (a bug, hence INTERNAL)."""
        assert translate(exc, Budget(5)) is None

    @pytest.mark.parametrize(
        "exc",
        [
            ConnectionRefusedError(),
            OSError("network down"),
            asyncpg.exceptions.ConnectionDoesNotExistError("gone"),
            asyncpg.exceptions.CannotConnectNowError("starting up"),
            asyncpg.exceptions.TooManyConnectionsError("full"),
            asyncpg.exceptions.InterfaceError("closed"),
            asyncpg.exceptions.AdminShutdownError("terminating connection"),
            asyncpg.exceptions.CrashShutdownError("crash"),
            asyncpg.exceptions.DatabaseDroppedError("dropped"),
            asyncpg.exceptions.ObjectNotInPrerequisiteStateError("not accepting connections"),
        ],
        ids=lambda e: type(e).__name__,
    )
    def test_connection_failures_are_unavailable(self, exc: BaseException) -> None:
        """Connection-level database failures translate to Unavailable (retryable)."""
        err = translate(exc, Budget.of(5, 10.0))
        assert isinstance(err, errors.Unavailable)
        assert err.reason == "DATABASE_UNAVAILABLE"

    @pytest.mark.parametrize(
        "exc",
        [TimeoutError(), asyncpg.exceptions.QueryCanceledError("c")],
        ids=lambda e: type(e).__name__,
    )
    def test_timeouts_split_on_the_deadline(self, exc: BaseException) -> None:
        """A timeout with the deadline spent is DEADLINE_EXCEEDED, else UNAVAILABLE (slow DB)."""
        assert isinstance(translate(exc, Budget.of(5, 0.0)), errors.DeadlineExceeded)
        slow = translate(exc, Budget.of(5, 3.0))
        assert isinstance(slow, errors.Unavailable) and slow.reason == "DATABASE_TIMEOUT"
        no_deadline = translate(exc, Budget(5))
        assert isinstance(no_deadline, errors.Unavailable)

    def test_domain_errors_translate_to_themselves(self) -> None:
        """A GuestFeedError passes through translate unchanged."""
        err = errors.NotFound("no such thing", "NOT_FOUND")
        assert translate(err, Budget(5)) is err


class BrokenPolicy:
    """A rollout policy with a bug in it."""

    def decide(self, event_id: uuid.UUID, user_id: uuid.UUID) -> Decision:
        raise RuntimeError("secret-internal-detail: boom")


@pytest.fixture
async def broken_client(admin_dsn: str) -> AsyncIterator[Client]:
    """A server whose rollout policy raises an unexpected exception."""
    c = await start_client(admin_dsn, rollout=BrokenPolicy())
    yield c
    await c.stop()


class TestBugsBecomeInternal:
    async def test_unary_bug_is_generic_internal(
        self, broken_client: Client, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A unary bug is INTERNAL 'internal error' to the caller; the traceback goes to the log."""
        user = uuid.uuid4()
        with (
            caplog.at_level(logging.ERROR, logger="guestfeed_server.api.errors"),
            pytest.raises(grpc.aio.AioRpcError) as caught,
        ):
            await broken_client.rollout.GetReadModel(
                rollout_pb2.GetReadModelRequest(event_id=str(uuid.uuid4()), user_id=str(user)),
                metadata=Client.auth(user),
            )
        err = caught.value
        assert err.code() == grpc.StatusCode.INTERNAL
        assert err.details() == "internal error"
        assert rich_status(err) is None
        assert "secret-internal-detail" not in str(err.trailing_metadata())
        logged = [r for r in caplog.records if r.exc_info]
        assert logged and "secret-internal-detail" in str(logged[0].exc_info[1])  # type: ignore[index]

    async def test_stream_bug_is_generic_internal(
        self, broken_client: Client, world: World
    ) -> None:
        """A bug inside StreamMessages (the rollout consulted) is INTERNAL 'internal error'."""
        event = await world.event()
        user, _ = await world.member(event)
        call = broken_client.feed.StreamMessages(
            feed_pb2.StreamMessagesRequest(event_id=str(event)), metadata=Client.auth(user)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                raise AssertionError("no page before the failure")
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert caught.value.details() == "internal error"

    async def test_expected_errors_still_map_on_a_broken_server(
        self, broken_client: Client
    ) -> None:
        """The bug path does not swallow expected errors: a bad request is INVALID_ARGUMENT."""
        err = await list_error(broken_client, uuid.uuid4(), event_id="bad")
        assert_invalid(err, {"event_id": "INVALID_UUID"})

    async def test_explicit_model_still_consults_the_broken_policy(
        self, broken_client: Client, world: World
    ) -> None:
        """An explicit read_model is checked against the kill switches too, so a broken
        rollout is INTERNAL for it as well: nothing gets around the switches."""
        event = await world.event()
        user, _ = await world.member(event)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await broken_client.feed.ListMessages(
                feed_pb2.ListMessagesRequest(
                    event_id=str(event), read_model=feed_pb2.READ_MODEL_V2
                ),
                metadata=Client.pinning(user),
            )
        assert caught.value.code() == grpc.StatusCode.INTERNAL


class TestDatabaseOutage:
    async def test_unreachable_database_is_unavailable(self, server_dsn: str) -> None:
        """A database refusing connections makes ListMessages UNAVAILABLE, never INTERNAL."""
        async with scratch_database(server_dsn, "guestfeed_outage") as (name, dsn):
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            arrange = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
            assert arrange is not None
            world = World(arrange)
            event = await world.event()
            user, guest = await world.member(event)
            mid = await world.message(event, "announcement")
            await world.deliver(mid, guest_id=guest, user_id=user)
            await arrange.close()

            root = await asyncpg.connect(server_dsn)
            c = await start_client(dsn, GUESTFEED_QUERY_TIMEOUT_S="2")
            try:
                request = feed_pb2.ListMessagesRequest(event_id=str(event))
                ok = await c.feed.ListMessages(request, metadata=Client.auth(user))
                assert [m.message_id for m in ok.messages] == [str(mid)]

                await root.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                await root.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    name,
                )
                # Every call fails the same way: the first meets a dead pooled
                # connection, later ones a refused reconnect.
                for _ in range(3):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await c.feed.ListMessages(request, metadata=Client.auth(user), timeout=10)
                    err = caught.value
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
                    assert "retry" in (err.details() or "")
                    info = error_info(err)
                    assert info is not None and info.domain == "guestfeed.v1"
                    assert info.reason in ("DATABASE_UNAVAILABLE", "DATABASE_TIMEOUT")

                await root.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                for _ in range(50):
                    try:
                        again = await c.feed.ListMessages(request, metadata=Client.auth(user))
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE
                        await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the service did not recover after the database came back")
                assert [m.message_id for m in again.messages] == [str(mid)]
            finally:
                await c.stop()
                await root.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                await root.close()
