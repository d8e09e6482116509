"""Request validation and proto <-> domain mapping, shared by the servicers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from guestfeed.v1 import feed_pb2

from ..auth import Authenticator, Principal
from ..errors import FieldViolation, InvalidArgument
from ..feed import FeedQuery
from ..model import FeedMessage, MessageType, ReadModel
from ..pagination import MAX_PAGE_SIZE, coerce_page_size

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
    size = 0
    try:
        size = coerce_page_size(page_size)
    except InvalidArgument as exc:
        violations.extend(exc.violations)
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
    return FeedQuery(event, min(size, MAX_PAGE_SIZE), page_token, model, max_messages)


def read_model_pb(model: ReadModel) -> feed_pb2.ReadModel:
    """The proto enum value of a read model."""
    return _MODEL_TO_PB[model]


def timestamp_pb(at: datetime) -> Timestamp:
    """An aware datetime as a Timestamp, exactly (microseconds), with integer
    arithmetic: Timestamp.FromDatetime goes through time tuples and is the
    costliest step of building a page."""
    micros = (at - _EPOCH) // _MICROSECOND
    seconds, rest = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=rest * 1000)


def message_pb(msg: FeedMessage) -> feed_pb2.GuestMessage:
    """Maps a feed entry to its proto."""
    return feed_pb2.GuestMessage(
        message_id=str(msg.message_id),
        content=msg.content,
        created_at=timestamp_pb(msg.created_at),
        delivery_status=msg.delivery_status,
        sender_name=msg.sender_name,
        sender_avatar_url=msg.sender_avatar_url,
        message_type=_TYPE_TO_PB[msg.message_type],
        is_own_message=msg.is_own_message,
        is_delivery_backed=msg.is_delivery_backed,
    )
