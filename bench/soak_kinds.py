"""The soak's kinds of call, their weights, the statuses each may end with, their figures.

A status outside its kind's `EXPECTED` set is "unexpected", and the soak
fails on any; INTERNAL and UNKNOWN are bugs whatever the kind.
"""

from __future__ import annotations

import array
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

PAGE, STREAM_READ, STREAM_ABANDONED, CANCEL, BAD_TOKEN, ROLLOUT_FLIP = (
    "page",
    "stream_read",
    "stream_abandoned",
    "cancel",
    "bad_token",
    "rollout_flip",
)
KINDS = (PAGE, STREAM_READ, STREAM_ABANDONED, CANCEL, BAD_TOKEN, ROLLOUT_FLIP)
STREAM_KINDS = (STREAM_READ, STREAM_ABANDONED)

# Shares of the weighted kinds: mostly pages, as guests' apps do.
DEFAULT_WEIGHTS: Mapping[str, float] = {
    PAGE: 60,
    STREAM_READ: 10,
    STREAM_ABANDONED: 4,
    CANCEL: 12,
    BAD_TOKEN: 8,
}

# RESOURCE_EXHAUSTED on a stream is the per-caller stream limit refusing it:
# expected, and reported apart as "refused". A stream the client did not
# cancel must not end CANCELLED, so stream_read does not expect it.
REFUSED = "RESOURCE_EXHAUSTED"
EXPECTED: Mapping[str, frozenset[str]] = {
    PAGE: frozenset({"OK"}),
    STREAM_READ: frozenset({"OK", REFUSED}),
    STREAM_ABANDONED: frozenset({"OK", "CANCELLED", REFUSED}),
    CANCEL: frozenset({"OK", "CANCELLED", REFUSED}),
    BAD_TOKEN: frozenset({"UNAUTHENTICATED"}),
    # FAILED_PRECONDITION / ABORTED: another writer (or our deliberately
    # stale revision) got there first.
    ROLLOUT_FLIP: frozenset({"OK", "FAILED_PRECONDITION", "ABORTED"}),
}
# Bugs whatever the kind: never expected, even if a kind's set grew to hold them.
ALWAYS_UNEXPECTED = frozenset({"INTERNAL", "UNKNOWN"})


def is_expected(kind: str, status: str) -> bool:
    """Whether `status` is a normal ending of a `kind` call."""
    return status not in ALWAYS_UNEXPECTED and status in EXPECTED[kind]


@dataclass
class KindStats:
    """How the calls of one kind ended and how long they took (ms)."""

    total_ms: array.array[float] = field(default_factory=lambda: array.array("d"))
    # Streams only: until the first response (or the error).
    first_ms: array.array[float] = field(default_factory=lambda: array.array("d"))
    statuses: Counter[str] = field(default_factory=Counter)
    messages: int = 0

    @property
    def calls(self) -> int:
        """Calls finished."""
        return len(self.total_ms)
