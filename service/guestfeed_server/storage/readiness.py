"""The read path's cheap probe: can the tables every page reads be read right now?

`SELECT 1` answers while a page cannot (a migration holding an ACCESS
EXCLUSIVE lock on `messages`, say): this statement takes the same
relation locks a page takes on the tables both read models always read, and
reads one row of each, so it waits exactly where a page would wait, and a
short timeout turns that wait into an answer.
"""

from __future__ import annotations

from ..domain.budget import Budget
from .database import Database

FEED_TABLES_SQL = """
SELECT (SELECT 1 FROM public.messages LIMIT 1) AS messages,
       (SELECT 1 FROM public.message_deliveries LIMIT 1) AS deliveries,
       (SELECT 1 FROM public.event_guests LIMIT 1) AS guests
"""


async def probe_feed_tables(db: Database, budget: Budget) -> None:
    """Reads a row of each feed table within the budget.

    Raises:
        Unavailable, DeadlineExceeded: the tables did not answer in time or the
            database is unreachable (`Database.acquire` translates).
    """
    async with db.acquire(budget) as conn:
        # asyncpg's timeout also cancels the statement on the server, so a
        # probe stuck behind a lock does not keep waiting there.
        await conn.fetchrow(FEED_TABLES_SQL, timeout=budget.seconds())
