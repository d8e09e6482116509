"""Request validation and proto <-> domain mapping, shared by the servicers."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from guestfeed.v1 import feed_pb2

from ..auth import Authenticator, Principal
from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.model import FeedMessage, MessageType, ReadModel
from ..feed import FeedPage, FeedQuery
from ..feed.query import coerce_page_size, page_size_violation
from ..feed.watch import WatchQuery, WatchUpdate

_MODEL_TO_PB = {ReadModel.V1: feed_pb2.READ_MODEL_V1, ReadModel.V2: feed_pb2.READ_MODEL_V2}
_PB_TO_MODEL = {v: k for k, v in _MODEL_TO_PB.items()}
_TYPE_TO_PB = {
    MessageType.DIRECT: feed_pb2.MESSAGE_TYPE_DIRECT,
    MessageType.ANNOUNCEMENT: feed_pb2.MESSAGE_TYPE_ANNOUNCEMENT,
    MessageType.CHANNEL: feed_pb2.MESSAGE_TYPE_CHANNEL,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Far more than any real token; refuses megabyte strings before decoding.
_MAX_TOKEN_CHARS = 512


def principal(auth: Authenticator, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
    """Authenticates the RPC's caller from its metadata."""
    metadata = context.invocation_metadata() or ()
    return auth.authenticate([(k, v) for k, v in metadata])


def uuid_field(value: str, field: str, violations: list[FieldViolation]) -> uuid.UUID | None:
    """Parses a required UUID field, recording a violation when it is not one."""
    if not value:
        violations.append(FieldViolation(field, "is required (a UUID)", "REQUIRED"))
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        violations.append(
            FieldViolation(
                field,
                f"must be a UUID like 3f2c1a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f, got {value[:64]!r}",
                "INVALID_UUID",
            )
        )
        return None


def read_model_field(value: int, violations: list[FieldViolation]) -> ReadModel | None:
    """UNSPECIFIED -> None (the rollout decides); unknown numbers are rejected."""
    if value == feed_pb2.READ_MODEL_UNSPECIFIED:
        return None
    model = next((m for pb, m in _PB_TO_MODEL.items() if pb == value), None)
    if model is None:
        violations.append(
            FieldViolation(
                "read_model",
                f"unknown value {value}; use READ_MODEL_V1, READ_MODEL_V2 or leave it unset",
                "UNKNOWN_ENUM_VALUE",
            )
        )
    return model


def feed_query(
    *, event_id: str, page_size: int, page_token: str, read_model: int, max_messages: int = 0
) -> FeedQuery:
    """Validates the fields both feed RPCs share; every problem is reported at once."""
    violations: list[FieldViolation] = []
    event = uuid_field(event_id, "event_id", violations)
    size_violation = page_size_violation(page_size)
    if size_violation is not None:
        violations.append(size_violation)
    if len(page_token) > _MAX_TOKEN_CHARS:
        violations.append(
            FieldViolation(
                "page_token",
                "is longer than any token this service issues; pass next_page_token unchanged",
                "PAGE_TOKEN_MALFORMED",
            )
        )
    model = read_model_field(read_model, violations)
    if max_messages < 0:
        violations.append(
            FieldViolation(
                "max_messages",
                f"must be >= 0 (0 means no limit), got {max_messages}",
                "MAX_MESSAGES_NEGATIVE",
            )
        )
    if violations or event is None:
        raise InvalidArgument.of(*violations)
    return FeedQuery(event, coerce_page_size(page_size), page_token, model, max_messages)


def list_query(request: feed_pb2.ListMessagesRequest) -> FeedQuery:
    """A validated ListMessages request."""
    return feed_query(
        event_id=request.event_id,
        page_size=request.page_size,
        page_token=request.page_token,
        read_model=request.read_model,
    )


def stream_query(request: feed_pb2.StreamMessagesRequest) -> FeedQuery:
    """A validated StreamMessages request."""
    return feed_query(
        event_id=request.event_id,
        page_size=request.page_size,
        page_token=request.page_token,
        read_model=request.read_model,
        max_messages=request.max_messages,
    )


def watch_query(request: feed_pb2.WatchMessagesRequest) -> WatchQuery:
    """A validated WatchMessages request; every problem is reported at once."""
    violations: list[FieldViolation] = []
    event = uuid_field(request.event_id, "event_id", violations)
    if len(request.resume_token) > _MAX_TOKEN_CHARS:
        violations.append(
            FieldViolation(
                "resume_token",
                "is longer than any token this service issues; pass resume_token unchanged",
                "WATCH_TOKEN_MALFORMED",
            )
        )
    model = read_model_field(request.read_model, violations)
    if violations or event is None:
        raise InvalidArgument.of(*violations)
    return WatchQuery(event, model, request.resume_token)


def watch_response(update: WatchUpdate) -> feed_pb2.WatchMessagesResponse:
    """An update as WatchMessages streams it."""
    response = feed_pb2.WatchMessagesResponse(
        resume_token=update.resume_token, read_model=read_model_pb(update.read_model)
    )
    add_messages(response.messages, update.messages)
    return response


def list_response(page: FeedPage) -> feed_pb2.ListMessagesResponse:
    """A page as ListMessages answers it."""
    response = feed_pb2.ListMessagesResponse(
        next_page_token=page.next_page_token,
        read_model=read_model_pb(page.read_model),
        watch_token=page.watch_token,
    )
    add_messages(response.messages, page.messages)
    return response


def stream_response(page: FeedPage) -> feed_pb2.StreamMessagesResponse:
    """A page as StreamMessages streams it."""
    response = feed_pb2.StreamMessagesResponse(
        next_page_token=page.next_page_token,
        read_model=read_model_pb(page.read_model),
        watch_token=page.watch_token,
    )
    add_messages(response.messages, page.messages)
    return response


def message_type_pb(message_type: MessageType) -> feed_pb2.MessageType:
    """The proto enum value of a message type."""
    return _TYPE_TO_PB[message_type]


def read_model_pb(model: ReadModel) -> feed_pb2.ReadModel:
    """The proto enum value of a read model."""
    return _MODEL_TO_PB[model]


def add_messages(
    out: RepeatedCompositeFieldContainer[feed_pb2.GuestMessage], messages: Iterable[FeedMessage]
) -> None:
    """Appends feed entries to a response's `messages`, built in place.

    This is the costliest Python step of a page, so it avoids two copies:
    `out.add(...)` builds each message inside the response (a list of
    separate messages given to the response's constructor is copied again),
    and the Timestamp is set in place with integer arithmetic, exactly to the
    microsecond (`Timestamp.FromDatetime` goes through time tuples). The
    saving is measured in docs/performance.md.
    """
    add = out.add
    for msg in messages:
        seconds, micros = divmod((msg.created_at - _EPOCH) // _MICROSECOND, 1_000_000)
        pb = add(
            message_id=str(msg.message_id),
            content=msg.content,
            delivery_status=msg.delivery_status,
            sender_name=msg.sender_name,
            message_type=_TYPE_TO_PB[msg.message_type],
        )
        # Set only when not the proto3 default (most rows): fewer field writes.
        if msg.sender_avatar_url:
            pb.sender_avatar_url = msg.sender_avatar_url
        if msg.is_own_message:
            pb.is_own_message = True
        if msg.is_delivery_backed:
            pb.is_delivery_backed = True
        at = pb.created_at
        at.seconds = seconds
        at.nanos = micros * 1000
