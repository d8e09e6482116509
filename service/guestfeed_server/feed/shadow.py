"""Shadow reads: a sampled share of V1 first pages is also read from V2 and compared.

The plan's "data consistency checks", on live traffic. When a first page is
served from V1 and the rollout config's `shadow_sample_rate` picks it, V2 is
read for the same viewer after the response, with bounded concurrency (a
sample over the limit is dropped and counted, never queued), and the two are
compared by message id over the history both reads cover. The result is a
metric (`guestfeed.shadow.reads` by result), a span linked to the request's,
and for `v1_only` a log line with the event and the message ids (never
content); the guard (rollout/guard.py) acts on `v1_only` per event.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from opentelemetry import trace

from ..domain.budget import Budget, Lane
from ..domain.model import Cursor, FeedMessage, ReadModel, Viewer
from ..domain.signals import ShadowResult
from ..storage import FeedStore
from ..telemetry.background import start_background
from ..telemetry.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Comparison:
    """V1 and V2 over the history both of them cover."""

    v1_count: int
    v2_count: int
    v1_only: tuple[uuid.UUID, ...]
    v2_only: tuple[uuid.UUID, ...]

    @property
    def result(self) -> ShadowResult:
        """V1-only outranks V2-only: a message a guest would lose is what matters."""
        if self.v1_only:
            return ShadowResult.V1_ONLY
        if self.v2_only:
            return ShadowResult.V2_ONLY
        return ShadowResult.MATCH


def compare(v1: list[FeedMessage], v2: list[FeedMessage], window: int) -> Comparison:
    """Compares two newest-first reads of up to `window` rows over the range both cover."""

    def floor(rows: list[FeedMessage]) -> Cursor | None:
        # A read shorter than the window reaches the start of history.
        return rows[-1].cursor if len(rows) >= window else None

    floors = [f for f in (floor(v1), floor(v2)) if f is not None]
    cut = max(floors) if floors else None
    ids1 = [m.message_id for m in v1 if cut is None or m.cursor >= cut]
    ids2 = [m.message_id for m in v2 if cut is None or m.cursor >= cut]
    s1, s2 = set(ids1), set(ids2)
    return Comparison(
        len(s1),
        len(s2),
        tuple(i for i in ids1 if i not in s2),
        tuple(i for i in ids2 if i not in s1),
    )


# Called with (event, result) for every shadow read (the guard listens).
Listener = Callable[[uuid.UUID, ShadowResult], None]


class ShadowReads:
    """Samples V1 first pages and reads V2 beside them, after the response."""

    def __init__(
        self,
        stores: Mapping[ReadModel, FeedStore],
        metrics: Metrics,
        tracer: trace.Tracer,
        *,
        rate: Callable[[], float],
        timeout_s: float,
        concurrency: int = 4,
        listener: Listener | None = None,
    ) -> None:
        self._v2 = stores[ReadModel.V2]
        self._metrics = metrics
        self._tracer = tracer
        self._rate = rate
        self._timeout = timeout_s
        self._slots = concurrency
        self._listener = listener
        self._running: set[asyncio.Task[None]] = set()

    def maybe_read(self, viewer: Viewer, served: list[FeedMessage], window: int) -> None:
        """Starts a shadow read of V2 for `viewer` with probability `rate()`.

        `served` is what the V1 read returned for the first page (`window`
        rows asked, the look-ahead row included).
        """
        rate = self._rate()
        if rate <= 0 or random.random() >= rate:
            return
        if len(self._running) >= self._slots:
            self._record(viewer.event_id, ShadowResult.DROPPED)
            return
        # A link, not a parent: the request's span has ended by the time this runs.
        link = trace.Link(trace.get_current_span().get_span_context())
        task = start_background(self._read(viewer, served, window, link), "guestfeed-shadow")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def stop(self) -> None:
        """Cancels the shadow reads still running (shutdown)."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _read(
        self, viewer: Viewer, served: list[FeedMessage], window: int, link: trace.Link
    ) -> None:
        # After the response: let the request's task finish sending first.
        await asyncio.sleep(0)
        with self._tracer.start_as_current_span("guestfeed.shadow_read", links=[link]) as span:
            try:
                read = await self._v2.read(
                    viewer.event_id,
                    viewer.user_id,
                    None,
                    window,
                    Budget(self._timeout, lane=Lane.BULK),
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("shadow read failed: %s", type(exc).__name__)
                self._record(viewer.event_id, ShadowResult.ERROR)
                span.add_event("guestfeed.shadow.result", {"result": "error"})
                return
            found = compare(served, read.messages, window)
            span.add_event(
                "guestfeed.shadow.result",
                {
                    "result": found.result.value,
                    "guestfeed.event_id": str(viewer.event_id),
                    "v1_count": found.v1_count,
                    "v2_count": found.v2_count,
                    "v1_only": len(found.v1_only),
                    "v2_only": len(found.v2_only),
                },
            )
        if found.v1_only:
            log.warning(
                "shadow read: v2 hides messages v1 shows",
                extra={
                    "event_id": str(viewer.event_id),
                    "message_ids": [str(i) for i in found.v1_only],
                },
            )
        self._record(viewer.event_id, found.result)

    def _record(self, event_id: uuid.UUID, result: ShadowResult) -> None:
        self._metrics.shadow_reads.add(1, {"result": result.value})
        if self._listener is not None:
            self._listener(event_id, result)
