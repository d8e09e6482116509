"""RolloutService's proto <-> domain mapping and validation."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from guestfeed.v1 import feed_pb2, rollout_pb2

from ..domain.errors import FieldViolation
from ..domain.model import ReadModel
from ..rollout import GuardConfig, HashVersion, Proposal, Reason, RolloutConfig
from ..rollout.preview import Impact
from ..rollout.store import Change
from .convert import read_model_pb

_REASONS = {
    Reason.DEPLOY_KILL_SWITCH: rollout_pb2.DECISION_REASON_DEPLOY_KILL_SWITCH,
    Reason.KILL_SWITCH: rollout_pb2.DECISION_REASON_KILL_SWITCH,
    Reason.USER_OVERRIDE: rollout_pb2.DECISION_REASON_USER_OVERRIDE,
    Reason.EVENT_OVERRIDE: rollout_pb2.DECISION_REASON_EVENT_OVERRIDE,
    Reason.PERCENTAGE: rollout_pb2.DECISION_REASON_PERCENTAGE,
    Reason.FAIL_SAFE: rollout_pb2.DECISION_REASON_FAIL_SAFE,
}
_HASHES = {HashVersion.JS_SIMPLE_HASH_V1: rollout_pb2.HASH_VERSION_JS_SIMPLE_HASH_V1}
_MODELS = {feed_pb2.READ_MODEL_V1: ReadModel.V1, feed_pb2.READ_MODEL_V2: ReadModel.V2}
MAX_REASON_CHARS = 1000


def reason_pb(reason: Reason) -> rollout_pb2.DecisionReason:
    """The proto enum value of a decision reason."""
    return _REASONS[reason]


def config_pb(config: RolloutConfig) -> rollout_pb2.RolloutConfig:
    """Maps a stored config to its proto."""
    pb = rollout_pb2.RolloutConfig(
        v2_enabled=config.v2_enabled,
        v2_percentage=config.v2_percentage,
        user_overrides={str(k): read_model_pb(v) for k, v in config.user_overrides.items()},
        event_overrides={str(k): read_model_pb(v) for k, v in config.event_overrides.items()},
        hash_version=_HASHES[config.hash_version],
        revision=config.revision,
        updated_by=config.updated_by,
        shadow_sample_rate=config.shadow_sample_rate,
        guard=guard_pb(config.guard),
        guard_enabled=config.guard.enabled,
    )
    if config.updated_at is not None:
        ts = Timestamp()
        ts.FromDatetime(config.updated_at)
        pb.updated_at.CopyFrom(ts)
    return pb


def guard_pb(guard: GuardConfig) -> rollout_pb2.GuardConfig:
    """Maps the guard's settings to their proto."""
    return rollout_pb2.GuardConfig(
        window_seconds=guard.window_s,
        min_requests=guard.min_requests,
        max_error_share=guard.max_error_share,
        max_avg_latency_ms=guard.max_avg_latency_ms,
        max_p95_latency_ms=guard.max_p95_latency_ms,
        act_on_shadow_v1_only=guard.act_on_shadow_v1_only,
    )


