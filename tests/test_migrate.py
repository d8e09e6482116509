"""`migrate`: creates the contract on an empty database, only adds indexes to production.

Every test works on a database of its own, so catalog comparisons see nothing
but what the test and migrate did.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from guestfeed_server.storage.migrate import (
    INDEXES,
    PRODUCTION_TABLES,
    REQUIRED_VERSIONS,
    MigrationError,
    first_run,
    migrate,
    missing_versions,
    production_schema_sql,
)

from .conftest import scratch_database
from .factory import World

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "service" / "guestfeed_server" / "storage" / "sql" / "production_schema.sql"
REFERENCE = ROOT.parent / "shared" / "reference" / "production_schema.sql"
GF_INDEXES = {i.name for i in INDEXES}

Catalog = dict[str, Any]

# Everything migrate may create in its own schema.
OWN_RELATIONS = {
    ("schema_migrations", "r"),
    ("schema_migrations_pkey", "i"),
    ("rollout_config", "r"),
    ("rollout_config_pkey", "i"),
    ("rollout_changes", "r"),
    ("rollout_changes_pkey", "i"),
    ("heartbeat", "r"),
    ("heartbeat_pkey", "i"),
}


@dataclass
class Db:
    """A database of the test's own, and a superuser connection to it."""

    dsn: str
    conn: asyncpg.Connection


NewDb = Callable[[], Awaitable[Db]]


@pytest.fixture
async def new_db(server_dsn: str) -> AsyncIterator[NewDb]:
    """Makes empty databases on demand (superuser); drops them WITH (FORCE) at the end."""
    async with contextlib.AsyncExitStack() as stack:

        async def make() -> Db:
            _, dsn = await stack.enter_async_context(scratch_database(server_dsn, "guestfeed_mig"))
            conn = await asyncpg.connect(dsn)
            stack.push_async_callback(conn.close)
            return Db(dsn, conn)

        yield make


async def catalog(conn: asyncpg.Connection) -> Catalog:
    """What the public schema holds: relations, columns, constraints, indexes, types."""
    relations = await conn.fetch(
        "SELECT c.relname, c.relkind::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
    )
    columns = await conn.fetch(
        """
        SELECT c.relname, a.attname, a.attnum, format_type(a.atttypid, a.atttypmod) AS type,
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid) AS default_expr
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
        """
    )
    constraints = await conn.fetch(
        """
        SELECT c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid) AS def
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'
        """
    )
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    )
    enums = await conn.fetch(
        """
        SELECT t.typname, e.enumlabel, e.enumsortorder
        FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
        JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'public'
        """
    )
    return {
        "relations": {(r["relname"], r["relkind"]) for r in relations},
        "columns": {
            (r["relname"], r["attname"]): (
                r["attnum"],
                r["type"],
                r["attnotnull"],
                r["default_expr"],
            )
            for r in columns
        },
        "constraints": {
            (r["relname"], r["conname"]): (r["contype"], r["def"]) for r in constraints
        },
        "indexes": {r["indexname"]: r["indexdef"] for r in indexes},
        "enums": sorted((r["typname"], r["enumsortorder"], r["enumlabel"]) for r in enums),
    }


def without_gf(cat: Catalog) -> Catalog:
    """The catalog minus the gf_* indexes migrate adds."""
    return {
        **cat,
        "relations": {(n, k) for n, k in cat["relations"] if n not in GF_INDEXES},
        "indexes": {n: d for n, d in cat["indexes"].items() if n not in GF_INDEXES},
    }


async def table_checksums(conn: asyncpg.Connection) -> dict[str, tuple[int, str | None]]:
    """Row count and an md5 over every row's text, per production table."""
    out = {}
    for table in PRODUCTION_TABLES:
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, md5(string_agg(t::text, '|' ORDER BY t::text)) AS sum "
            f"FROM public.{table} t"
        )
        out[table] = (row["n"], row["sum"])
    return out


async def gf_index_state(conn: asyncpg.Connection) -> dict[str, tuple[bool, str]]:
    """gf_* index name -> (indisvalid, definition)."""
    rows = await conn.fetch(
        """
        SELECT c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid) AS def
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relname LIKE 'gf\\_%'
        """
    )
    return {r["relname"]: (r["indisvalid"], r["def"]) for r in rows}


async def recorded(conn: asyncpg.Connection) -> list[tuple[str, str, Any]]:
    rows = await conn.fetch(
        "SELECT version, description, applied_at FROM guestfeed.schema_migrations ORDER BY version"
    )
    return [(r["version"], r["description"], r["applied_at"]) for r in rows]


async def own_schema_relations(conn: asyncpg.Connection) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT c.relname, c.relkind::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'guestfeed'"
    )
    return {(r["relname"], r["relkind"]) for r in rows}


