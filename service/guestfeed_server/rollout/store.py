"""The rollout config and its audit log in the `guestfeed` schema."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ..domain.errors import Aborted
from ..domain.model import ReadModel
from ..storage.pgtypes import Conn
from .config import GuardConfig, HashVersion, RolloutConfig

# Every replica LISTENs here; the payload is the new revision.
CHANNEL = "guestfeed_rollout"

_COLUMNS = """v2_enabled, v2_percentage, user_overrides::text, event_overrides::text,
       hash_version, revision, updated_at, updated_by, shadow_sample_rate, guard::text"""
_SELECT = f"SELECT {_COLUMNS} FROM guestfeed.rollout_config WHERE id = 1"


@dataclass(frozen=True, slots=True)
class Change:
    """One audit log entry."""

    revision: int
    changed_at: datetime
    changed_by: str
    reason: str
    before: RolloutConfig
    after: RolloutConfig


def _config(row: asyncpg.Record) -> RolloutConfig:
    return RolloutConfig(
        v2_enabled=row["v2_enabled"],
        v2_percentage=row["v2_percentage"],
        user_overrides=_overrides(row["user_overrides"]),
        event_overrides=_overrides(row["event_overrides"]),
        hash_version=HashVersion(row["hash_version"]),
        revision=row["revision"],
        updated_at=row["updated_at"],
        updated_by=row["updated_by"],
        shadow_sample_rate=row["shadow_sample_rate"],
        guard=GuardConfig.from_json(json.loads(row["guard"])),
    )


def _overrides(text: str) -> dict[uuid.UUID, ReadModel]:
    return {uuid.UUID(k): ReadModel(v) for k, v in json.loads(text).items()}


def _overrides_json(overrides: Any) -> str:
    return json.dumps({str(k): v.value for k, v in sorted(overrides.items())})


async def load(conn: Conn, *, timeout: float | None = None) -> RolloutConfig:
    """The current configuration."""
    row = await conn.fetchrow(_SELECT, timeout=timeout)
    if row is None:  # pragma: no cover - migrate inserts the row
        raise RuntimeError("guestfeed.rollout_config is empty; run `guestfeed migrate`")
    return _config(row)


async def update(
    conn: Conn,
    proposed: RolloutConfig,
    *,
    expected_revision: int,
    actor: str,
    reason: str,
    timeout: float | None = None,
) -> RolloutConfig:
    """Writes `proposed` as the next revision, with its audit row, atomically.

    The NOTIFY is part of the same transaction, so replicas hear of the change
    exactly when it commits, never before and never for a rolled-back one.

    Raises:
        Aborted: the stored revision is not `expected_revision`; nothing changed.
    """
    async with conn.transaction():
        row = await conn.fetchrow(_SELECT + " FOR UPDATE", timeout=timeout)
        assert row is not None
        before = _config(row)
        if before.revision != expected_revision:
            raise Aborted(
                f"the rollout config is at revision {before.revision}, not {expected_revision}; "
                "read it again and reapply your change",
                "REVISION_MISMATCH",
                {"current_revision": str(before.revision)},
            )
        row = await conn.fetchrow(
            f"""
            UPDATE guestfeed.rollout_config
               SET v2_enabled = $1, v2_percentage = $2,
                   user_overrides = $3::jsonb, event_overrides = $4::jsonb,
                   hash_version = $5, revision = revision + 1,
                   updated_at = now(), updated_by = $6,
                   shadow_sample_rate = $7, guard = $8::jsonb
             WHERE id = 1
            RETURNING {_COLUMNS}
            """,
            proposed.v2_enabled,
            proposed.v2_percentage,
            _overrides_json(proposed.user_overrides),
            _overrides_json(proposed.event_overrides),
            proposed.hash_version.value,
            actor,
            proposed.shadow_sample_rate,
            json.dumps(proposed.guard.to_json()),
            timeout=timeout,
        )
        assert row is not None
        after = _config(row)
        await conn.execute(
            "INSERT INTO guestfeed.rollout_changes "
            "(revision, changed_at, changed_by, reason, before, after) "
            "VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)",
            after.revision,
            after.updated_at,
            actor,
            reason,
            json.dumps(before.to_json()),
            json.dumps(after.to_json()),
            timeout=timeout,
        )
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(after.revision))
    return after


async def last_change_by(conn: Conn, prefix: str, *, timeout: float | None = None) -> Change | None:
    """The newest audit entry whose author starts with `prefix` (the guard's: "guard@")."""
    rows = await conn.fetch(
        """
        SELECT revision, changed_at, changed_by, reason, before::text, after::text
          FROM guestfeed.rollout_changes
         WHERE starts_with(changed_by, $1)
         ORDER BY revision DESC
         LIMIT 1
        """,
        prefix,
        timeout=timeout,
    )
    return _changes(rows)[0] if rows else None


async def changes(
    conn: Conn, *, below_revision: int | None, limit: int, timeout: float | None = None
) -> list[Change]:
    """Audit entries newest first, strictly below `below_revision` when given."""
    rows = await conn.fetch(
        """
        SELECT revision, changed_at, changed_by, reason, before::text, after::text
          FROM guestfeed.rollout_changes
         WHERE $1::bigint IS NULL OR revision < $1::bigint
         ORDER BY revision DESC
         LIMIT $2
        """,
        below_revision,
        limit,
        timeout=timeout,
    )
    return _changes(rows)


def _changes(rows: list[asyncpg.Record]) -> list[Change]:
    return [
        Change(
            revision=r["revision"],
            changed_at=r["changed_at"],
            changed_by=r["changed_by"],
            reason=r["reason"],
            before=RolloutConfig.from_json(json.loads(r["before"])),
            after=RolloutConfig.from_json(json.loads(r["after"])),
        )
        for r in rows
    ]
