"""The plan's "SMS volume unchanged" signal, read-only and bounded.

On a schedule, one query over the last 8 days of `message_deliveries`
(an index range scan on `gf_deliveries_created_at`, which includes
`sms_status`, so it never touches the heap) yields:
  * rows created in the last 24 h, and the daily average of the 7 days
    before, for "SMS volume down more than 10% from its baseline";
  * delivered / all over the last 24 h, for "delivery success below 90%".
The rollout must leave both flat; the SMS pipeline itself is never touched.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from ..background import start_background, stop_background
from .metrics import GaugeSources

log = logging.getLogger(__name__)

SMS_HEALTH_SQL = """
SELECT count(*) FILTER (WHERE created_at >= now() - interval '24 hours') AS rows_24h,
       count(*) FILTER (WHERE created_at <  now() - interval '24 hours') / 7.0 AS baseline,
       count(*) FILTER (WHERE created_at >= now() - interval '24 hours'
                          AND sms_status = 'delivered') AS delivered_24h
  FROM public.message_deliveries
 WHERE created_at >= now() - interval '8 days'
"""


async def snapshot(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, timeout: float
) -> dict[str, float]:
    """One reading of the SMS pipeline's health."""
    row = await conn.fetchrow(SMS_HEALTH_SQL, timeout=timeout)
    assert row is not None
    rows_24h = int(row["rows_24h"])
    return {
        "rows_24h": float(rows_24h),
        "rows_baseline_7d": float(row["baseline"]),
        # No deliveries in the window: nothing failed, report full success.
        "success_ratio_24h": (int(row["delivered_24h"]) / rows_24h) if rows_24h else 1.0,
    }


class SmsHealthJob:
    """Refreshes the SMS gauges every `interval_s`."""

    def __init__(
        self, pool: asyncpg.Pool, sources: GaugeSources, *, interval_s: float, timeout_s: float
    ) -> None:
        self._pool = pool
        self._sources = sources
        self._interval = interval_s
        self._timeout = timeout_s
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> dict[str, float]:
        """Takes one reading and publishes it to the gauges."""
        async with self._pool.acquire(timeout=self._timeout) as conn:
            values = await snapshot(conn, self._timeout)
        self._sources.sms.clear()
        self._sources.sms.update(values)
        return values

    def start(self) -> None:
        """Starts the schedule in the background."""
        self._task = start_background(self._run(), "guestfeed-sms-health")

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Keep the last reading: a gap is better than a false alarm.
                log.warning("SMS health query failed: %s", type(exc).__name__)
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        """Stops the schedule."""
        await stop_background(self._task)
