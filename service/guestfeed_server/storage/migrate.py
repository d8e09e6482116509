"""`guestfeed migrate`: bring a database to what the service needs.

On an empty database it creates the production tables exactly as the shared
contract (`sql/production_schema.sql`) has them. Where they exist it leaves
them and their rows alone, and only adds the read-path indexes, with
`CREATE INDEX CONCURRENTLY` so production writes are never blocked. The
service's own state lives in the `guestfeed` schema, which also records what
was applied. Running it again changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from importlib import resources

from .base import SqlFeedStore
from .pgtypes import Conn
from .v1 import V1DeliveriesStore
from .v2 import V2MessagesStore

log = logging.getLogger(__name__)

PRODUCTION_TABLES = (
    "users",
    "events",
    "event_guests",
    "scheduled_messages",
    "messages",
    "message_deliveries",
)

# Serialises concurrent migrators (two replicas starting at once).
_LOCK_KEY = 0x6775_6573_7466_6564  # "guestfed"
_LOCK_POLL_S = 0.1

# What pg_stat_activity shows for the session while migrate runs: an operator
# looking for whoever holds (or waits for) the migration lock, or builds an
# index, sees migrate rather than a replica's pool ("guestfeed").
APPLICATION_NAME = "guestfeed-migrate"


class MigrationError(RuntimeError):
    """The database is in a state migrate will not touch; the message says why."""


@dataclass(frozen=True, slots=True)
class IndexStep:
    """One additive index on a production table."""

    version: str
    name: str
    ddl: str


# What the read paths walk. Each is explained where it is used:
# storage/v1.py and storage/v2.py.
INDEXES = (
    IndexStep(
        "0002",
        "gf_messages_event_created_id",
        "ON public.messages (event_id, created_at DESC, id DESC)",
    ),
    IndexStep(
        "0003",
        "gf_messages_event_type_created_id",
        "ON public.messages (event_id, message_type, created_at DESC, id DESC)",
    ),
    IndexStep(
        "0004",
        "gf_messages_sender_event_created_id",
        "ON public.messages (sender_user_id, event_id, created_at DESC, id DESC)",
    ),
    IndexStep(
        "0005",
        "gf_deliveries_user_message",
        "ON public.message_deliveries (user_id, message_id)",
    ),
    IndexStep(
        "0006",
        "gf_deliveries_guest_message",
        "ON public.message_deliveries (guest_id, message_id)",
    ),
    # The SMS health job's 8-day window (telemetry/sms.py): a range scan that
    # never reads the heap, so it stays cheap on a large deliveries table.
    IndexStep(
        "0008",
        "gf_deliveries_created_at",
        "ON public.message_deliveries (created_at) INCLUDE (sms_status)",
    ),
)

OWN_SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS guestfeed;
CREATE TABLE IF NOT EXISTS guestfeed.schema_migrations (
    version     text PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""

# The service's own state, in its own schema: written only by the service.
OWN_STEPS: tuple[tuple[str, str, str], ...] = (
    (
        "0007",
        "rollout config and its audit log",
        """
