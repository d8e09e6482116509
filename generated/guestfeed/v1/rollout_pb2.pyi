import datetime

from google.protobuf import duration_pb2 as _duration_pb2
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

class V1OnlyReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    V1_ONLY_REASON_UNSPECIFIED: _ClassVar[V1OnlyReason]
    V1_ONLY_REASON_TAGS_NO_LONGER_MATCH: _ClassVar[V1OnlyReason]
    V1_ONLY_REASON_CHANNEL_WITHOUT_SCHEDULED_MESSAGE: _ClassVar[V1OnlyReason]
    V1_ONLY_REASON_DIRECT_DELIVERY_TO_NEITHER: _ClassVar[V1OnlyReason]
    V1_ONLY_REASON_GUEST_ROW_REMOVED: _ClassVar[V1OnlyReason]
    V1_ONLY_REASON_OTHER: _ClassVar[V1OnlyReason]
HASH_VERSION_UNSPECIFIED: HashVersion
HASH_VERSION_JS_SIMPLE_HASH_V1: HashVersion
DECISION_REASON_UNSPECIFIED: DecisionReason
DECISION_REASON_DEPLOY_KILL_SWITCH: DecisionReason
DECISION_REASON_KILL_SWITCH: DecisionReason
DECISION_REASON_USER_OVERRIDE: DecisionReason
DECISION_REASON_EVENT_OVERRIDE: DecisionReason
DECISION_REASON_PERCENTAGE: DecisionReason
DECISION_REASON_FAIL_SAFE: DecisionReason
V1_ONLY_REASON_UNSPECIFIED: V1OnlyReason
V1_ONLY_REASON_TAGS_NO_LONGER_MATCH: V1OnlyReason
V1_ONLY_REASON_CHANNEL_WITHOUT_SCHEDULED_MESSAGE: V1OnlyReason
V1_ONLY_REASON_DIRECT_DELIVERY_TO_NEITHER: V1OnlyReason
V1_ONLY_REASON_GUEST_ROW_REMOVED: V1OnlyReason
V1_ONLY_REASON_OTHER: V1OnlyReason

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
    __slots__ = ("v2_enabled", "v2_percentage", "user_overrides", "event_overrides", "hash_version", "revision", "updated_at", "updated_by", "shadow_sample_rate", "guard", "guard_enabled")
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
    SHADOW_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    GUARD_ENABLED_FIELD_NUMBER: _ClassVar[int]
    v2_enabled: bool
    v2_percentage: int
    user_overrides: _containers.ScalarMap[str, _feed_pb2.ReadModel]
    event_overrides: _containers.ScalarMap[str, _feed_pb2.ReadModel]
    hash_version: HashVersion
    revision: int
    updated_at: _timestamp_pb2.Timestamp
    updated_by: str
    shadow_sample_rate: float
    guard: GuardConfig
    guard_enabled: bool
    def __init__(self, v2_enabled: _Optional[bool] = ..., v2_percentage: _Optional[int] = ..., user_overrides: _Optional[_Mapping[str, _feed_pb2.ReadModel]] = ..., event_overrides: _Optional[_Mapping[str, _feed_pb2.ReadModel]] = ..., hash_version: _Optional[_Union[HashVersion, str]] = ..., revision: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ..., shadow_sample_rate: _Optional[float] = ..., guard: _Optional[_Union[GuardConfig, _Mapping]] = ..., guard_enabled: _Optional[bool] = ...) -> None: ...

class GuardConfig(_message.Message):
    __slots__ = ("window_seconds", "min_requests", "max_error_share", "max_avg_latency_ms", "max_p95_latency_ms", "act_on_shadow_v1_only")
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_SHARE_FIELD_NUMBER: _ClassVar[int]
    MAX_AVG_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_P95_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ACT_ON_SHADOW_V1_ONLY_FIELD_NUMBER: _ClassVar[int]
    window_seconds: int
    min_requests: int
    max_error_share: float
    max_avg_latency_ms: float
    max_p95_latency_ms: float
    act_on_shadow_v1_only: bool
    def __init__(self, window_seconds: _Optional[int] = ..., min_requests: _Optional[int] = ..., max_error_share: _Optional[float] = ..., max_avg_latency_ms: _Optional[float] = ..., max_p95_latency_ms: _Optional[float] = ..., act_on_shadow_v1_only: _Optional[bool] = ...) -> None: ...

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

