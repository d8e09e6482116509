"""What a proposed rollout config would change, before anyone flips it."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

from ..domain.model import ReadModel
from ..storage.pgtypes import Conn
from .config import RolloutConfig
from .policy import decide

# Active, signed-up guests: the pairs whose feed the rollout decides. DISTINCT
# because a host who is also on the guest list has two rows.
_PAIRS_SQL = """
SELECT DISTINCT event_id, user_id
  FROM public.event_guests
 WHERE user_id IS NOT NULL AND removed_at IS NULL
"""


@dataclass(frozen=True, slots=True)
class EventImpact:
    """How one event's guests would move."""

    event_id: uuid.UUID
    to_v2: int
    to_v1: int

    @property
    def changing(self) -> int:
        """Guests of the event whose read model would change."""
        return self.to_v2 + self.to_v1


@dataclass(frozen=True, slots=True)
class Impact:
    """The effect of replacing `current` with a proposal."""

    current_revision: int
    evaluated: int
    to_v2: int
    to_v1: int
    events_changing: int
    events: list[EventImpact]

    @property
    def changing(self) -> int:
        """Pairs whose read model would change."""
        return self.to_v2 + self.to_v1


async def preview(
    conn: Conn,
    current: RolloutConfig,
    proposed: RolloutConfig,
    *,
    deploy_v2_allowed: bool,
    max_events: int,
) -> Impact:
    """Evaluates both configs for every active guest pair, streaming the rows
    through a server-side cursor so memory stays flat however many there are."""
    evaluated = 0
    to_v2: Counter[uuid.UUID] = Counter()
    to_v1: Counter[uuid.UUID] = Counter()
    # One consistent snapshot, read-only: a preview never writes.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(_PAIRS_SQL, prefetch=5000):
            evaluated += 1
            event_id, user_id = row["event_id"], row["user_id"]
            before = decide(current, event_id, user_id, deploy_v2_allowed=deploy_v2_allowed)
            after = decide(proposed, event_id, user_id, deploy_v2_allowed=deploy_v2_allowed)
            if before.read_model is after.read_model:
                continue
            if after.read_model is ReadModel.V2:
                to_v2[event_id] += 1
            else:
                to_v1[event_id] += 1
    events = [EventImpact(e, to_v2[e], to_v1[e]) for e in set(to_v2) | set(to_v1)]
    events.sort(key=lambda i: (-i.changing, str(i.event_id)))
    return Impact(
        current_revision=current.revision,
        evaluated=evaluated,
        to_v2=sum(to_v2.values()),
        to_v1=sum(to_v1.values()),
        events_changing=len(events),
        events=events[:max_events],
    )
