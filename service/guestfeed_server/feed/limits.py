"""How many streams one caller may hold open: per caller, and per caller and event.

A stream is cheap while it is read and costs nothing once flow control
stops it, but each one holds a task, buffers and a share of the pool's
bulk lane. Without a limit one guest can open hundreds; with it the extra
ones are refused at once (RESOURCE_EXHAUSTED, saying the limit) and counted.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from ..domain.errors import ResourceExhausted


class StreamLimits:
    """Admits a caller's stream while they hold fewer than the limits."""

    def __init__(
        self,
        per_caller: int,
        per_caller_event: int,
        *,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.per_caller = per_caller
        self.per_caller_event = per_caller_event
        self._on_refused = on_refused
        self._callers: Counter[str] = Counter()
        self._events: Counter[tuple[str, uuid.UUID]] = Counter()

    @property
    def active(self) -> int:
        """Streams held open right now, all callers."""
        return sum(self._callers.values())

    @contextlib.contextmanager
    def admit(self, caller: str, event_id: uuid.UUID) -> Iterator[None]:
        """Holds one stream slot for `caller` in `event_id` while the block runs.

        Raises:
            ResourceExhausted: the caller already holds the most streams
                allowed, in all or in this event.
        """
        key = (caller, event_id)
        if self._events[key] >= self.per_caller_event:
            self._refuse(
                "caller_event",
                f"you already have {self.per_caller_event} streams open on this event, the "
                "most allowed; close one (or read it to the end) before opening another",
                self.per_caller_event,
            )
        if self._callers[caller] >= self.per_caller:
            self._refuse(
                "caller",
                f"you already have {self.per_caller} streams open, the most allowed per "
                "caller; close one (or read it to the end) before opening another",
                self.per_caller,
            )
        self._callers[caller] += 1
        self._events[key] += 1
        try:
            yield
        finally:
            self._release(self._callers, caller)
            self._release(self._events, key)

    def _refuse(self, scope: str, message: str, limit: int) -> None:
        if self._on_refused is not None:
            self._on_refused(scope)
        raise ResourceExhausted(message, "STREAM_LIMIT", {"scope": scope, "limit": str(limit)})

    @staticmethod
    def _release(counts: Counter[Any], key: Any) -> None:
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]  # a counter per caller ever seen would only grow


def admitted(
    limits: StreamLimits | None, caller: str, event_id: uuid.UUID
) -> contextlib.AbstractContextManager[None]:
    """`limits.admit(caller, event_id)`, or nothing to hold when streams are unlimited."""
    return limits.admit(caller, event_id) if limits is not None else contextlib.nullcontext()
