"""How long one piece of database work may take."""

from __future__ import annotations

import time
from dataclasses import dataclass

# A call with less than this left is treated as out of time: the answer
# would arrive after the caller stopped waiting.
_DEADLINE_SLACK_S = 0.05


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

    @classmethod
    def of(cls, cap_s: float, remaining_s: float | None) -> Budget:
        """A budget from a query-timeout cap and the caller's remaining seconds (or None)."""
        if remaining_s is None:
            return cls(cap_s)
        return cls(cap_s, time.monotonic() + remaining_s)

    def seconds(self) -> float:
        """What one database call may take now (at least 1 ms)."""
        if self.deadline_at is None:
            return self.cap_s
        return max(0.001, min(self.cap_s, self.deadline_at - time.monotonic()))

    def caller_expired(self) -> bool:
        """True when the caller's own deadline has (all but) passed."""
        return (
            self.deadline_at is not None
            and self.deadline_at - time.monotonic() <= _DEADLINE_SLACK_S
        )
