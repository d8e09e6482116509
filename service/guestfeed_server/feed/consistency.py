"""The plan's consistency check between v1 and v2, run on sampled requests.

For a sampled first page, both read models' newest messages are read for
the same viewer, cut to the window both cover, and compared: the count
difference (v2 - v1) and the messages v1 shows that v2 does not ("no
messages lost in transition"). It runs after the response, in the
background, one at a time, so it never slows the caller.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

from ..domain.budget import Budget
from ..domain.model import Cursor, FeedMessage, ReadModel, Viewer
from ..storage import FeedStore
from ..telemetry.background import start_background, stop_background
from ..telemetry.metrics import Metrics

log = logging.getLogger(__name__)

WINDOW = 200


@dataclass(frozen=True, slots=True)
class Comparison:
    """v1 and v2 over the same window of one viewer's feed."""

    v1_count: int
    v2_count: int
    missing_in_v2: int
    only_in_v2: int

    @property
    def difference(self) -> int:
        """v2 count minus v1 count (the plan expects >= 0)."""
        return self.v2_count - self.v1_count


def compare(v1: list[FeedMessage], v2: list[FeedMessage], window: int) -> Comparison:
    """Compares two newest-first lists over the history both of them cover."""

    def floor(rows: list[FeedMessage]) -> Cursor | None:
        # A list shorter than the window reaches the start of history.
        return rows[-1].cursor if len(rows) >= window else None

    floors = [f for f in (floor(v1), floor(v2)) if f is not None]
    cut = max(floors) if floors else None
    ids1 = {m.message_id for m in v1 if cut is None or m.cursor >= cut}
    ids2 = {m.message_id for m in v2 if cut is None or m.cursor >= cut}
    return Comparison(len(ids1), len(ids2), len(ids1 - ids2), len(ids2 - ids1))


class ConsistencySampler:
    """Runs a comparison for a fraction of first pages."""

    def __init__(
        self,
        stores: Mapping[ReadModel, FeedStore],
        metrics: Metrics,
        *,
        rate: float,
        timeout_s: float,
    ) -> None:
        self._stores = stores
        self._metrics = metrics
        self._rate = rate
        self._timeout = timeout_s
        self._running: asyncio.Task[None] | None = None

    def maybe_check(self, viewer: Viewer) -> None:
        """Starts a background comparison with probability `rate` (one at a time)."""
        if self._rate <= 0 or random.random() >= self._rate:
            return
        if self._running is not None and not self._running.done():
            return
        # Background work after the response: its queries are not part of
        # the caller's trace (that span has ended by the time they run).
        self._running = start_background(self._check(viewer), "guestfeed-consistency")

    async def stop(self) -> None:
        """Cancels a comparison still running (shutdown)."""
        await stop_background(self._running)

    async def check(self, viewer: Viewer) -> Comparison:
        """Compares v1 and v2 for `viewer` now and records the metrics."""
        budget = Budget.of(self._timeout, None)
        e, u = viewer.event_id, viewer.user_id
        v1 = (await self._stores[ReadModel.V1].read(e, u, None, WINDOW, budget)).messages
        v2 = (await self._stores[ReadModel.V2].read(e, u, None, WINDOW, budget)).messages
        result = compare(v1, v2, WINDOW)
        self._metrics.consistency_checks.add(1)
        self._metrics.consistency_difference.record(result.difference)
        self._metrics.consistency_missing.add(result.missing_in_v2)
        log.info(
            "consistency check",
            extra={
                "event_id": str(viewer.event_id),
                "v1_count": result.v1_count,
                "v2_count": result.v2_count,
                "missing_in_v2": result.missing_in_v2,
                "only_in_v2": result.only_in_v2,
            },
        )
        return result

    async def _check(self, viewer: Viewer) -> None:
        try:
            await self.check(viewer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("consistency check failed: %s", type(exc).__name__)
