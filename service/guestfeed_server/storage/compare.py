"""V1 against V2 for many guests at once: the comparison's SQL, set-based, per batch.

For a batch of guests, one statement says per guest what V1 shows (a
delivery to their user id, or their own), which of those V2 shows too, what
V2 adds by type, and for each message V1 shows and V2 hides, the facts that
explain why: no scheduled message, the targets and the guest's tags, guest
rows since removed it was delivered to, the direct deliveries. The rules are
the stores' (storage/v1.py, storage/v2.py) written for sets; a test holds
the two to the same answers on random data.

It runs inside the caller's REPEATABLE READ READ ONLY transaction, so every
batch counts the same moment.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .pgtypes import Conn

# Active guests with an account, in user-id order, after a keyset position.
GUESTS_SQL = """
SELECT DISTINCT user_id
  FROM public.event_guests
 WHERE event_id = $1 AND user_id IS NOT NULL AND removed_at IS NULL AND user_id > $2
 ORDER BY user_id
 LIMIT $3
"""

GUEST_COUNT_SQL = """
SELECT count(DISTINCT user_id)
  FROM public.event_guests
 WHERE event_id = $1 AND user_id IS NOT NULL AND removed_at IS NULL
"""

# $1 event, $2 the batch's user ids (all active guests of the event).
BATCH_SQL = """
WITH viewer AS (
    SELECT g.user_id,
           array_agg(g.id) AS guest_ids,
           ARRAY(SELECT DISTINCT t FROM public.event_guests g2, unnest(g2.guest_tags) AS t
                  WHERE g2.event_id = $1 AND g2.user_id = g.user_id AND g2.removed_at IS NULL
                  ORDER BY 1) AS tags
      FROM public.event_guests g
     WHERE g.event_id = $1 AND g.user_id = ANY($2::uuid[]) AND g.removed_at IS NULL
     GROUP BY g.user_id
), msg AS MATERIALIZED (
    SELECT m.id, m.message_type::text AS type, m.sender_user_id, m.created_at,
           m.scheduled_message_id, sm.id AS sm_id, sm.target_guest_tags AS targets
      FROM public.messages m
      LEFT JOIN public.scheduled_messages sm
             ON sm.id = m.scheduled_message_id AND sm.event_id = m.event_id
     WHERE m.event_id = $1
), v1 AS MATERIALIZED (
    SELECT DISTINCT d.user_id, d.message_id AS id
      FROM public.message_deliveries d
      JOIN msg m ON m.id = d.message_id
     WHERE d.user_id = ANY($2::uuid[])
    UNION
    SELECT m.sender_user_id, m.id FROM msg m WHERE m.sender_user_id = ANY($2::uuid[])
), judged AS NOT MATERIALIZED (
    SELECT v1.user_id, m.id, m.type, m.created_at, m.scheduled_message_id, m.sm_id,
           m.targets, vw.tags, vw.guest_ids,
           COALESCE(m.sender_user_id = v1.user_id, false)
           OR m.type = 'announcement'
           OR (m.type = 'channel' AND m.sm_id IS NOT NULL
               AND (COALESCE(cardinality(m.targets), 0) = 0 OR m.targets && vw.tags))
           OR (m.type = 'direct' AND EXISTS (
                   SELECT FROM public.message_deliveries d
                    WHERE d.message_id = m.id
                      AND (d.user_id = v1.user_id OR d.guest_id = ANY(vw.guest_ids))))
           AS in_v2
      FROM v1
      JOIN msg m ON m.id = v1.id
      JOIN viewer vw ON vw.user_id = v1.user_id
), v2_extra AS (
    -- What V2 shows beyond V1, as (user, message) pairs: every announcement,
    -- the channels whose targets the guest's tags meet, and directs
    -- delivered to one of their guest rows (deliveries to their user id are
    -- V1's already). Their own messages are in V1. The branches cannot
    -- overlap (by type), so only the direct one needs de-duplicating.
    SELECT vw.user_id, m.id, m.type
      FROM viewer vw
      JOIN msg m ON m.type = 'announcement'
                 OR (m.type = 'channel' AND m.sm_id IS NOT NULL
                     AND (COALESCE(cardinality(m.targets), 0) = 0 OR m.targets && vw.tags))
    UNION ALL
    SELECT DISTINCT vw.user_id, m.id, m.type
      FROM viewer vw
     CROSS JOIN LATERAL unnest(vw.guest_ids) AS row_id
      JOIN public.message_deliveries d ON d.guest_id = row_id
      JOIN msg m ON m.id = d.message_id AND m.type = 'direct'
), extra AS (
    SELECT x.user_id, jsonb_object_agg(x.type, x.n) AS by_type
      FROM (SELECT e.user_id, e.type, count(*) AS n
              FROM v2_extra e
              LEFT JOIN v1 ON v1.user_id = e.user_id AND v1.id = e.id
             WHERE v1.id IS NULL
             GROUP BY e.user_id, e.type) x
     GROUP BY x.user_id
), judged_by_user AS (
    -- One pass over the judged pairs: the counts, and each message V1 shows
    -- and V2 hides with the facts behind it (deliveries to removed rows for
    -- channels, the deliveries themselves for directs).
    SELECT j.user_id,
           count(*) AS v1_count,
           count(*) FILTER (WHERE j.in_v2) AS common,
           jsonb_agg(jsonb_build_object(
               'id', j.id, 'type', j.type, 'created_at', j.created_at,
               'scheduled_message_id', j.scheduled_message_id,
               'scheduled_found', j.sm_id IS NOT NULL,
               'targets', j.targets, 'tags', j.tags,
               'removed_rows', CASE WHEN j.type = 'channel' THEN (
                   SELECT COALESCE(jsonb_agg(jsonb_build_object(
                              'guest_id', g.id, 'tags', g.guest_tags)), '[]')
                     FROM public.message_deliveries d
                     JOIN public.event_guests g ON g.id = d.guest_id
                    WHERE d.message_id = j.id AND d.user_id = j.user_id
                      AND g.removed_at IS NOT NULL) ELSE '[]' END,
               'deliveries', CASE WHEN j.type = 'direct' THEN (
                   SELECT COALESCE(jsonb_agg(jsonb_build_object(
                              'user_id', d.user_id, 'guest_id', d.guest_id)), '[]')
                     FROM (SELECT DISTINCT d.user_id, d.guest_id
                             FROM public.message_deliveries d
                            WHERE d.message_id = j.id LIMIT 5) d) ELSE '[]' END
           ) ORDER BY j.created_at DESC, j.id DESC) FILTER (WHERE NOT j.in_v2) AS v1_only
      FROM judged j
     GROUP BY j.user_id
)
SELECT vw.user_id,
       COALESCE(c.v1_count, 0) AS v1_count,
       COALESCE(c.common, 0) AS common,
       COALESCE(e.by_type, '{}')::text AS v2_only,
       COALESCE(c.v1_only, '[]')::text AS v1_only
  FROM viewer vw
  LEFT JOIN judged_by_user c ON c.user_id = vw.user_id
  LEFT JOIN extra e ON e.user_id = vw.user_id
 ORDER BY vw.user_id
"""


@dataclass(frozen=True, slots=True)
class HiddenFacts:
    """A message V1 shows a guest and V2 hides, with what the database says about it."""

    message_id: uuid.UUID
    message_type: str
    created_at: datetime
    scheduled_message_id: uuid.UUID | None
    scheduled_found: bool
    targets: tuple[str, ...] | None
    tags: tuple[str, ...]
    # Removed guest rows of this user the message was delivered to: (id, tags).
    removed_rows: tuple[tuple[uuid.UUID, tuple[str, ...]], ...]
    # Up to five of its deliveries: (user_id, guest_id).
    deliveries: tuple[tuple[uuid.UUID | None, uuid.UUID | None], ...]


@dataclass(frozen=True, slots=True)
class GuestRow:
    """One guest's comparison as the batch statement returns it."""

    user_id: uuid.UUID
    v1_count: int
    common: int
    v2_only: dict[str, int]
    hidden: list[HiddenFacts]


async def guest_count(conn: Conn, event_id: uuid.UUID, *, timeout: float) -> int:
    """Active guests of the event with an account."""
    return int(await conn.fetchval(GUEST_COUNT_SQL, event_id, timeout=timeout))


async def next_guests(
    conn: Conn, event_id: uuid.UUID, after: uuid.UUID, limit: int, *, timeout: float
) -> list[uuid.UUID]:
    """The next `limit` active guests' user ids after `after`, in order."""
    rows = await conn.fetch(GUESTS_SQL, event_id, after, limit, timeout=timeout)
    return [r["user_id"] for r in rows]


async def compare_batch(
    conn: Conn, event_id: uuid.UUID, users: list[uuid.UUID], *, timeout: float
) -> list[GuestRow]:
    """The comparison of a batch of active guests, in user-id order."""
    rows = await conn.fetch(BATCH_SQL, event_id, users, timeout=timeout)
    return [
        GuestRow(
            user_id=r["user_id"],
            v1_count=int(r["v1_count"]),
            common=int(r["common"]),
            v2_only={k: int(v) for k, v in json.loads(r["v2_only"]).items()},
            hidden=[_facts(h) for h in json.loads(r["v1_only"])],
        )
        for r in rows
    ]


def _uuid(value: Any) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


def _facts(h: dict[str, Any]) -> HiddenFacts:
    return HiddenFacts(
        message_id=uuid.UUID(h["id"]),
        message_type=h["type"],
        created_at=datetime.fromisoformat(h["created_at"]),
        scheduled_message_id=_uuid(h["scheduled_message_id"]),
        scheduled_found=bool(h["scheduled_found"]),
        targets=tuple(h["targets"]) if h["targets"] is not None else None,
        tags=tuple(h["tags"] or ()),
        removed_rows=tuple(
            (uuid.UUID(r["guest_id"]), tuple(r["tags"] or ())) for r in h["removed_rows"]
        ),
        deliveries=tuple((_uuid(d["user_id"]), _uuid(d["guest_id"])) for d in h["deliveries"]),
    )