CREATE TABLE IF NOT EXISTS guestfeed.rollout_config (
    -- One row: the current configuration. `revision` guards updates.
    id              smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    v2_enabled      boolean NOT NULL DEFAULT false,
    v2_percentage   smallint NOT NULL DEFAULT 0 CHECK (v2_percentage BETWEEN 0 AND 100),
    user_overrides  jsonb NOT NULL DEFAULT '{}',
    event_overrides jsonb NOT NULL DEFAULT '{}',
    hash_version    text NOT NULL DEFAULT 'js_simple_hash_v1',
    revision        bigint NOT NULL DEFAULT 1,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text NOT NULL DEFAULT 'guestfeed migrate'
);
-- Phase 0 of the plan: v2 deployed but off.
INSERT INTO guestfeed.rollout_config (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS guestfeed.rollout_changes (
    revision    bigint PRIMARY KEY,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    changed_by  text NOT NULL,
    reason      text NOT NULL,
    before      jsonb NOT NULL,
    after       jsonb NOT NULL
);
""",
    ),
    (
        "0009",
        "shadow reads and the auto-rollback guard in the rollout config",
        """
ALTER TABLE guestfeed.rollout_config
    ADD COLUMN IF NOT EXISTS shadow_sample_rate double precision NOT NULL DEFAULT 0
        CHECK (shadow_sample_rate BETWEEN 0 AND 1),
    -- The guard's settings; keys missing here take the service's defaults.
    ADD COLUMN IF NOT EXISTS guard jsonb NOT NULL DEFAULT '{}';
""",
    ),
    (
        "0010",
        "the read replicas' heartbeat",
        """
-- One row. With read replicas configured, one replica of the service writes
-- the primary's clock here about every 500 ms, and every replica of the
-- service reads it back on each read replica to bound that replica's lag
-- (storage/heartbeat.py). Without replicas nobody writes it.
CREATE TABLE IF NOT EXISTS guestfeed.heartbeat (
    id      smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    beat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    writer  text NOT NULL DEFAULT 'guestfeed migrate'
);
INSERT INTO guestfeed.heartbeat (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
""",
    ),
)


def page_function_stores() -> tuple[type[SqlFeedStore], ...]:
    """The stores whose page functions `migrate` installs (see SqlFeedStore.function_ddl)."""
    return (V1DeliveriesStore, V2MessagesStore)


REQUIRED_VERSIONS = tuple(
    sorted(("0001", *(i.version for i in INDEXES), *(v for v, _, _ in OWN_STEPS)))
)


def first_run() -> list[str]:
    """What `migrate` reports on an empty database: every version, then the page functions."""
    return [*REQUIRED_VERSIONS, *(f"function {s.function_name()}" for s in page_function_stores())]


def production_schema_sql() -> str:
    """The shared schema contract, shipped with the package."""
    return (
        resources.files("guestfeed_server.storage")
        .joinpath("sql/production_schema.sql")
        .read_text()
    )


async def migrate(conn: Conn) -> list[str]:
    """Applies what is missing; returns the versions applied by this run.

    Raises:
        MigrationError: only some production tables exist (not ours to fix).
    """
    applied: list[str] = []
    # Named before taking the lock, so a migrator waiting for it is named too;
    # the caller's name comes back at the end (tests migrate on their own sessions).
    previous = await conn.fetchval("SELECT current_setting('application_name')")
    await conn.execute("SELECT set_config('application_name', $1, false)", APPLICATION_NAME)
    await _lock(conn)
    try:
        await conn.execute(OWN_SCHEMA_SQL)
        present = await _present_tables(conn)
        if not present:
            async with conn.transaction():
                await conn.execute(production_schema_sql())
                await _record(conn, "0001", "production tables created from the contract")
            applied.append("0001")
        elif len(present) < len(PRODUCTION_TABLES):
            missing = sorted(set(PRODUCTION_TABLES) - present)
            raise MigrationError(
                f"public has only some of the production tables (missing: {', '.join(missing)}); "
                "migrate creates them only on an empty database and never alters existing ones"
            )
        elif await _record(conn, "0001", "production tables found in place; left untouched"):
            applied.append("0001")
        for step in INDEXES:
            if await _ensure_index(conn, step):
                applied.append(step.version)
        for version, description, sql in OWN_STEPS:
            async with conn.transaction():
                await conn.execute(sql)
                if await _record(conn, version, description):
                    applied.append(version)
        applied.sort()
        # Not numbered steps: a function's name follows its statement, so a
        # release that changes a page statement adds its function beside the
        # old one (which the replicas not yet upgraded still call).
        for store in page_function_stores():
            if not await _function_exists(conn, store):
                async with conn.transaction():
                    await conn.execute(store.function_ddl())
                applied.append(f"function {store.function_name()}")
    finally:
        await conn.execute(
            "SELECT pg_advisory_unlock($1), set_config('application_name', $2, false)",
            _LOCK_KEY,
            previous,
        )
    return applied


async def missing_versions(conn: Conn) -> list[str]:
    """What `serve` needs that migrate has not applied yet (read-only check)."""
    exists = await conn.fetchval("SELECT to_regclass('guestfeed.schema_migrations') IS NOT NULL")
    if not exists:
        return list(REQUIRED_VERSIONS)
    have = {
        r["version"] for r in await conn.fetch("SELECT version FROM guestfeed.schema_migrations")
    }
    return [v for v in REQUIRED_VERSIONS if v not in have]


async def missing_page_functions(conn: Conn) -> list[str]:
    """The page functions this release calls behind a transaction pooler that
    migrate has not installed yet."""
    return [
        store.function_name()
        for store in page_function_stores()
        if not await _function_exists(conn, store)
    ]


async def _function_exists(conn: Conn, store: type[SqlFeedStore]) -> bool:
    signature = f"{store.function_name()}(uuid, uuid, timestamptz, uuid, integer)"
    return bool(await conn.fetchval("SELECT to_regprocedure($1) IS NOT NULL", signature))


async def _lock(conn: Conn) -> None:
    # Not pg_advisory_lock: a session blocked in it holds a snapshot, and the
    # lock holder's CREATE INDEX CONCURRENTLY waits for every such snapshot,
    # so two migrators deadlock. Polling keeps the waiter snapshot-free.
    while True:
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
            return
        await asyncio.sleep(_LOCK_POLL_S)


async def _present_tables(conn: Conn) -> set[str]:
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY($1)",
        list(PRODUCTION_TABLES),
    )
    return {r["tablename"] for r in rows}


async def _record(conn: Conn, version: str, description: str) -> bool:
    status = await conn.execute(
        "INSERT INTO guestfeed.schema_migrations (version, description) VALUES ($1, $2) "
        "ON CONFLICT (version) DO NOTHING",
        version,
        description,
    )
    return bool(status == "INSERT 0 1")


async def _ensure_index(conn: Conn, step: IndexStep) -> bool:
    # A failed CONCURRENTLY build leaves an INVALID index that IF NOT EXISTS
    # would skip forever; drop it and build again.
    valid = await conn.fetchval(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname = $1",
        step.name,
    )
    if valid is False:
        log.warning("rebuilding invalid index %s", step.name)
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS public.{step.name}")
    # CONCURRENTLY cannot run inside a transaction: this runs in autocommit.
    await conn.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {step.name} {step.ddl}")
    return await _record(conn, step.version, f"index {step.name}")
