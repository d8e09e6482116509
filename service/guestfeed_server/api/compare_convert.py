"""Mapping the comparison and the guard to RolloutService's protos."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from guestfeed.v1 import rollout_pb2

from ..rollout.compare import ComparisonSummary, GuestComparison, V1OnlyReason
from ..rollout.guard import GuardStatus
from ..rollout.store import Change
from .convert import message_type_pb

_REASONS = {
    V1OnlyReason.TAGS_NO_LONGER_MATCH: rollout_pb2.V1_ONLY_REASON_TAGS_NO_LONGER_MATCH,
    V1OnlyReason.CHANNEL_WITHOUT_SCHEDULED_MESSAGE: (
        rollout_pb2.V1_ONLY_REASON_CHANNEL_WITHOUT_SCHEDULED_MESSAGE
    ),
    V1OnlyReason.DIRECT_DELIVERY_TO_NEITHER: rollout_pb2.V1_ONLY_REASON_DIRECT_DELIVERY_TO_NEITHER,
    V1OnlyReason.GUEST_ROW_REMOVED: rollout_pb2.V1_ONLY_REASON_GUEST_ROW_REMOVED,
    V1OnlyReason.OTHER: rollout_pb2.V1_ONLY_REASON_OTHER,
}


def _ts(value: object) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)  # type: ignore[arg-type]
    return ts


def comparison_pb(
    item: GuestComparison | ComparisonSummary,
) -> rollout_pb2.CompareReadModelsResponse:
    """One streamed response: a guest's comparison, or the summary."""
    if isinstance(item, GuestComparison):
        guest = rollout_pb2.GuestComparison(
            user_id=str(item.user_id),
            v1_count=item.v1_count,
            v2_count=item.v2_count,
            common_count=item.common,
            guests_total=item.guests_total,
            v1_only=[
                rollout_pb2.V1OnlyMessage(
                    message_id=str(h.message_id),
                    message_type=message_type_pb(h.message_type),
                    reason=_REASONS[h.reason],
                    detail=h.detail,
                    created_at=_ts(h.created_at),
                )
                for h in item.v1_only
            ],
            v2_only=[
                rollout_pb2.MessageTypeCount(message_type=message_type_pb(t), count=n)
                for t, n in sorted(item.v2_only.items(), key=lambda kv: kv[0].value)
                if n
            ],
        )
        return rollout_pb2.CompareReadModelsResponse(guest=guest)
    summary = rollout_pb2.ComparisonSummary(
        event_id=str(item.event_id),
        guests_compared=item.guests_compared,
        guests_with_v1_only=item.guests_with_v1_only,
        v1_only_total=item.v1_only_total,
        v1_only_by_reason=[
            rollout_pb2.V1OnlyReasonCount(reason=_REASONS[r], count=n)
            for r, n in sorted(item.by_reason.items(), key=lambda kv: kv[0].value)
        ],
        snapshot_at=_ts(item.snapshot_at),
    )
    summary.elapsed.FromMilliseconds(round(item.elapsed_s * 1000))
    return rollout_pb2.CompareReadModelsResponse(summary=summary)


def guard_status_pb(
    status: GuardStatus, replica: str, last: Change | None
) -> rollout_pb2.GetGuardStatusResponse:
    """The guard's view, and the last change any guard wrote."""
    out = rollout_pb2.GetGuardStatusResponse(
        enabled=status.enabled,
        replica=replica,
        window_seconds=status.window_s,
        v2_requests=status.requests,
        v2_failures=status.failures,
        min_requests=status.min_requests,
        enough_data=status.enough_data,
        signals=[
            rollout_pb2.GuardSignal(
                name=s.name,
                value=s.value,
                threshold=s.threshold,
                breached=s.breached,
                event_id=str(s.event_id) if s.event_id else "",
            )
            for s in status.signals
        ],
    )
    if last is not None:
        out.last_action.CopyFrom(
            rollout_pb2.GuardAction(
                revision=last.revision,
                changed_at=_ts(last.changed_at),
                reason=last.reason,
                changed_by=last.changed_by,
            )
        )
    return out