class CompareReadModelsRequest(_message.Message):
    __slots__ = ("event_id", "user_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class V1OnlyMessage(_message.Message):
    __slots__ = ("message_id", "message_type", "reason", "detail", "created_at")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    message_type: _feed_pb2.MessageType
    reason: V1OnlyReason
    detail: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., message_type: _Optional[_Union[_feed_pb2.MessageType, str]] = ..., reason: _Optional[_Union[V1OnlyReason, str]] = ..., detail: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MessageTypeCount(_message.Message):
    __slots__ = ("message_type", "count")
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    message_type: _feed_pb2.MessageType
    count: int
    def __init__(self, message_type: _Optional[_Union[_feed_pb2.MessageType, str]] = ..., count: _Optional[int] = ...) -> None: ...

class GuestComparison(_message.Message):
    __slots__ = ("user_id", "v1_count", "v2_count", "common_count", "v1_only", "v2_only", "guests_total")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    V1_COUNT_FIELD_NUMBER: _ClassVar[int]
    V2_COUNT_FIELD_NUMBER: _ClassVar[int]
    COMMON_COUNT_FIELD_NUMBER: _ClassVar[int]
    V1_ONLY_FIELD_NUMBER: _ClassVar[int]
    V2_ONLY_FIELD_NUMBER: _ClassVar[int]
    GUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    v1_count: int
    v2_count: int
    common_count: int
    v1_only: _containers.RepeatedCompositeFieldContainer[V1OnlyMessage]
    v2_only: _containers.RepeatedCompositeFieldContainer[MessageTypeCount]
    guests_total: int
    def __init__(self, user_id: _Optional[str] = ..., v1_count: _Optional[int] = ..., v2_count: _Optional[int] = ..., common_count: _Optional[int] = ..., v1_only: _Optional[_Iterable[_Union[V1OnlyMessage, _Mapping]]] = ..., v2_only: _Optional[_Iterable[_Union[MessageTypeCount, _Mapping]]] = ..., guests_total: _Optional[int] = ...) -> None: ...

class V1OnlyReasonCount(_message.Message):
    __slots__ = ("reason", "count")
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    reason: V1OnlyReason
    count: int
    def __init__(self, reason: _Optional[_Union[V1OnlyReason, str]] = ..., count: _Optional[int] = ...) -> None: ...

class ComparisonSummary(_message.Message):
    __slots__ = ("event_id", "guests_compared", "guests_with_v1_only", "v1_only_total", "v1_only_by_reason", "elapsed", "snapshot_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    GUESTS_COMPARED_FIELD_NUMBER: _ClassVar[int]
    GUESTS_WITH_V1_ONLY_FIELD_NUMBER: _ClassVar[int]
    V1_ONLY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    V1_ONLY_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    guests_compared: int
    guests_with_v1_only: int
    v1_only_total: int
    v1_only_by_reason: _containers.RepeatedCompositeFieldContainer[V1OnlyReasonCount]
    elapsed: _duration_pb2.Duration
    snapshot_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., guests_compared: _Optional[int] = ..., guests_with_v1_only: _Optional[int] = ..., v1_only_total: _Optional[int] = ..., v1_only_by_reason: _Optional[_Iterable[_Union[V1OnlyReasonCount, _Mapping]]] = ..., elapsed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., snapshot_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompareReadModelsResponse(_message.Message):
    __slots__ = ("guest", "summary")
    GUEST_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    guest: GuestComparison
    summary: ComparisonSummary
    def __init__(self, guest: _Optional[_Union[GuestComparison, _Mapping]] = ..., summary: _Optional[_Union[ComparisonSummary, _Mapping]] = ...) -> None: ...

class GetGuardStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GuardSignal(_message.Message):
    __slots__ = ("name", "value", "threshold", "breached", "event_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BREACHED_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    threshold: float
    breached: bool
    event_id: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., breached: _Optional[bool] = ..., event_id: _Optional[str] = ...) -> None: ...

class GuardAction(_message.Message):
    __slots__ = ("revision", "changed_at", "reason", "changed_by")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    revision: int
    changed_at: _timestamp_pb2.Timestamp
    reason: str
    changed_by: str
    def __init__(self, revision: _Optional[int] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., changed_by: _Optional[str] = ...) -> None: ...

class GetGuardStatusResponse(_message.Message):
    __slots__ = ("enabled", "replica", "window_seconds", "v2_requests", "v2_failures", "min_requests", "enough_data", "signals", "last_action")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    V2_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    V2_FAILURES_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ENOUGH_DATA_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTION_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    replica: str
    window_seconds: int
    v2_requests: int
    v2_failures: int
    min_requests: int
    enough_data: bool
    signals: _containers.RepeatedCompositeFieldContainer[GuardSignal]
    last_action: GuardAction
    def __init__(self, enabled: _Optional[bool] = ..., replica: _Optional[str] = ..., window_seconds: _Optional[int] = ..., v2_requests: _Optional[int] = ..., v2_failures: _Optional[int] = ..., min_requests: _Optional[int] = ..., enough_data: _Optional[bool] = ..., signals: _Optional[_Iterable[_Union[GuardSignal, _Mapping]]] = ..., last_action: _Optional[_Union[GuardAction, _Mapping]] = ...) -> None: ...
