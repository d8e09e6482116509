"""The plan's "SMS volume unchanged" signal, read-only and bounded.

One query over the last 8 days of `message_deliveries` (an index range scan
on `gf_deliveries_created_at`, which includes `sms_status`, so it never
touches the heap) yields:
  * rows created in the last 24 h, and the daily average of the 7 days
    before, for "SMS volume down more than 10% from its baseline";
  * delivered / all over the last 24 h, for "delivery success below 90%".
The rollout must leave both flat; the SMS pipeline itself is never touched.
"""

from __future__ import annotations

from ..domain.budget import Budget
from .database import Database

SMS_HEALTH_SQL = """
SELECT count(*) FILTER (WHERE created_at >= now() - interval '24 hours') AS rows_24h,
       count(*) FILTER (WHERE created_at <  now() - interval '24 hours') / 7.0 AS baseline,
       count(*) FILTER (WHERE created_at >= now() - interval '24 hours'
                          AND sms_status = 'delivered') AS delivered_24h
  FROM public.message_deliveries
 WHERE created_at >= now() - interval '8 days'
"""


async def sms_snapshot(db: Database, budget: Budget) -> dict[str, float]:
    """One reading of the SMS pipeline's health."""
    async with db.acquire(budget) as conn:
        row = await conn.fetchrow(SMS_HEALTH_SQL, timeout=budget.seconds())
    assert row is not None
    rows_24h = int(row["rows_24h"])
    return {
        "rows_24h": float(rows_24h),
        "rows_baseline_7d": float(row["baseline"]),
        # No deliveries in the window: nothing failed, report full success.
        "success_ratio_24h": (int(row["delivered_24h"]) / rows_24h) if rows_24h else 1.0,
    }
