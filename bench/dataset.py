"""A deterministic, production-shaped dataset for `guestfeed bench feed`.

Every row is a function of (event number, row number): ids are md5 of a
label, "random" choices are `hashint8extended` of the row number with a salt.
No `random()`, no `now()`, so the same scale gives the same rows every time,
on any server, in any plan (parallel or not).

The rows are written as the host app and the SMS pipeline would have written
them, into the production tables of a scratch database:

* an event's guests have 0-3 tags out of 8 and join (are invited) at some
  point in the first 90% of its history; 1 in 10 has no account yet
  (`user_id` NULL);
* channel messages belong to scheduled messages (consecutive blocks, so a
  scheduled message is a bulk send) whose targets mix NULL, '{}', one tag and
  two or three tags;
* every three consecutive messages share one `created_at` (bulk sends: the
  keyset cursor must break the ties);
* announcements and channel messages get one delivery row per targeted guest
  who had joined by then; direct messages one row for their guest, 20% of them
  with `user_id` NULL (the guest signed up later); 3-5% of deliveries carry an
  earlier failed attempt (retries), and the final statuses mix delivered, sent,
  failed and undelivered;
* guests' own messages are `direct` messages sent by their user.

Loading is one `INSERT ... SELECT generate_series` per table (the fastest way
on two cores), with `synchronous_commit = off`, foreign-key triggers off
(`session_replication_role = replica`; the rows are consistent by
construction) and the big tables' secondary indexes dropped during the load
and rebuilt after it with the contract's own DDL. Then `migrate` adds the
service's indexes (CONCURRENTLY, as in production) and VACUUM ANALYZE leaves
the tables as autovacuum would: statistics fresh, visibility map set.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from guestfeed_server.storage.migrate import migrate, production_schema_sql

SCALES = ("small", "shape", "growth", "all")

TAGS = (
    "family",
    "friends",
    "bride_side",
    "groom_side",
    "vip",
    "out_of_town",
    "plus_one",
    "rehearsal",
)
_TAGS_SQL = "'{" + ",".join(TAGS) + "}'::text[]"
_START = "'2025-03-01 12:00:00+00'::timestamptz"
_DAY_S = 86_400.0
_LOREM = (
    "Thank you all for coming! Quick reminders: the shuttle leaves the hotel lobby at 4pm "
    "sharp, dinner is served at 7, and the dance floor opens right after the toasts. Please "
    "bring your invitation card, dress warmly for the garden ceremony and share photos with us."
)


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One generated event: its size and its message mix (the rest are guests' own)."""

    key: str
    number: int
    guests: int
    messages: int
    scheduled: int
    span_days: float
    announce: float = 0.5
    channel: float = 0.3
    direct: float = 0.1
    deliveries: bool = True
    tagged: bool = True

    @property
    def event_id(self) -> uuid.UUID:
        """The event's id: md5 of its label, as the SQL computes it."""
        return bench_uuid("event", self.number, 0)


@dataclass
class Dataset:
    """What was generated, how big it is and how long it took."""

    scale: str
    events: dict[str, EventSpec]
    counts: dict[str, int] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        """Generation time, all phases."""
        return sum(self.timings_s.values())


def bench_uuid(kind: str, number: int, n: int) -> uuid.UUID:
    """`md5('gf-bench:' || kind || ':' || number || ':' || n)::uuid`, in Python."""
    return uuid.UUID(hashlib.md5(f"gf-bench:{kind}:{number}:{n}".encode()).hexdigest())


def _shape() -> list[EventSpec]:
    # The event: 300 guests, 30,000 messages, 1,000 scheduled messages.
    return [EventSpec("shape", 1, guests=300, messages=30_000, scheduled=1_000, span_days=120)]


def _filler() -> list[EventSpec]:
    # Other events, so the deliveries table is production-sized (~5M rows with
    # the shape event's ~3.3M): ~9,000 deliveries each.
    return [
        EventSpec("filler", 1_000 + k, guests=60, messages=400, scheduled=14, span_days=30)
        for k in range(190)
    ]


