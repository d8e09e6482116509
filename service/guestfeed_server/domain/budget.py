"""How long one piece of database work may take, and which share of the pool it uses."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

# A call with less than this left is treated as out of time: the answer
# would arrive after the caller stopped waiting.
_DEADLINE_SLACK_S = 0.05

# How many query timeouts BULK work may queue for its share of the pool. Its
# queue holds only other bulk work, each piece capped at one query timeout, so
# the wait is throttling, not a stuck database: failing a stream after one
# query timeout of queueing made streams fail UNAVAILABLE whenever more of
# them were open than the share (39 of 12,000 streams in a 5-minute soak).
_BULK_QUEUE_FACTOR = 6


class Lane(enum.Enum):
    """Which share of the pool a piece of work may borrow from.

    REQUEST work answers one short call and may use the whole pool. BULK
    work (a stream's reads, shadow reads, comparisons) is capped at a smaller
    share, so many long streams cannot queue ahead of short calls.
    """

    REQUEST = "request"
    BULK = "bulk"


@dataclass(frozen=True, slots=True)
class Budget:
    """The caller's remaining deadline, capped by the configured query timeout.

    Database work never outlives the caller: every call gets `seconds()`.
    When work runs out of time, `caller_expired()` tells a spent deadline
    (DEADLINE_EXCEEDED) from a slow database (UNAVAILABLE).
    """

    cap_s: float
    # time.monotonic() at the caller's deadline; None when it set none.
    deadline_at: float | None = None
    lane: Lane = Lane.REQUEST

    @classmethod
    def of(cls, cap_s: float, remaining_s: float | None, lane: Lane = Lane.REQUEST) -> Budget:
        """A budget from a query-timeout cap and the caller's remaining seconds (or None)."""
        if remaining_s is None:
            return cls(cap_s, None, lane)
        return cls(cap_s, time.monotonic() + remaining_s, lane)

    def seconds(self) -> float:
        """What one database call may take now (at least 1 ms)."""
        if self.deadline_at is None:
            return self.cap_s
        return max(0.001, min(self.cap_s, self.deadline_at - time.monotonic()))

    def queue_seconds(self) -> float:
        """How long the work may wait for its lane's share of the pool."""
        if self.lane is Lane.REQUEST:
            return self.seconds()
        wait = self.cap_s * _BULK_QUEUE_FACTOR
        if self.deadline_at is None:
            return wait
        return max(0.001, min(wait, self.deadline_at - time.monotonic()))

    def caller_expired(self) -> bool:
        """True when the caller's own deadline has (all but) passed."""
        return (
            self.deadline_at is not None
            and self.deadline_at - time.monotonic() <= _DEADLINE_SLACK_S
        )
