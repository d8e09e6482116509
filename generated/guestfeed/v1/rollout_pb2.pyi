from guestfeed.v1 import feed_pb2 as _feed_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetReadModelRequest(_message.Message):
    __slots__ = ("event_id", "user_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class GetReadModelResponse(_message.Message):
    __slots__ = ("read_model", "bucket")
    READ_MODEL_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    read_model: _feed_pb2.ReadModel
    bucket: int
    def __init__(self, read_model: _Optional[_Union[_feed_pb2.ReadModel, str]] = ..., bucket: _Optional[int] = ...) -> None: ...