def _growth() -> list[EventSpec]:
    # Same mix, 30 guests: history length varies, fan-out stays small
    # (~1.2M deliveries for the three).
    return [
        EventSpec(f"growth_{label}", 10 + i, guests=30, messages=n, scheduled=max(10, n // 30),
                  span_days=days)
        for i, (label, n, days) in enumerate(
            (("1k", 1_000, 30), ("10k", 10_000, 90), ("100k", 100_000, 365))
        )
    ]  # fmt: skip


def _stream_1m() -> list[EventSpec]:
    # For the streaming memory bound only: a million messages a v2 viewer sees
    # all of (announcements, and channels to everyone); no deliveries needed.
    return [
        EventSpec(
            "stream_1m",
            20,
            guests=5,
            messages=1_000_000,
            scheduled=100,
            span_days=365,
            announce=0.9,
            channel=0.1,
            direct=0.0,
            deliveries=False,
            tagged=False,
        )
    ]


def specs_for(scale: str, *, stream_1m: bool = False) -> list[EventSpec]:
    """The events of a scale (`all` is shape + filler + growth + the 1M stream event)."""
    if scale == "small":
        specs = [EventSpec("small", 1, guests=50, messages=2_000, scheduled=70, span_days=30)]
    elif scale == "shape":
        specs = _shape() + _filler()
    elif scale == "growth":
        specs = _growth()
    elif scale == "all":
        specs = _shape() + _filler() + _growth()
        stream_1m = True
    else:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    return specs + (_stream_1m() if stream_1m else [])


# Deterministic helpers, for this session only. Plain SQL functions are
# inlined by the planner, so they cost no more than the expressions.
FUNCTIONS_SQL = """
CREATE FUNCTION pg_temp.rnd(salt int, e int, n bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT ((hashint8extended(n, salt::bigint * 1000003 + e) >> 11) & 9007199254740991)::float8
          / 9007199254740992.0 $$;
CREATE FUNCTION pg_temp.uid(kind text, e int, n bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT md5('gf-bench:' || kind || ':' || e || ':' || n)::uuid $$;
CREATE TEMP TABLE gen_spec (
    e int PRIMARY KEY, key text NOT NULL, n_guests int NOT NULL, n_messages int NOT NULL,
    n_scheduled int NOT NULL, span_s float8 NOT NULL, p_ann float8 NOT NULL,
    p_chan float8 NOT NULL, p_direct float8 NOT NULL, deliveries bool NOT NULL,
    tagged bool NOT NULL, start_at timestamptz NOT NULL DEFAULT {start}
);
"""

# Staging tables hold the generated attributes (guest number, join time, kind
# of message, target guest...) that the production tables have no column for.
STAGE_SQL = f"""
CREATE TEMP TABLE gen_guests AS
SELECT sp.e, g,
       pg_temp.uid('guest', sp.e, g) AS id,
       CASE WHEN g % 10 <> 0 THEN pg_temp.uid('user', sp.e, g) END AS user_id,
       '+1555' || lpad((sp.e::bigint * 1000 + g)::text, 8, '0') AS phone,
       CASE WHEN sp.tagged THEN ARRAY(
                SELECT t.tag FROM unnest({_TAGS_SQL}) WITH ORDINALITY AS t(tag, k)
                 ORDER BY pg_temp.rnd(3, sp.e, g::bigint * 8 + t.k)
                 LIMIT floor(pg_temp.rnd(2, sp.e, g) * 4)::int)
            ELSE '{{}}'::text[] END AS tags,
       sp.start_at + make_interval(secs => sp.span_s * 0.9 * pg_temp.rnd(4, sp.e, g)) AS joined_at,
       g % 10 <> 0 AND pg_temp.rnd(5, sp.e, g) < 0.01 AS removed
  FROM gen_spec sp, generate_series(1, sp.n_guests) AS g;

CREATE TEMP TABLE gen_sched AS
SELECT sp.e, s, pg_temp.uid('sched', sp.e, s) AS id,
       CASE WHEN NOT sp.tagged OR x.r < 0.2 THEN NULL
            WHEN x.r < 0.3 THEN '{{}}'::text[]
            WHEN x.r < 0.7 THEN ARRAY[({_TAGS_SQL})[1 + floor(pg_temp.rnd(7, sp.e, s) * 8)::int]]
            ELSE ARRAY(
                SELECT t.tag FROM unnest({_TAGS_SQL}) WITH ORDINALITY AS t(tag, k)
                 ORDER BY pg_temp.rnd(8, sp.e, s::bigint * 8 + t.k)
                 LIMIT 2 + floor(pg_temp.rnd(9, sp.e, s) * 2)::int)
       END AS tags,
       sp.start_at + make_interval(secs => sp.span_s * (s - 1) / sp.n_scheduled) AS send_at
  FROM gen_spec sp, generate_series(1, sp.n_scheduled) AS s,
       LATERAL (SELECT pg_temp.rnd(6, sp.e, s) AS r) x;

CREATE TEMP TABLE gen_messages AS
SELECT sp.e, i, pg_temp.uid('msg', sp.e, i) AS id, k.kind,
       CASE WHEN k.kind = 'channel'
            THEN 1 + floor(i::float8 * sp.n_scheduled / sp.n_messages)::int END AS s,
       CASE WHEN k.kind = 'direct'
            THEN 1 + floor(pg_temp.rnd(12, sp.e, i) * sp.n_guests)::int END AS to_g,
       CASE WHEN k.kind = 'own' THEN (
            SELECT CASE WHEN g0 % 10 = 0 THEN g0 - 1 ELSE g0 END
              FROM (SELECT 1 + floor(pg_temp.rnd(13, sp.e, i) * sp.n_guests)::int AS g0) q)
       END AS from_g,
       -- Three consecutive messages share a timestamp: bulk sends.
       sp.start_at + make_interval(secs => sp.span_s * (i / 3 * 3)::float8 / sp.n_messages)
           AS created_at
  FROM gen_spec sp, generate_series(0, sp.n_messages - 1) AS i,
       LATERAL (SELECT pg_temp.rnd(10, sp.e, i) AS r) x,
       LATERAL (SELECT CASE WHEN x.r < sp.p_ann THEN 'announcement'
                            WHEN x.r < sp.p_ann + sp.p_chan THEN 'channel'
                            WHEN x.r < sp.p_ann + sp.p_chan + sp.p_direct THEN 'direct'
                            ELSE 'own' END AS kind) k
 ORDER BY sp.e, i;
"""

LOAD_SQL: tuple[tuple[str, str], ...] = (
    (
        "users",
        """
INSERT INTO public.users (id, full_name, avatar_url, phone, created_at)
SELECT pg_temp.uid('host', e, 0), 'Host of ' || key || ' #' || e,
       'https://cdn.example.invalid/avatars/host-' || e || '.jpg',
       '+1444' || lpad(e::text, 8, '0'), start_at - interval '90 days'
  FROM gen_spec
UNION ALL
SELECT user_id,
       CASE WHEN pg_temp.rnd(14, e, g) < 0.05 THEN NULL ELSE 'Guest ' || e || '-' || g END,
       CASE WHEN pg_temp.rnd(15, e, g) < 0.4
            THEN 'https://cdn.example.invalid/avatars/' || user_id || '.jpg' END,
       phone, joined_at
  FROM gen_guests WHERE user_id IS NOT NULL
""",
    ),
    (
        "events",
        """
INSERT INTO public.events (id, title, host_user_id, event_date, created_at)
SELECT pg_temp.uid('event', e, 0), 'Bench ' || key || ' #' || e, pg_temp.uid('host', e, 0),
       (start_at + make_interval(secs => span_s))::date, start_at - interval '60 days'
  FROM gen_spec
""",
    ),
    (
        "event_guests",
        """
INSERT INTO public.event_guests
       (id, event_id, user_id, phone, guest_name, guest_tags, role, removed_at, created_at)
SELECT g.id, pg_temp.uid('event', g.e, 0), g.user_id, g.phone, 'Guest ' || g.e || '-' || g.g,
       g.tags, 'guest',
       CASE WHEN g.removed THEN sp.start_at + make_interval(secs => sp.span_s) END, g.joined_at
  FROM gen_guests g JOIN gen_spec sp USING (e)
 ORDER BY g.e, g.g
""",
    ),
    (
        "scheduled_messages",
        """
INSERT INTO public.scheduled_messages (id, event_id, sender_user_id, content, message_type,
                                       target_guest_tags, send_at, status, created_at)
SELECT id, pg_temp.uid('event', e, 0), pg_temp.uid('host', e, 0),
       'Scheduled update ' || s || ' for ' || coalesce(array_to_string(tags, ', '), 'everyone'),
       'channel', tags, send_at, 'sent', send_at - interval '2 days'
  FROM gen_sched
 ORDER BY e, s
""",
    ),
    (
        "messages",
        f"""
INSERT INTO public.messages (id, event_id, sender_user_id, content, message_type,
                             scheduled_message_id, created_at)
SELECT m.id, pg_temp.uid('event', m.e, 0),
       CASE WHEN m.kind = 'own' THEN pg_temp.uid('user', m.e, m.from_g)
            ELSE pg_temp.uid('host', m.e, 0) END,
       left('{_LOREM}', 20 + floor(pg_temp.rnd(16, m.e, m.i) * 200)::int) || ' #' || m.i,
       (CASE WHEN m.kind = 'own' THEN 'direct' ELSE m.kind END)::public.message_type_enum,
       CASE WHEN m.kind = 'channel' THEN pg_temp.uid('sched', m.e, m.s) END,
       m.created_at
  FROM gen_messages m
 ORDER BY m.e, m.i
""",
    ),
    (
        # Announcements and channels: one row per targeted guest who had joined,
        # attempt 2 (3%) being an earlier failed try of the same recipient.
        "message_deliveries (announcements, channels)",
        """
INSERT INTO public.message_deliveries (id, message_id, guest_id, user_id, phone_number,
                                       sms_status, sms_provider_id, created_at, updated_at)
SELECT pg_temp.uid('dlv' || a, m.e, m.i::bigint * 100000 + g.g), m.id, g.id, g.user_id, g.phone,
       CASE WHEN a = 2 THEN 'failed'
            WHEN x.r < 0.92 THEN 'delivered' WHEN x.r < 0.95 THEN 'sent'
            WHEN x.r < 0.98 THEN 'failed' ELSE 'undelivered' END,
       'SM' || md5('sid' || a || ':' || m.e || ':' || m.i || ':' || g.g),
       m.created_at + make_interval(secs => 3 - a), m.created_at + make_interval(secs => 9 - a)
  FROM gen_messages m
  JOIN gen_spec sp ON sp.e = m.e AND sp.deliveries
  JOIN gen_guests g ON g.e = m.e AND g.joined_at <= m.created_at
  LEFT JOIN gen_sched s ON s.e = m.e AND s.s = m.s
  CROSS JOIN LATERAL (SELECT pg_temp.rnd(20, m.e, m.i::bigint * 100000 + g.g) AS r,
                             pg_temp.rnd(21, m.e, m.i::bigint * 100000 + g.g) AS retry) x
  CROSS JOIN LATERAL generate_series(1, CASE WHEN x.retry < 0.03 THEN 2 ELSE 1 END) AS a
 WHERE m.kind = 'announcement'
    OR (m.kind = 'channel'
        AND (coalesce(cardinality(s.tags), 0) = 0 OR g.tags && s.tags))
""",
    ),
    (
        # Direct messages: their guest only; 20% before the guest had an
        # account (user_id NULL, guest_id only); 5% with an earlier failed try.
        "message_deliveries (direct)",
        """
INSERT INTO public.message_deliveries (id, message_id, guest_id, user_id, phone_number,
                                       sms_status, sms_provider_id, created_at, updated_at)
SELECT pg_temp.uid('dlv' || a, m.e, m.i::bigint * 100000 + g.g), m.id, g.id,
       CASE WHEN pg_temp.rnd(22, m.e, m.i) < 0.2 THEN NULL ELSE g.user_id END, g.phone,
       CASE WHEN a = 2 THEN 'failed' WHEN pg_temp.rnd(24, m.e, m.i) < 0.95 THEN 'delivered'
            ELSE 'undelivered' END,
       'SM' || md5('sid' || a || ':' || m.e || ':' || m.i || ':' || g.g),
       m.created_at + make_interval(secs => 3 - a), m.created_at + make_interval(secs => 9 - a)
  FROM gen_messages m
  JOIN gen_spec sp ON sp.e = m.e AND sp.deliveries
  JOIN gen_guests g ON g.e = m.e AND g.g = m.to_g
  CROSS JOIN LATERAL generate_series(
        1, CASE WHEN pg_temp.rnd(23, m.e, m.i) < 0.05 THEN 2 ELSE 1 END) AS a
 WHERE m.kind = 'direct'
""",
    ),
)

# Secondary indexes of the big tables, dropped for the load and rebuilt from
# the contract's own DDL afterwards (building once beats 5M random inserts).
_DROPPED_INDEXES = ("idx_messages_event_created", "idx_deliveries_message", "idx_deliveries_user")
_DELIVERIES_PKEY = "message_deliveries_pkey"

COUNT_TABLES = (
    "users",
    "events",
    "event_guests",
    "scheduled_messages",
    "messages",
    "message_deliveries",
)


def _contract_index_ddl(name: str) -> str:
    match = re.search(rf"CREATE INDEX {name} ON [^;]+;", production_schema_sql())
    if match is None:
        raise RuntimeError(f"index {name} is not in the production schema contract")
    return match.group(0)


async def generate(
    conn: asyncpg.Connection,
    scale: str,
    *,
    stream_1m: bool = False,
    log: bool = False,
    specs: Sequence[EventSpec] | None = None,
) -> Dataset:
    """Creates the production tables on an empty database, fills them, migrates, analyzes.

    `conn` must be a superuser's on a database of its own (a scratch one):
    this writes the production tables, which the service itself never does.
    `specs` replaces the scale's events (then `scale` only names the dataset):
    the soak brings its own mix of events.
    """
    specs = list(specs) if specs is not None else specs_for(scale, stream_1m=stream_1m)
    data = Dataset(scale=scale, events={s.key: s for s in specs if s.key != "filler"})

    def say(msg: str) -> None:
        if log:
            print(f"  dataset: {msg}", flush=True)

    async def phase(name: str, sql: str) -> None:
        started = time.perf_counter()
        status = await conn.execute(sql)
        took = time.perf_counter() - started
        data.timings_s[name] = round(data.timings_s.get(name, 0.0) + took, 3)
        say(f"{name}: {status} in {took:.1f}s")

    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET maintenance_work_mem = '512MB'")
    await conn.execute("SET TimeZone = 'UTC'")
    await phase("tables", production_schema_sql())
    await phase(
        "drop secondary indexes",
        "".join(f"DROP INDEX public.{n};" for n in _DROPPED_INDEXES)
        + f"ALTER TABLE public.message_deliveries DROP CONSTRAINT {_DELIVERIES_PKEY};",
    )
    try:
        # Foreign keys are not checked row by row during the load (superuser
        # only; the rows reference each other correctly by construction).
        await conn.execute("SET session_replication_role = replica")
    except asyncpg.InsufficientPrivilegeError:
        say("not a superuser: foreign keys are checked during the load (slower)")
    await conn.execute(FUNCTIONS_SQL.replace("{start}", _START))
    await conn.copy_records_to_table(
        "gen_spec",
        records=[
            (
                s.number,
                s.key,
                s.guests,
                s.messages,
                s.scheduled,
                s.span_days * _DAY_S,
                s.announce,
                s.channel,
                s.direct,
                s.deliveries,
                s.tagged,
            )
            for s in specs
        ],
        columns=[
            "e",
            "key",
            "n_guests",
            "n_messages",
            "n_scheduled",
            "span_s",
            "p_ann",
            "p_chan",
            "p_direct",
            "deliveries",
            "tagged",
        ],
    )
    await phase("stage", STAGE_SQL)
    for name, sql in LOAD_SQL:
        await phase(f"load {name}", sql)
    await conn.execute("RESET session_replication_role")
    await conn.execute("DROP TABLE gen_spec, gen_guests, gen_sched, gen_messages")
    await phase(
        "rebuild contract indexes",
        "".join(_contract_index_ddl(n) for n in _DROPPED_INDEXES)
        + f"ALTER TABLE public.message_deliveries ADD CONSTRAINT {_DELIVERIES_PKEY} "
        "PRIMARY KEY (id);",
    )
    started = time.perf_counter()
    applied = await migrate(conn)
    data.timings_s["migrate (service indexes, CONCURRENTLY)"] = round(
        time.perf_counter() - started, 3
    )
    say(f"migrate applied {', '.join(applied)}")
    await phase(
        "vacuum analyze", "VACUUM (ANALYZE) " + ", ".join(f"public.{t}" for t in COUNT_TABLES)
    )
    # Write the load's dirty pages out now, not during the measurements.
    await phase("checkpoint", "CHECKPOINT")
    for table in COUNT_TABLES:
        data.counts[table] = int(await conn.fetchval(f"SELECT count(*) FROM public.{table}"))
    return data
