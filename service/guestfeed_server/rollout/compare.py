"""Whether flipping is safe for an event: V1 against V2 per guest, with reasons.

The plan's comparison script ("V1 Count / V2 Count / Common / V2 only"), as a
use case: every active guest with an account (or the one named), over the
whole history, in batches of guests (storage/compare.py), on one read-only,
repeatable-read snapshot held on one pooled connection. Each message V1
shows and V2 hides gets the reason V2 excludes it, found from the facts, not
guessed. Memory follows the batch, not the event.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from ..auth import Principal
from ..domain.budget import Budget
from ..domain.errors import NotFound
from ..domain.model import MessageType
from ..storage import Database
from ..storage.compare import HiddenFacts, compare_batch, guest_count, next_guests
from .admin import require_service

_TYPES = {t.value: t for t in MessageType}
_BEFORE_EVERY_UUID = uuid.UUID(int=0)


class V1OnlyReason(enum.Enum):
    """Why V2 hides a message V1 shows (see `classify`)."""

    TAGS_NO_LONGER_MATCH = "tags_no_longer_match"
    CHANNEL_WITHOUT_SCHEDULED_MESSAGE = "channel_without_scheduled_message"
    DIRECT_DELIVERY_TO_NEITHER = "direct_delivery_to_neither"
    GUEST_ROW_REMOVED = "guest_row_removed"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class HiddenMessage:
    """A message V1 shows and V2 hides, and why."""

    message_id: uuid.UUID
    message_type: MessageType
    created_at: datetime
    reason: V1OnlyReason
    detail: str


@dataclass(frozen=True, slots=True)
class GuestComparison:
    """V1 against V2 for one guest over the whole history."""

    user_id: uuid.UUID
    v1_count: int
    v2_count: int
    common: int
    v1_only: list[HiddenMessage]
    v2_only: dict[MessageType, int]
    guests_total: int


@dataclass
class ComparisonSummary:
    """What a comparison found, in all."""

    event_id: uuid.UUID
    snapshot_at: datetime
    guests_compared: int = 0
    guests_with_v1_only: int = 0
    by_reason: Counter[V1OnlyReason] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def v1_only_total(self) -> int:
        """V1-only (guest, message) pairs."""
        return sum(self.by_reason.values())


def _tags(tags: tuple[str, ...] | None) -> str:
    return "[" + ", ".join(tags or ()) + "]"


def classify(facts: HiddenFacts) -> tuple[V1OnlyReason, str]:
    """The reason V2 excludes a message V1 shows, from the database's facts."""
    if facts.message_type == MessageType.CHANNEL.value:
        if not facts.scheduled_found:
            where = (
                f"its scheduled message {facts.scheduled_message_id} is missing or of another event"
                if facts.scheduled_message_id
                else "it has no scheduled message"
            )
            return V1OnlyReason.CHANNEL_WITHOUT_SCHEDULED_MESSAGE, (
                f"{where}, so it has no audience to check"
            )
        if facts.removed_rows:
            rows = "; ".join(f"row {gid} (tags {_tags(tags)})" for gid, tags in facts.removed_rows)
            return V1OnlyReason.GUEST_ROW_REMOVED, (
                f"delivered to removed guest rows: {rows}; targets {_tags(facts.targets)}, "
                f"active rows' tags {_tags(facts.tags)}"
            )
        if facts.targets and not set(facts.targets) & set(facts.tags):
            return V1OnlyReason.TAGS_NO_LONGER_MATCH, (
                f"targets {_tags(facts.targets)}; the guest's tags are now {_tags(facts.tags)}"
            )
    if facts.message_type == MessageType.DIRECT.value:
        shown = ", ".join(f"user {u or '-'} / guest row {g or '-'}" for u, g in facts.deliveries)
        return V1OnlyReason.DIRECT_DELIVERY_TO_NEITHER, (
            f"its deliveries ({shown or 'none'}) match neither the guest's user nor an active row"
        )
    return V1OnlyReason.OTHER, (
        f"type {facts.message_type}, scheduled message "
        f"{facts.scheduled_message_id or '-'} (found: {facts.scheduled_found}), "
        f"targets {_tags(facts.targets)}, tags {_tags(facts.tags)}"
    )


class ReadModelComparison:
    """Compares V1 and V2 for an event's guests through the service's database handle."""

    def __init__(self, db: Database, *, batch_size: int = 200) -> None:
        self._db = db
        self._batch = batch_size

    async def compare(
        self,
        who: Principal,
        event_id: uuid.UUID,
        user_id: uuid.UUID | None,
        budget: Budget,
    ) -> AsyncIterator[GuestComparison | ComparisonSummary]:
        """One comparison per guest as each batch is computed, then the summary.

        Raises:
            PermissionDenied: not a service caller.
            NotFound: no such event, or the named user is not an active guest.
        """
        require_service(who, "CompareReadModels")
        started = time.perf_counter()
        async with (
            self._db.acquire(budget) as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            snapshot_at = await conn.fetchval("SELECT now()", timeout=budget.seconds())
            found = await conn.fetchval(
                "SELECT true FROM public.events WHERE id = $1", event_id, timeout=budget.seconds()
            )
            if not found:
                raise NotFound(
                    f"event {event_id} does not exist",
                    "EVENT_NOT_FOUND",
                    {"event_id": str(event_id)},
                )
            summary = ComparisonSummary(event_id, snapshot_at)
            if user_id is not None:
                total = 1
                batches = [[user_id]]
            else:
                total = await guest_count(conn, event_id, timeout=budget.seconds())
                batches = None
            after = _BEFORE_EVERY_UUID
            while True:
                if batches is not None:
                    if not batches:
                        break
                    users = batches.pop()
                else:
                    users = await next_guests(
                        conn, event_id, after, self._batch, timeout=budget.seconds()
                    )
                    if not users:
                        break
                    after = users[-1]
                rows = await compare_batch(conn, event_id, users, timeout=budget.seconds())
                if user_id is not None and not rows:
                    raise NotFound(
                        f"user {user_id} is not an active guest of event {event_id}",
                        "GUEST_NOT_FOUND",
                        {"event_id": str(event_id), "user_id": str(user_id)},
                    )
                for row in rows:
                    hidden = [
                        HiddenMessage(
                            f.message_id, _TYPES[f.message_type], f.created_at, *classify(f)
                        )
                        for f in row.hidden
                    ]
                    v2_only = {_TYPES[k]: n for k, n in row.v2_only.items()}
                    summary.guests_compared += 1
                    if hidden:
                        summary.guests_with_v1_only += 1
                        summary.by_reason.update(h.reason for h in hidden)
                    yield GuestComparison(
                        user_id=row.user_id,
                        v1_count=row.v1_count,
                        v2_count=row.common + sum(v2_only.values()),
                        common=row.common,
                        v1_only=hidden,
                        v2_only=v2_only,
                        guests_total=total,
                    )
        summary.elapsed_s = time.perf_counter() - started
        yield summary
