"""The statements behind live updates (docs/watch.md): the horizon, one tick's
changes for every watched event, the watchers' access, and one watcher's catch-up.

A message's *key* is when it became visible to a guest: `messages.created_at`
when the messages table shows it (own messages; in v2 announcements and
tag-matching channel messages), else the `created_at` of the guest's first
delivery of it (v1: every message; v2: direct messages). A message reachable
both ways is keyed by the smaller of the two. Both default to `now()`, the
writing transaction's start, which is what the horizon bounds.
"""

from __future__ import annotations

from .base import VIEWER_CTE

# The message columns every change row carries, with the sender's name and
# avatar and the channel's audience (no scheduled row: no audience, never shown).
_MESSAGE_COLUMNS = """
       m.id, m.event_id, m.content, m.created_at, m.message_type::text AS message_type,
       m.sender_user_id, u.full_name, u.avatar_url,
       COALESCE(sm.found, false) AS scheduled, sm.target_guest_tags"""

_MESSAGE_JOINS = """
  LEFT JOIN LATERAL (
        SELECT u.full_name, u.avatar_url FROM public.users u
         WHERE u.id = m.sender_user_id
         LIMIT 1) u ON true
  LEFT JOIN LATERAL (
        SELECT true AS found, sm.target_guest_tags FROM public.scheduled_messages sm
         WHERE sm.id = m.scheduled_message_id AND sm.event_id = m.event_id
         LIMIT 1) sm ON true"""

# One tick, for every watched event ($1) and watching user ($2), rows keyed in
# [$3, $4). Three kinds of row:
#   'm'  a message written in the window (who sees it is decided in memory:
#        the watcher's tags, own messages, the read model);
#   'v1' a delivery in the window to a watching user (v1 shows any message so);
#   'v2' the same for direct messages, to the delivery's user and to the user
#        of its (active) guest row, as the v2 page matches deliveries.
# `prior` says the recipient already saw the message through an earlier
# delivery (before $3): retries and late rows never show a message twice.
# `own_prior_*` says the sender saw their own message through a delivery
# older than the message row, which then keys it instead.
CHANGES_SQL = f"""
WITH fresh AS (
    SELECT d.message_id, d.user_id, d.guest_id, d.sms_status, d.created_at AS key,
           m.event_id, m.message_type
      FROM public.message_deliveries d
      JOIN public.messages m ON m.id = d.message_id
     WHERE d.created_at >= $3 AND d.created_at < $4
       AND m.event_id = ANY($1::uuid[])
), rows AS (
    SELECT 'm'::text AS path, m.id, NULL::uuid AS recipient, NULL::text AS sms_status,
           m.created_at AS key
      FROM public.messages m
     WHERE m.event_id = ANY($1::uuid[]) AND m.created_at >= $3 AND m.created_at < $4
    UNION ALL
    SELECT 'v1', f.message_id, f.user_id, f.sms_status, f.key
      FROM fresh f
     WHERE f.user_id = ANY($2::uuid[])
    UNION ALL
    SELECT 'v2', f.message_id, r.recipient, f.sms_status, f.key
      FROM fresh f
     CROSS JOIN LATERAL (
            SELECT f.user_id AS recipient WHERE f.user_id IS NOT NULL
            UNION
            SELECT g.user_id FROM public.event_guests g
             WHERE g.id = f.guest_id AND g.event_id = f.event_id
               AND g.removed_at IS NULL AND g.user_id IS NOT NULL) r
     WHERE f.message_type = 'direct' AND r.recipient = ANY($2::uuid[])
)
SELECT r.path, r.key, r.recipient, r.sms_status,
       CASE r.path
         WHEN 'v1' THEN EXISTS (
              SELECT FROM public.message_deliveries d
               WHERE d.message_id = m.id AND d.created_at < $3 AND d.user_id = r.recipient)
         WHEN 'v2' THEN EXISTS (
              SELECT FROM public.message_deliveries d
               WHERE d.message_id = m.id AND d.created_at < $3
                 AND (d.user_id = r.recipient OR d.guest_id IN (
                      SELECT g.id FROM public.event_guests g
                       WHERE g.event_id = m.event_id AND g.user_id = r.recipient
                         AND g.removed_at IS NULL)))
         ELSE false
       END AS prior,
       (r.path = 'm' AND m.sender_user_id IS NOT NULL AND EXISTS (
              SELECT FROM public.message_deliveries d
               WHERE d.message_id = m.id AND d.created_at < m.created_at
                 AND d.user_id = m.sender_user_id)) AS own_prior_v1,
       (r.path = 'm' AND m.message_type = 'direct' AND m.sender_user_id IS NOT NULL AND EXISTS (
              SELECT FROM public.message_deliveries d
               WHERE d.message_id = m.id AND d.created_at < m.created_at
                 AND (d.user_id = m.sender_user_id OR d.guest_id IN (
                      SELECT g.id FROM public.event_guests g
                       WHERE g.event_id = m.event_id AND g.user_id = m.sender_user_id
                         AND g.removed_at IS NULL)))) AS own_prior_v2,
       {_MESSAGE_COLUMNS}
  FROM rows r
  JOIN public.messages m ON m.id = r.id
  {_MESSAGE_JOINS}
 ORDER BY r.key, m.id
"""

