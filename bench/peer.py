"""The plan's own SQL as the benchmark's peer (`peer.sql`), and how to call it.

The plan's `get_guest_event_messages_v2` runs as written (its body is checked
against the plan file when that is present), with its Phase 1 indexes, in the
bench-only schema `bench_peer` of a scratch database. It reads the caller from
Supabase's `auth.uid()`, so each call is preceded by the setting PostgREST
makes from the request's JWT.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

import asyncpg

from guestfeed_server.storage.pgtypes import Conn

# The plan's Phase 1 indexes, created by peer.sql.
PLAN_INDEXES = ("idx_messages_event_type_created", "idx_scheduled_messages_event_tags")

SET_CALLER_SQL = "SELECT set_config('request.jwt.claim.sub', $1, false)"
CALL_SQL = "SELECT * FROM bench_peer.get_guest_event_messages_v2($1, $2, $3)"

_BODY_START = "CREATE OR REPLACE FUNCTION "
_BODY_END = "$$;"
# The plan, where a checkout has it: beside the repository, as the README says.
PLAN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "seed"


def peer_sql() -> str:
    """The whole of `peer.sql`: auth.uid(), the function, its comment, the indexes."""
    return (Path(__file__).parent / "peer.sql").read_text()


def _function(sql: str, qualified_name: str) -> str:
    start = sql.index(_BODY_START + qualified_name + "(")
    return sql[start : sql.index(_BODY_END, start) + len(_BODY_END)]


def plan_function_matches(plan_dir: Path = PLAN_DIR) -> bool | None:
    """Whether `peer.sql`'s function is the plan's, up to the schema it lives in.

    None when no plan file is found (a clone without `../shared/seed/`).
    """
    plans = [
        p
        for p in sorted(plan_dir.glob("*.txt"))
        if "public.get_guest_event_messages_v2(" in p.read_text()
    ]
    if not plans:
        return None
    ours = _function(peer_sql(), "bench_peer.get_guest_event_messages_v2")
    theirs = _function(plans[0].read_text(), "public.get_guest_event_messages_v2")
    return ours == theirs.replace(
        "public.get_guest_event_messages_v2(", "bench_peer.get_guest_event_messages_v2(", 1
    )


async def install(conn: Conn) -> None:
    """Creates `auth.uid()`, `bench_peer.get_guest_event_messages_v2` and the plan's indexes."""
    await conn.execute(peer_sql())


async def drop_indexes(conn: Conn) -> None:
    """Drops the plan's Phase 1 indexes (the function stays)."""
    await conn.execute("".join(f"DROP INDEX IF EXISTS public.{name};" for name in PLAN_INDEXES))


async def call(
    conn: Conn,
    user_id: uuid.UUID,
    event_id: uuid.UUID,
    limit: int,
    before: datetime | None,
    *,
    timeout: float,
) -> list[asyncpg.Record]:
    """One call as `user_id` (two round trips: the JWT setting, then the function)."""
    await set_caller(conn, user_id)
    return await conn.fetch(CALL_SQL, event_id, limit, before, timeout=timeout)


async def set_caller(conn: Conn, user_id: uuid.UUID) -> None:
    """What PostgREST does with the JWT's `sub` before running the function."""
    await conn.execute(SET_CALLER_SQL, str(user_id))
