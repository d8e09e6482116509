"""The storage interface both read models implement, and what they share."""

from __future__ import annotations

import hashlib
import itertools
import uuid
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

import asyncpg

from ..domain.budget import Budget
from ..domain.model import Cursor, FeedMessage, MessageType, ReadModel, Viewer
from ..settings import PoolMode
from ..telemetry import untraced
from .database import Database
from .horizon import Horizon, HorizonSpec, read_horizon

# The first page starts below every real row. A fixed sentinel (rather than a
# NULL cursor and `$3 IS NULL OR ...`) keeps one statement whose keyset
# condition is always an index condition, even in PostgreSQL's generic plans.
START = Cursor(datetime(9999, 12, 31, tzinfo=UTC), uuid.UUID(int=(1 << 128) - 1))

# The caller as an active guest of the event ($1, $2), as one row, or no row
# at all when they are not one: removed rows never count, and unknown events
# look the same as events the caller is not invited to. A host who is also
# on the guest list has two rows; their ids and tags are the union.
VIEWER_CTE = """
viewer AS (
    SELECT array_agg(g.id ORDER BY g.created_at, g.id) AS guest_ids,
           (array_agg(g.guest_name ORDER BY g.created_at, g.id)
               FILTER (WHERE g.guest_name IS NOT NULL))[1] AS guest_name,
           ARRAY(SELECT DISTINCT t
                   FROM public.event_guests g2, unnest(g2.guest_tags) AS t
                  WHERE g2.event_id = $1 AND g2.user_id = $2 AND g2.removed_at IS NULL
                  ORDER BY 1) AS tags
      FROM public.event_guests g
     WHERE g.event_id = $1 AND g.user_id = $2 AND g.removed_at IS NULL
    HAVING count(*) > 0
)"""

# The viewer's row first, then the page's rows newest first; no row at all
# means "not a guest". One round trip either way. The viewer's arrays travel
# once, not on each of the page's rows (figures: docs/performance.md), and the
# ORDER BY, not UNION ALL's order, puts the viewer's row (NULL id) first.
RESULT_SQL = """
SELECT * FROM (
    SELECT v.guest_ids, v.tags, v.guest_name,
           NULL::uuid AS id, NULL::text AS content, NULL::timestamptz AS created_at,
           NULL::text AS message_type, NULL::boolean AS is_own, NULL::text AS full_name,
           NULL::text AS avatar_url, NULL::text AS delivery_status
      FROM viewer v
    UNION ALL
    SELECT NULL, NULL, NULL, r.*
      FROM rows r
     WHERE EXISTS (SELECT FROM viewer)
) result
ORDER BY id IS NOT NULL, created_at DESC, id DESC
"""


def rows_and_result(delivery_match: str) -> str:
    """The tail both stores share: the page's rows with sender and latest
    delivery status, then `RESULT_SQL`. `delivery_match` says which of a
    message's deliveries are the caller's (a condition on `d`)."""
    return f"""rows AS (
    SELECT p.id, p.content, p.created_at, p.message_type::text AS message_type,
           COALESCE(p.sender_user_id = $2, false) AS is_own,
           u.full_name, u.avatar_url,
           ld.sms_status AS delivery_status
      FROM page p
      -- LIMIT 1 keeps this a per-row primary-key probe: flattened into a
      -- join, the planner may hash the whole users table for 50 rows.
      LEFT JOIN LATERAL (
            SELECT u.full_name, u.avatar_url FROM public.users u
             WHERE u.id = p.sender_user_id
             LIMIT 1) u ON true
      LEFT JOIN LATERAL (
            SELECT d.sms_status FROM public.message_deliveries d
             WHERE d.message_id = p.id AND {delivery_match}
             ORDER BY d.created_at DESC, d.id DESC
             LIMIT 1) ld ON true
)
{RESULT_SQL}"""


class PageRead(NamedTuple):
    """What one read returns: the caller as a guest (None: not an active one) and the
    page; and the horizon read just before it, when asked for (a first page's
    watch_token)."""

    viewer: Viewer | None
    messages: list[FeedMessage]
    horizon: Horizon | None = None


class FeedStore(Protocol):
    """Reads one page of a guest's feed, checking access in the same statement.

    Implementations return at most `limit` messages strictly below `cursor`
    (None: from the newest) in (created_at, message_id) descending order,
    each message once, and the viewer they were read for; a user who is not
    an active guest of the event gets no viewer and no messages.
    """

    read_model: ReadModel

    @property
    def name(self) -> str:
        """Short name for logs and span attributes."""
        ...

    async def read(
        self,
        event_id: uuid.UUID,
        user_id: uuid.UUID,
        cursor: Cursor | None,
        limit: int,
        budget: Budget,
        *,
        horizon: HorizonSpec | None = None,
    ) -> PageRead:
        """One page and its viewer, within the budget; with `horizon`, the horizon
        is read first, on the same connection, in a statement of its own."""
        ...