# Every watched (event, user) pair ($1, $2 zipped) that is an active guest,
# with its guest rows, tags and name as the page statements read them.
VIEWERS_SQL = """
SELECT p.event_id, p.user_id,
       array_agg(g.id ORDER BY g.created_at, g.id) AS guest_ids,
       (array_agg(g.guest_name ORDER BY g.created_at, g.id)
           FILTER (WHERE g.guest_name IS NOT NULL))[1] AS guest_name,
       ARRAY(SELECT DISTINCT t
               FROM public.event_guests g2, unnest(g2.guest_tags) AS t
              WHERE g2.event_id = p.event_id AND g2.user_id = p.user_id
                AND g2.removed_at IS NULL
              ORDER BY 1) AS tags
  FROM (SELECT DISTINCT * FROM unnest($1::uuid[], $2::uuid[]) AS x(event_id, user_id)) p
  JOIN public.event_guests g
    ON g.event_id = p.event_id AND g.user_id = p.user_id AND g.removed_at IS NULL
 GROUP BY p.event_id, p.user_id
"""

# One watcher's catch-up: event $1, user $2, keys in [$3, $4), at most $5 rows.
# The viewer's row first (none at all: not an active guest), then the
# messages in key order, each once, keyed by the rules above.
_V1_CANDIDATES = """
    SELECT m.id, m.created_at AS key, 'm'::text AS path, NULL::text AS sms_status
      FROM public.messages m
     WHERE m.event_id = $1 AND m.sender_user_id = $2
       AND m.created_at >= $3 AND m.created_at < $4
       AND NOT EXISTS (SELECT FROM public.message_deliveries d
                        WHERE d.message_id = m.id AND d.user_id = $2
                          AND d.created_at < m.created_at)
    UNION ALL
    SELECT * FROM (
        SELECT DISTINCT ON (d.message_id) d.message_id, d.created_at, 'v1'::text, d.sms_status
          FROM public.message_deliveries d
          JOIN public.messages m ON m.id = d.message_id
         WHERE d.user_id = $2 AND m.event_id = $1
           AND d.created_at >= $3 AND d.created_at < $4
           AND NOT (COALESCE(m.sender_user_id = $2, false) AND m.created_at <= d.created_at)
         ORDER BY d.message_id, d.created_at, d.id) first
     WHERE NOT EXISTS (SELECT FROM public.message_deliveries d
                        WHERE d.message_id = first.message_id AND d.user_id = $2
                          AND d.created_at < $3)"""

_MINE_V2 = "(d.user_id = $2 OR d.guest_id = ANY((SELECT guest_ids FROM viewer)::uuid[]))"

_V2_CANDIDATES = f"""
    SELECT m.id, m.created_at AS key, 'm'::text AS path, NULL::text AS sms_status
      FROM public.messages m
      LEFT JOIN LATERAL (
            SELECT true AS found, sm.target_guest_tags FROM public.scheduled_messages sm
             WHERE sm.id = m.scheduled_message_id AND sm.event_id = m.event_id
             LIMIT 1) sm ON true
     WHERE m.event_id = $1 AND m.created_at >= $3 AND m.created_at < $4
       AND (m.message_type = 'announcement'
            OR (m.message_type = 'channel' AND COALESCE(sm.found, false)
                AND (COALESCE(cardinality(sm.target_guest_tags), 0) = 0
                     OR sm.target_guest_tags && (SELECT tags FROM viewer)))
            OR (m.sender_user_id = $2
                AND NOT (m.message_type = 'direct' AND EXISTS (
                    SELECT FROM public.message_deliveries d
                     WHERE d.message_id = m.id AND d.created_at < m.created_at
                       AND {_MINE_V2}))))
    UNION ALL
    SELECT * FROM (
        SELECT DISTINCT ON (d.message_id) d.message_id, d.created_at, 'v2'::text, d.sms_status
          FROM public.message_deliveries d
          JOIN public.messages m ON m.id = d.message_id
         WHERE m.event_id = $1 AND m.message_type = 'direct' AND {_MINE_V2}
           AND d.created_at >= $3 AND d.created_at < $4
           AND NOT (COALESCE(m.sender_user_id = $2, false) AND m.created_at <= d.created_at)
         ORDER BY d.message_id, d.created_at, d.id) first
     WHERE NOT EXISTS (SELECT FROM public.message_deliveries d
                        WHERE d.message_id = first.message_id AND d.created_at < $3
                          AND {_MINE_V2})"""


def _catch_up_sql(candidates: str) -> str:
    return f"""
WITH {VIEWER_CTE},
cand AS ({candidates}
), picked AS (
    SELECT * FROM cand ORDER BY key, id LIMIT $5
)
SELECT * FROM (
    SELECT 0 AS part, v.guest_ids, v.tags, v.guest_name,
           NULL::text AS path, NULL::timestamptz AS key, NULL::text AS sms_status,
           NULL::uuid AS id, NULL::uuid AS event_id, NULL::text AS content,
           NULL::timestamptz AS created_at, NULL::text AS message_type,
           NULL::uuid AS sender_user_id, NULL::text AS full_name, NULL::text AS avatar_url,
           NULL::boolean AS scheduled, NULL::text[] AS target_guest_tags
      FROM viewer v
    UNION ALL
    SELECT 1, NULL, NULL, NULL, c.path, c.key, c.sms_status, {_MESSAGE_COLUMNS}
      FROM picked c
      JOIN public.messages m ON m.id = c.id
      {_MESSAGE_JOINS}
     WHERE EXISTS (SELECT FROM viewer)
) result
ORDER BY part, key, id
"""


CATCH_UP_V1_SQL = _catch_up_sql(_V1_CANDIDATES)
CATCH_UP_V2_SQL = _catch_up_sql(_V2_CANDIDATES)
