import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from guestfeed.v1 import feed_pb2 as _feed_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HashVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HASH_VERSION_UNSPECIFIED: _ClassVar[HashVersion]
    HASH_VERSION_JS_SIMPLE_HASH_V1: _ClassVar[HashVersion]

class DecisionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_REASON_UNSPECIFIED: _ClassVar[DecisionReason]
    DECISION_REASON_DEPLOY_KILL_SWITCH: _ClassVar[DecisionReason]
    DECISION_REASON_KILL_SWITCH: _ClassVar[DecisionReason]
    DECISION_REASON_USER_OVERRIDE: _ClassVar[DecisionReason]
    DECISION_REASON_EVENT_OVERRIDE: _ClassVar[DecisionReason]
    DECISION_REASON_PERCENTAGE: _ClassVar[DecisionReason]
    DECISION_REASON_FAIL_SAFE: _ClassVar[DecisionReason]
HASH_VERSION_UNSPECIFIED: HashVersion
HASH_VERSION_JS_SIMPLE_HASH_V1: HashVersion
DECISION_REASON_UNSPECIFIED: DecisionReason
DECISION_REASON_DEPLOY_KILL_SWITCH: DecisionReason
DECISION_REASON_KILL_SWITCH: DecisionReason
DECISION_REASON_USER_OVERRIDE: DecisionReason
DECISION_REASON_EVENT_OVERRIDE: DecisionReason
DECISION_REASON_PERCENTAGE: DecisionReason
DECISION_REASON_FAIL_SAFE: DecisionReason

class GetReadModelRequest(_message.Message):
    __slots__ = ("event_id", "user_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class GetReadModelResponse(_message.Message):
    __slots__ = ("read_model", "bucket", "reason", "config_revision")
    READ_MODEL_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_REVISION_FIELD_NUMBER: _ClassVar[int]
    read_model: _feed_pb2.ReadModel
    bucket: int
    reason: DecisionReason
    config_revision: int
    def __init__(self, read_model: _Optional[_Union[_feed_pb2.ReadModel, str]] = ..., bucket: _Optional[int] = ..., reason: _Optional[_Union[DecisionReason, str]] = ..., config_revision: _Optional[int] = ...) -> None: ...

class RolloutConfig(_message.Message):
    __slots__ = ("v2_enabled", "v2_percentage", "user_overrides", "event_overrides", "hash_version", "revision", "updated_at", "updated_by")
    class UserOverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _feed_pb2.ReadModel
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_feed_pb2.ReadModel, str]] = ...) -> None: ...
    class EventOverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _feed_pb2.ReadModel
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_feed_pb2.ReadModel, str]] = ...) -> None: ...
    V2_ENABLED_FIELD_NUMBER: _ClassVar[int]
    V2_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    USER_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    EVENT_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    HASH_VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    v2_enabled: bool
    v2_percentage: int
    user_overrides: _containers.ScalarMap[str, _feed_pb2.ReadModel]
    event_overrides: _containers.ScalarMap[str, _feed_pb2.ReadModel]
    hash_version: HashVersion
    revision: int
    updated_at: _timestamp_pb2.Timestamp
    updated_by: str
    def __init__(self, v2_enabled: _Optional[bool] = ..., v2_percentage: _Optional[int] = ..., user_overrides: _Optional[_Mapping[str, _feed_pb2.ReadModel]] = ..., event_overrides: _Optional[_Mapping[str, _feed_pb2.ReadModel]] = ..., hash_version: _Optional[_Union[HashVersion, str]] = ..., revision: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ...) -> None: ...

class GetRolloutConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRolloutConfigResponse(_message.Message):
    __slots__ = ("config", "replica_v2_allowed", "replica_revision")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    REPLICA_V2_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REPLICA_REVISION_FIELD_NUMBER: _ClassVar[int]
    config: RolloutConfig
    replica_v2_allowed: bool
    replica_revision: int
    def __init__(self, config: _Optional[_Union[RolloutConfig, _Mapping]] = ..., replica_v2_allowed: _Optional[bool] = ..., replica_revision: _Optional[int] = ...) -> None: ...

class UpdateRolloutConfigRequest(_message.Message):
    __slots__ = ("config", "expected_revision", "reason")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    config: RolloutConfig
    expected_revision: int
    reason: str
    def __init__(self, config: _Optional[_Union[RolloutConfig, _Mapping]] = ..., expected_revision: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class UpdateRolloutConfigResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: RolloutConfig
    def __init__(self, config: _Optional[_Union[RolloutConfig, _Mapping]] = ...) -> None: ...

class ListRolloutChangesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RolloutChange(_message.Message):
    __slots__ = ("revision", "changed_at", "changed_by", "reason", "before", "after")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    revision: int
    changed_at: _timestamp_pb2.Timestamp
    changed_by: str
    reason: str
    before: RolloutConfig
    after: RolloutConfig
    def __init__(self, revision: _Optional[int] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., changed_by: _Optional[str] = ..., reason: _Optional[str] = ..., before: _Optional[_Union[RolloutConfig, _Mapping]] = ..., after: _Optional[_Union[RolloutConfig, _Mapping]] = ...) -> None: ...

class ListRolloutChangesResponse(_message.Message):
    __slots__ = ("changes", "next_page_token")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[RolloutChange]
    next_page_token: str
    def __init__(self, changes: _Optional[_Iterable[_Union[RolloutChange, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PreviewRolloutChangeRequest(_message.Message):
    __slots__ = ("config", "max_events")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    config: RolloutConfig
    max_events: int
    def __init__(self, config: _Optional[_Union[RolloutConfig, _Mapping]] = ..., max_events: _Optional[int] = ...) -> None: ...

class EventImpact(_message.Message):
    __slots__ = ("event_id", "guests_changing", "guests_to_v2", "guests_to_v1")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    GUESTS_CHANGING_FIELD_NUMBER: _ClassVar[int]
    GUESTS_TO_V2_FIELD_NUMBER: _ClassVar[int]
    GUESTS_TO_V1_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    guests_changing: int
    guests_to_v2: int
    guests_to_v1: int
    def __init__(self, event_id: _Optional[str] = ..., guests_changing: _Optional[int] = ..., guests_to_v2: _Optional[int] = ..., guests_to_v1: _Optional[int] = ...) -> None: ...

class PreviewRolloutChangeResponse(_message.Message):
    __slots__ = ("current_revision", "guests_evaluated", "guests_changing", "guests_to_v2", "guests_to_v1", "events_changing", "events")
    CURRENT_REVISION_FIELD_NUMBER: _ClassVar[int]
    GUESTS_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    GUESTS_CHANGING_FIELD_NUMBER: _ClassVar[int]
    GUESTS_TO_V2_FIELD_NUMBER: _ClassVar[int]
    GUESTS_TO_V1_FIELD_NUMBER: _ClassVar[int]
    EVENTS_CHANGING_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    current_revision: int
    guests_evaluated: int
    guests_changing: int
    guests_to_v2: int
    guests_to_v1: int
    events_changing: int
    events: _containers.RepeatedCompositeFieldContainer[EventImpact]
    def __init__(self, current_revision: _Optional[int] = ..., guests_evaluated: _Optional[int] = ..., guests_changing: _Optional[int] = ..., guests_to_v2: _Optional[int] = ..., guests_to_v1: _Optional[int] = ..., events_changing: _Optional[int] = ..., events: _Optional[_Iterable[_Union[EventImpact, _Mapping]]] = ...) -> None: ...