# The page as a function in the service's own schema, for transaction-mode
# poolers (Supavisor on 6543, PgBouncer): there every client statement is
# unnamed, so PostgreSQL would parse and plan the page statement on every
# call, most of a page's cost there (docs/performance.md). A PL/pgSQL
# function's plan is cached
# in the server session, which the pooler keeps across its clients, and the
# function's own SET clauses give the page its planner choices with no SET
# round trip and no transaction. Named by a digest of the statement, so a
# rolling upgrade finds both the old and the new function in place.
_RESULT_COLUMNS = """guest_ids uuid[], tags text[], guest_name text, id uuid, content text,
    created_at timestamptz, message_type text, is_own boolean, full_name text,
    avatar_url text, delivery_status text"""


class SqlFeedStore:
    """What both SQL stores share; each supplies its statement and one rule."""

    read_model: ReadModel
    sql: str

    def __init__(self, db: Database, *, server_side: bool | None = None) -> None:
        self._db = db
        # Behind a transaction pooler pages go through `function_name`.
        if server_side is None:
            server_side = db.mode is PoolMode.TRANSACTION
        self._statement = self.call_sql() if server_side else self.sql

    @classmethod
    def function_name(cls) -> str:
        """The schema-qualified function that runs this store's page statement."""
        digest = hashlib.blake2b(cls.sql.encode(), digest_size=4).hexdigest()
        return f"guestfeed.feed_page_{cls.read_model.value}_{digest}"

    @classmethod
    def call_sql(cls) -> str:
        """The statement that reads a page through the function."""
        return f"SELECT * FROM {cls.function_name()}($1, $2, $3, $4, $5)"

    @classmethod
    def function_ddl(cls) -> str:
        """CREATE OR REPLACE FUNCTION for `function_name` (run by `guestfeed migrate`)."""
        return f"""CREATE OR REPLACE FUNCTION {cls.function_name()}(
    uuid, uuid, timestamptz, uuid, integer)
RETURNS TABLE ({_RESULT_COLUMNS})
LANGUAGE plpgsql STABLE SECURITY INVOKER
SET jit = off
SET max_parallel_workers_per_gather = 0
AS $page$
#variable_conflict use_column
BEGIN
RETURN QUERY {cls.sql};
END
$page$"""

    @property
    def name(self) -> str:
        """The store's short name."""
        raise NotImplementedError

    def delivery_backed(self, row: asyncpg.Record) -> bool:
        """Whether a delivery to the caller put this row in the feed."""
        raise NotImplementedError

    async def read(
        self,
        event_id: uuid.UUID,
        user_id: uuid.UUID,
        cursor: Cursor | None,
        limit: int,
        budget: Budget,
        *,
        horizon: HorizonSpec | None = None,
    ) -> PageRead:
        """See `FeedStore.read`."""
        at = cursor or START
        mark = None
        async with self._db.acquire(budget) as conn:
            if horizon is not None:
                # Before the page's statement, and done before it starts: the
                # page's snapshot then holds every row keyed below the horizon.
                # Untraced: a page is one statement in its trace; the horizon is
                # the live-update hub's bookkeeping (at most about once a second).
                with untraced():
                    mark = await read_horizon(conn, horizon, budget.seconds())
            # One statement text for every page and caller: asyncpg prepares
            # it once per connection and keeps it in its statement cache, so
            # a page costs one Bind/Execute round trip, and PostgreSQL settles
            # on the generic plan the statement is written for (see START).
            rows = await conn.fetch(
                self._statement,
                event_id,
                user_id,
                at.created_at,
                at.message_id,
                limit,
                timeout=budget.seconds(),
            )
        if not rows:
            return PageRead(None, [], mark)
        head = rows[0]
        viewer = Viewer(
            user_id=user_id,
            event_id=event_id,
            guest_ids=tuple(head["guest_ids"]),
            tags=tuple(head["tags"]),
            guest_name=head["guest_name"],
        )
        messages = [
            to_message(r, viewer, delivery_backed=self.delivery_backed(r))
            for r in itertools.islice(rows, 1, None)
        ]
        return PageRead(viewer, messages, mark)


# A dict lookup: calling the Enum class per row is measurably slower.
_TYPES = {t.value: t for t in MessageType}


def to_message(row: asyncpg.Record, viewer: Viewer, *, delivery_backed: bool) -> FeedMessage:
    """Builds a feed entry from a page row; the fallbacks are the plan's."""
    own: bool = row["is_own"]
    full_name: str | None = row["full_name"]
    status: str | None = row["delivery_status"]
    if status is None:
        # No delivery to the caller: their own message was sent by them;
        # anything else has no SMS status to report.
        status = "sent" if own else ""
    # Positional, in field order: this runs fifty times a page.
    return FeedMessage(
        row["id"],
        row["content"],
        row["created_at"],
        status,
        (full_name or viewer.guest_name or "You") if own else (full_name or "Host"),
        row["avatar_url"] or "",
        _TYPES[row["message_type"]],
        own,
        delivery_backed,
    )