async def production_with_data(db: Db) -> None:
    """The reference schema applied by hand (as production has it), with rows in every table."""
    await db.conn.execute(production_schema_sql())
    pool = await asyncpg.create_pool(db.dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        w = World(pool)
        event = await w.event()
        user, guest = await w.member(event, tags=["vip"])
        await w.guest(event, None, name="Unclaimed")
        announcement = await w.message(event, "announcement")
        await w.channel(event, ["vip"])
        direct = await w.message(event, "direct", sender=user)
        await w.deliver(announcement, guest_id=guest, user_id=user)
        await w.deliver(direct, guest_id=guest, status="failed")
    finally:
        await pool.close()


class TestShippedSchema:
    def test_shipped_copy_is_byte_identical_to_the_reference(self) -> None:
        """The packaged production_schema.sql equals the shared reference byte for byte."""
        if not REFERENCE.exists():
            pytest.skip(f"{REFERENCE} is not present on this machine")
        assert SHIPPED.read_bytes() == REFERENCE.read_bytes()

    def test_migrate_loads_the_shipped_copy(self) -> None:
        """production_schema_sql() returns the packaged file."""
        assert production_schema_sql() == SHIPPED.read_text()


class TestEmptyDatabase:
    async def test_creates_exactly_the_reference_schema(self, new_db: NewDb) -> None:
        """On an empty database, public equals the reference SQL plus only the gf_* indexes."""
        reference, migrated = (await new_db()).conn, (await new_db()).conn
        await reference.execute(
            REFERENCE.read_text() if REFERENCE.exists() else production_schema_sql()
        )
        assert await migrate(migrated) == first_run()
        want, got = await catalog(reference), await catalog(migrated)
        assert {t for t, k in want["relations"] if k == "r"} == set(PRODUCTION_TABLES)
        assert got["columns"] == want["columns"]
        assert got["constraints"] == want["constraints"]
        assert got["enums"] == want["enums"]
        assert set(got["indexes"]) - set(want["indexes"]) == GF_INDEXES
        assert without_gf(got) == want

    async def test_gf_indexes_are_valid_and_as_declared(self, new_db: NewDb) -> None:
        """Every gf_* index exists, is valid and has the columns its step declares."""
        conn = (await new_db()).conn
        await migrate(conn)
        state = await gf_index_state(conn)
        assert set(state) == GF_INDEXES
        for step in INDEXES:
            valid, definition = state[step.name]
            assert valid
            assert definition == f"CREATE INDEX {step.name} " + step.ddl.replace(
                " (", " USING btree (", 1
            )

    async def test_records_every_version_in_order(self, new_db: NewDb) -> None:
        """guestfeed.schema_migrations holds exactly 0001..0010; the schema holds only our state."""
        conn = (await new_db()).conn
        await migrate(conn)
        versions = [v for v, _, _ in await recorded(conn)]
        assert versions == [f"{i:04d}" for i in range(1, 11)]
        assert await own_schema_relations(conn) == OWN_RELATIONS


class TestProductionDatabase:
    async def test_rows_and_tables_untouched_only_indexes_added(self, new_db: NewDb) -> None:
        """On production tables with rows, migrate changes nothing and adds only gf_* indexes."""
        db = await new_db()
        conn = db.conn
        await production_with_data(db)
        rows_before, cat_before = await table_checksums(conn), await catalog(conn)
        assert all(n > 0 for n, _ in rows_before.values())

        assert await migrate(conn) == first_run()

        assert await table_checksums(conn) == rows_before
        cat_after = await catalog(conn)
        assert without_gf(cat_after) == cat_before
        assert set(cat_after["indexes"]) - set(cat_before["indexes"]) == GF_INDEXES
        assert {v for v, _ in (await gf_index_state(conn)).values()} == {True}
        assert await own_schema_relations(conn) == OWN_RELATIONS
        schemas = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname <> 'information_schema' ORDER BY nspname"
        )
        assert [r["nspname"] for r in schemas] == ["guestfeed", "public"]

    async def test_records_production_tables_as_found_not_created(self, new_db: NewDb) -> None:
        """Version 0001 is recorded as found in place when the tables already existed."""
        db = await new_db()
        conn = db.conn
        await production_with_data(db)
        await migrate(conn)
        description = dict((v, d) for v, d, _ in await recorded(conn))["0001"]
        assert "found" in description


