"""The horizon: a position below which no transaction can still commit a feed row.

Live updates key a message by `created_at` (of the message, or of its first
delivery to the guest), which defaults to `now()`: the writing transaction's
start. A transaction that starts first and commits last writes rows older
than rows already seen, so "everything after the newest row seen" loses it.
The horizon is instead held below every open transaction's start
(`pg_stat_activity.xact_start`): every row keyed below it that will ever
commit has committed, and a statement that starts after the horizon was read
sees all of them (docs/watch.md has the argument and what it costs).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from .pgtypes import Conn

# The oldest open transaction that could still commit rows into the feed
# tables, and how many sessions this role cannot see. One statement, so both
# come from one read of the activity table (it is cached per transaction).
# Left out: this session; our own replicas' sessions, which never write the
# production tables (`application_name` guestfeed, guestfeed-migrate, ...);
# autovacuum, which writes no rows. A hidden session is another role's,
# shown without details to a role lacking pg_read_all_stats.
HORIZON_SQL = """
SELECT statement_timestamp() AS now,
       o.pid AS oldest_pid, o.xact_start AS oldest_start, o.state AS oldest_state,
       (SELECT count(*)
          FROM pg_stat_activity h
         WHERE h.datname = current_database()
           AND h.pid <> pg_backend_pid()
           AND h.query = '<insufficient privilege>'
           AND COALESCE(h.application_name, '') NOT LIKE 'guestfeed%')::int AS hidden
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (
        SELECT a.pid, a.xact_start, a.state
          FROM pg_stat_activity a
         WHERE a.datname = current_database()
           AND a.pid <> pg_backend_pid()
           AND a.xact_start IS NOT NULL
           AND COALESCE(a.application_name, '') NOT LIKE 'guestfeed%'
           AND a.backend_type IS DISTINCT FROM 'autovacuum worker'
         ORDER BY a.xact_start
         LIMIT 1) o ON true
"""


class HorizonSpec(NamedTuple):
    """How far below now the horizon is held (GUESTFEED_WATCH_MARGIN_MS, _SAFE_LAG_S)."""

    margin_s: float
    safe_lag_s: float


class Horizon(NamedTuple):
    """A position below which no transaction can still commit a feed row.

    `at` is the horizon; `now` the statement time of the query that found
    it. In exact mode every session's transaction start was visible; in safe
    mode (`exact` False) `hidden` sessions of other roles were not, and the
    horizon is held `safe_lag` behind now instead.
    """

    at: datetime
    now: datetime
    exact: bool
    hidden: int
    # The open transaction that holds the horizon back, when one does.
    oldest_pid: int | None
    oldest_start: datetime | None
    oldest_state: str | None

    @property
    def lag_s(self) -> float:
        """How far behind the statement time the horizon is, in seconds."""
        return (self.now - self.at).total_seconds()


async def read_horizon(conn: Conn, spec: HorizonSpec, timeout: float) -> Horizon:
    """One horizon read on `conn` (a statement, hence a transaction, of its own)."""
    row = await conn.fetchrow(HORIZON_SQL, timeout=timeout)
    assert row is not None
    now: datetime = row["now"]
    hidden: int = row["hidden"]
    exact = hidden == 0
    at = now - timedelta(seconds=spec.margin_s if exact else spec.safe_lag_s)
    oldest: datetime | None = row["oldest_start"]
    if oldest is not None and oldest < at:
        at = oldest
    return Horizon(at, now, exact, hidden, row["oldest_pid"], oldest, row["oldest_state"])
