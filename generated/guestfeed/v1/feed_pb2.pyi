import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReadModel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ_MODEL_UNSPECIFIED: _ClassVar[ReadModel]
    READ_MODEL_V1: _ClassVar[ReadModel]
    READ_MODEL_V2: _ClassVar[ReadModel]

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_TYPE_UNSPECIFIED: _ClassVar[MessageType]
    MESSAGE_TYPE_DIRECT: _ClassVar[MessageType]
    MESSAGE_TYPE_ANNOUNCEMENT: _ClassVar[MessageType]
    MESSAGE_TYPE_CHANNEL: _ClassVar[MessageType]
READ_MODEL_UNSPECIFIED: ReadModel
READ_MODEL_V1: ReadModel
READ_MODEL_V2: ReadModel
MESSAGE_TYPE_UNSPECIFIED: MessageType
MESSAGE_TYPE_DIRECT: MessageType
MESSAGE_TYPE_ANNOUNCEMENT: MessageType
MESSAGE_TYPE_CHANNEL: MessageType

class GuestMessage(_message.Message):
    __slots__ = ("message_id", "content", "created_at", "delivery_status", "sender_name", "sender_avatar_url", "message_type", "is_own_message", "is_delivery_backed")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_STATUS_FIELD_NUMBER: _ClassVar[int]
    SENDER_NAME_FIELD_NUMBER: _ClassVar[int]
    SENDER_AVATAR_URL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    IS_OWN_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IS_DELIVERY_BACKED_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    content: str
    created_at: _timestamp_pb2.Timestamp
    delivery_status: str
    sender_name: str
    sender_avatar_url: str
    message_type: MessageType
    is_own_message: bool
    is_delivery_backed: bool
    def __init__(self, message_id: _Optional[str] = ..., content: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delivery_status: _Optional[str] = ..., sender_name: _Optional[str] = ..., sender_avatar_url: _Optional[str] = ..., message_type: _Optional[_Union[MessageType, str]] = ..., is_own_message: _Optional[bool] = ..., is_delivery_backed: _Optional[bool] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("event_id", "page_size", "page_token", "read_model")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    READ_MODEL_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    page_size: int
    page_token: str
    read_model: ReadModel
    def __init__(self, event_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., read_model: _Optional[_Union[ReadModel, str]] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token", "read_model", "watch_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    READ_MODEL_FIELD_NUMBER: _ClassVar[int]
    WATCH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[GuestMessage]
    next_page_token: str
    read_model: ReadModel
    watch_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[GuestMessage, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., read_model: _Optional[_Union[ReadModel, str]] = ..., watch_token: _Optional[str] = ...) -> None: ...

class StreamMessagesRequest(_message.Message):
    __slots__ = ("event_id", "page_size", "page_token", "read_model", "max_messages")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    READ_MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    page_size: int
    page_token: str
    read_model: ReadModel
    max_messages: int
    def __init__(self, event_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., read_model: _Optional[_Union[ReadModel, str]] = ..., max_messages: _Optional[int] = ...) -> None: ...

class StreamMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token", "read_model", "watch_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    READ_MODEL_FIELD_NUMBER: _ClassVar[int]
    WATCH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[GuestMessage]
    next_page_token: str
    read_model: ReadModel
    watch_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[GuestMessage, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., read_model: _Optional[_Union[ReadModel, str]] = ..., watch_token: _Optional[str] = ...) -> None: ...

class WatchMessagesRequest(_message.Message):
    __slots__ = ("event_id", "read_model", "resume_token")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    READ_MODEL_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    read_model: ReadModel
    resume_token: str
    def __init__(self, event_id: _Optional[str] = ..., read_model: _Optional[_Union[ReadModel, str]] = ..., resume_token: _Optional[str] = ...) -> None: ...

class WatchMessagesResponse(_message.Message):
    __slots__ = ("messages", "resume_token", "read_model")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    READ_MODEL_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[GuestMessage]
    resume_token: str
    read_model: ReadModel
    def __init__(self, messages: _Optional[_Iterable[_Union[GuestMessage, _Mapping]]] = ..., resume_token: _Optional[str] = ..., read_model: _Optional[_Union[ReadModel, str]] = ...) -> None: ...