def proposed_config(
    pb: rollout_pb2.RolloutConfig, *, has_config: bool, violations: list[FieldViolation]
) -> Proposal:
    """Reads a proposed config, recording a violation for every bad field (the
    caller raises once, with those of the other fields too). Fields left unset
    (hash_version UNSPECIFIED, shadow_sample_rate, guard, guard_enabled) keep the
    stored ones."""
    if not has_config:
        violations.append(FieldViolation("config", "is required", "REQUIRED"))
    if not 0 <= pb.v2_percentage <= 100:
        violations.append(
            FieldViolation(
                "config.v2_percentage",
                f"must be 0-100, got {pb.v2_percentage}",
                "PERCENTAGE_OUT_OF_RANGE",
            )
        )
    users = _overrides(pb.user_overrides, "config.user_overrides", violations)
    events = _overrides(pb.event_overrides, "config.event_overrides", violations)
    hash_version: HashVersion | None = None
    if pb.hash_version != rollout_pb2.HASH_VERSION_UNSPECIFIED:
        hash_version = next((h for h, v in _HASHES.items() if v == pb.hash_version), None)
        if hash_version is None:
            violations.append(
                FieldViolation(
                    "config.hash_version",
                    f"unknown value {pb.hash_version}; use HASH_VERSION_JS_SIMPLE_HASH_V1",
                    "UNKNOWN_ENUM_VALUE",
                )
            )
    rate: float | None = None
    if pb.HasField("shadow_sample_rate"):
        rate = pb.shadow_sample_rate
        if not 0.0 <= rate <= 1.0:
            violations.append(
                FieldViolation(
                    "config.shadow_sample_rate",
                    f"must be a fraction from 0 to 1, got {rate}",
                    "RATE_OUT_OF_RANGE",
                )
            )
    guard: GuardConfig | None = None
    if pb.HasField("guard"):
        g = pb.guard
        guard = GuardConfig(
            window_s=g.window_seconds,
            min_requests=g.min_requests,
            max_error_share=g.max_error_share,
            max_avg_latency_ms=g.max_avg_latency_ms,
            max_p95_latency_ms=g.max_p95_latency_ms,
            act_on_shadow_v1_only=g.act_on_shadow_v1_only,
        )
        violations.extend(guard.violations())
    return Proposal(
        v2_enabled=pb.v2_enabled,
        v2_percentage=pb.v2_percentage,
        user_overrides=users,
        event_overrides=events,
        hash_version=hash_version,
        shadow_sample_rate=rate,
        guard=guard,
        guard_enabled=pb.guard_enabled if pb.HasField("guard_enabled") else None,
    )


def _overrides(
    pb: Mapping[str, int], field: str, violations: list[FieldViolation]
) -> dict[uuid.UUID, ReadModel]:
    out: dict[uuid.UUID, ReadModel] = {}
    for key, value in pb.items():
        try:
            ident = uuid.UUID(key)
        except ValueError:
            violations.append(
                FieldViolation(f"{field}[{key[:64]}]", "the key must be a UUID", "INVALID_UUID")
            )
            continue
        model = next((m for v, m in _MODELS.items() if v == value), None)
        if model is None:
            violations.append(
                FieldViolation(
                    f"{field}[{key}]",
                    "must be READ_MODEL_V1 or READ_MODEL_V2 (remove the entry to clear it)",
                    "INVALID_OVERRIDE",
                )
            )
            continue
        if ident in out:
            violations.append(
                FieldViolation(f"{field}[{key}]", "names the same id twice", "DUPLICATE_KEY")
            )
        out[ident] = model
    return out


def update_reason(reason: str, violations: list[FieldViolation]) -> str:
    """The audit reason, required and bounded; a violation is recorded otherwise."""
    text = reason.strip()
    if not text or len(text) > MAX_REASON_CHARS:
        violations.append(
            FieldViolation(
                "reason",
                f"is required (1-{MAX_REASON_CHARS} characters): say why, for the audit log",
                "REASON_REQUIRED",
            )
        )
    return text


def change_pb(change: Change) -> rollout_pb2.RolloutChange:
    """Maps an audit entry to its proto."""
    ts = Timestamp()
    ts.FromDatetime(change.changed_at)
    return rollout_pb2.RolloutChange(
        revision=change.revision,
        changed_at=ts,
        changed_by=change.changed_by,
        reason=change.reason,
        before=config_pb(change.before),
        after=config_pb(change.after),
    )


def impact_pb(impact: Impact) -> rollout_pb2.PreviewRolloutChangeResponse:
    """Maps a preview to its proto."""
    return rollout_pb2.PreviewRolloutChangeResponse(
        current_revision=impact.current_revision,
        guests_evaluated=impact.evaluated,
        guests_changing=impact.changing,
        guests_to_v2=impact.to_v2,
        guests_to_v1=impact.to_v1,
        events_changing=impact.events_changing,
        events=[
            rollout_pb2.EventImpact(
                event_id=str(e.event_id),
                guests_changing=e.changing,
                guests_to_v2=e.to_v2,
                guests_to_v1=e.to_v1,
            )
            for e in impact.events
        ],
    )