class TestIdempotence:
    async def test_second_run_applies_and_changes_nothing(self, new_db: NewDb) -> None:
        """A second migrate returns [] and leaves catalog, rows and records as they were."""
        db = await new_db()
        conn = db.conn
        await production_with_data(db)
        await migrate(conn)
        state = (
            await catalog(conn),
            await table_checksums(conn),
            await recorded(conn),
            await gf_index_state(conn),
        )
        assert await migrate(conn) == []
        assert (
            await catalog(conn),
            await table_checksums(conn),
            await recorded(conn),
            await gf_index_state(conn),
        ) == state

    async def test_second_run_on_fresh_database_applies_nothing(self, new_db: NewDb) -> None:
        """Migrating a freshly migrated database again returns [] and changes no catalog entry."""
        conn = (await new_db()).conn
        await migrate(conn)
        before = (await catalog(conn), await recorded(conn))
        assert await migrate(conn) == []
        assert (await catalog(conn), await recorded(conn)) == before

    async def test_concurrent_migrators_apply_each_version_once(self, new_db: NewDb) -> None:
        """Two migrators at once on an empty database: one applies everything, the other nothing."""
        db = await new_db()
        first = db.conn
        second = await asyncpg.connect(db.dsn)
        try:
            a, b = await asyncio.gather(migrate(first), migrate(second))
        finally:
            await second.close()
        assert sorted([a, b], key=len) == [[], first_run()]
        assert [v for v, _, _ in await recorded(first)] == list(REQUIRED_VERSIONS)

    async def test_forgotten_record_is_restored_without_rebuilding(self, new_db: NewDb) -> None:
        """A version whose record is missing is recorded again (index kept) and reported alone."""
        conn = (await new_db()).conn
        await migrate(conn)
        before = await gf_index_state(conn)
        oid = await conn.fetchval(
            "SELECT 'public.gf_messages_sender_event_created_id'::regclass::oid"
        )
        await conn.execute("DELETE FROM guestfeed.schema_migrations WHERE version = '0004'")
        assert await missing_versions(conn) == ["0004"]
        assert await migrate(conn) == ["0004"]
        assert await missing_versions(conn) == []
        assert await gf_index_state(conn) == before
        assert (
            await conn.fetchval(
                "SELECT 'public.gf_messages_sender_event_created_id'::regclass::oid"
            )
            == oid
        )


class TestRefusals:
    @pytest.mark.parametrize(
        "tables",
        [("users",), ("users", "events", "event_guests"), PRODUCTION_TABLES[:-1]],
        ids=["users-only", "three", "all-but-deliveries"],
    )
    async def test_partial_production_schema_is_refused(
        self, new_db: NewDb, tables: tuple[str, ...]
    ) -> None:
        """Some production tables only: MigrationError naming the missing; public unchanged."""
        conn = (await new_db()).conn
        for table in tables:
            await conn.execute(f"CREATE TABLE public.{table} (id uuid PRIMARY KEY)")
        before = await catalog(conn)
        with pytest.raises(MigrationError) as exc:
            await migrate(conn)
        missing = [t for t in PRODUCTION_TABLES if t not in tables]
        for table in missing:
            assert table in str(exc.value)
        assert await catalog(conn) == before
        assert await conn.fetchval("SELECT count(*) FROM guestfeed.schema_migrations") == 0

    async def test_lock_is_released_after_a_refusal(self, new_db: NewDb) -> None:
        """After a refusal the lock is free: another session's migrate reaches its own verdict."""
        db = await new_db()
        await db.conn.execute("CREATE TABLE public.users (id uuid PRIMARY KEY)")
        with pytest.raises(MigrationError):
            await migrate(db.conn)
        other = await asyncpg.connect(db.dsn)
        try:
            with pytest.raises(MigrationError):
                await asyncio.wait_for(migrate(other), 10)
        finally:
            await other.close()


class TestInvalidIndexRepair:
    async def test_invalid_leftover_gf_index_is_rebuilt_valid(self, new_db: NewDb) -> None:
        """An INVALID gf_* index (a failed CONCURRENTLY build) is rebuilt as declared."""
        db = await new_db()
        conn = db.conn
        await production_with_data(db)
        step = INDEXES[0]
        await conn.execute(f"CREATE INDEX {step.name} ON public.messages (content)")
        await conn.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = $1::regclass",
            f"public.{step.name}",
        )
        assert (await gf_index_state(conn))[step.name][0] is False
        rows_before = await table_checksums(conn)

        applied = await migrate(conn)

        assert applied == first_run()
        state = await gf_index_state(conn)
        assert set(state) == GF_INDEXES
        valid, definition = state[step.name]
        assert valid
        assert definition.endswith("(event_id, created_at DESC, id DESC)")
        assert "content" not in definition
        assert await table_checksums(conn) == rows_before


class TestMissingVersions:
    async def test_lists_every_version_before_and_none_after(self, new_db: NewDb) -> None:
        """missing_versions lists 0001..0010 on an empty database and nothing after migrate."""
        conn = (await new_db()).conn
        assert await missing_versions(conn) == list(REQUIRED_VERSIONS)
        assert list(REQUIRED_VERSIONS) == [f"{i:04d}" for i in range(1, 11)]
        await migrate(conn)
        assert await missing_versions(conn) == []

    async def test_is_read_only(self, new_db: NewDb) -> None:
        """missing_versions creates nothing: no guestfeed schema appears on a bare database."""
        conn = (await new_db()).conn
        await missing_versions(conn)
        assert await conn.fetchval("SELECT to_regnamespace('guestfeed')") is None
