"""`python -m bench compare`: CompareReadModels on the issue's event, timed.

On a scratch database: one event with 2,000 guests (all signed up) and 2,000
messages with their deliveries, as the SMS pipeline writes them: half
announcements delivered to every guest, 30 % channel messages over 40 tagged
scheduled messages delivered to the guests their tags matched, 10 % direct
messages to one guest each, the rest guests' own. Then a tenth of the guests
lose a tag, so their comparison has V1-only messages to explain. The figure
is CompareReadModels end to end over gRPC against a `guestfeed serve` child,
plus the use case alone, the median of a few runs each.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc

from guestfeed.v1 import rollout_pb2, rollout_pb2_grpc
from guestfeed_server.auth import Principal, Role, mint
from guestfeed_server.domain.budget import Budget
from guestfeed_server.rollout.compare import ReadModelComparison
from guestfeed_server.storage.migrate import migrate, production_schema_sql
from guestfeed_server.testing import embedded_server, scratch_database, spawn_server

from .common import SECRET
from .measure_db import single_connection

EVENT = uuid.UUID("c0ffee00-0000-4000-8000-000000000001")
TAGS = ("family", "friends", "work", "plus_one", "kids")

# Literal values (ours, never a caller's) keep each statement self-contained.
DATASET_SQL = """
INSERT INTO public.users (id, full_name)
SELECT md5('cmp-u' || i)::uuid, 'Guest ' || i FROM generate_series(0, {guests}) i;
INSERT INTO public.events (id, title, host_user_id)
VALUES ('{event}', 'compare', md5('cmp-u0')::uuid);
INSERT INTO public.event_guests (id, event_id, user_id, guest_name, guest_tags)
SELECT md5('cmp-g' || i)::uuid, '{event}', md5('cmp-u' || i)::uuid, 'Guest ' || i,
       ARRAY[(ARRAY['family','friends','work','plus_one','kids'])[1 + i % 5]]
  FROM generate_series(1, {guests}) i;
INSERT INTO public.scheduled_messages
       (id, event_id, content, message_type, target_guest_tags, send_at)
SELECT md5('cmp-s' || i)::uuid, '{event}', 's', 'channel',
       ARRAY[(ARRAY['family','friends','work','plus_one','kids'])[1 + i % 5]], now()
  FROM generate_series(0, 39) i;
INSERT INTO public.messages (id, event_id, sender_user_id, content, message_type,
                             scheduled_message_id, created_at)
SELECT md5('cmp-m' || i)::uuid, '{event}',
       CASE WHEN i % 10 = 9 THEN md5('cmp-u' || (1 + i % {guests}))::uuid
            ELSE md5('cmp-u0')::uuid END,
       'message ' || i,
       (CASE WHEN i % 10 < 5 THEN 'announcement' WHEN i % 10 < 8 THEN 'channel'
             ELSE 'direct' END)::public.message_type_enum,
       CASE WHEN i % 10 BETWEEN 5 AND 7 THEN md5('cmp-s' || (i % 40))::uuid END,
       timestamptz '2026-06-01' + i * interval '1 minute'
  FROM generate_series(0, {messages} - 1) i;
INSERT INTO public.message_deliveries (message_id, guest_id, user_id, sms_status, created_at)
SELECT m.id, g.id, g.user_id, 'delivered', m.created_at
  FROM public.messages m JOIN public.event_guests g ON g.event_id = m.event_id
 WHERE m.event_id = '{event}' AND m.message_type = 'announcement';
INSERT INTO public.message_deliveries (message_id, guest_id, user_id, sms_status, created_at)
SELECT m.id, g.id, g.user_id, 'delivered', m.created_at
  FROM public.messages m
  JOIN public.scheduled_messages sm ON sm.id = m.scheduled_message_id
  JOIN public.event_guests g
    ON g.event_id = m.event_id AND g.guest_tags && sm.target_guest_tags
 WHERE m.event_id = '{event}' AND m.message_type = 'channel';
INSERT INTO public.message_deliveries (message_id, guest_id, user_id, sms_status, created_at)
SELECT m.id, md5('cmp-g' || k)::uuid, md5('cmp-u' || k)::uuid, 'delivered', m.created_at
  FROM public.messages m,
       LATERAL (SELECT 1 + (hashtext(m.id::text) & 1048575) % {guests} AS k) pick
 WHERE m.event_id = '{event}' AND m.message_type = 'direct'
   AND m.sender_user_id = md5('cmp-u0')::uuid;
UPDATE public.event_guests SET guest_tags = '{{}}'
 WHERE event_id = '{event}' AND ('x' || substr(id::text, 1, 4))::bit(16)::int % 10 = 0
"""


@dataclass
class CompareResult:
    """What one benchmark run measured."""

    guests: int
    messages: int
    deliveries: int
    generation_s: float
    grpc_s: list[float]
    use_case_s: list[float]
    guests_with_v1_only: int
    v1_only_total: int

    def table(self) -> str:
        """The printed report."""
        grpc_median = statistics.median(self.grpc_s)
        lines = [
            f"python -m bench compare: one event, {self.guests:,} guests, {self.messages:,} "
            f"messages, {self.deliveries:,} deliveries (generated in {self.generation_s:.1f}s)",
            "",
            f"{'what':<34} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7}",
        ]
        for what, samples in (
            ("CompareReadModels over gRPC", self.grpc_s),
            ("the use case alone", self.use_case_s),
        ):
            lines.append(
                f"{what:<34} {len(samples):>4} {statistics.median(samples):>9.2f} "
                f"{min(samples):>7.2f} {max(samples):>7.2f}"
            )
        met = "MET" if grpc_median <= 15 else "MISSED"
        lines += [
            "",
            f"found: {self.guests_with_v1_only} guests with V1-only messages, "
            f"{self.v1_only_total} in all",
            f"target: 2,000 guests in <= 15 s over gRPC: {grpc_median:.2f} s [{met}]",
        ]
        return "\n".join(lines)


async def _generate(dsn: str, guests: int, messages: int) -> tuple[float, int]:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.execute(production_schema_sql())
        await migrate(conn)
        sql = DATASET_SQL.format(event=EVENT, guests=int(guests), messages=int(messages))
        await conn.execute(sql)
        await conn.execute("VACUUM ANALYZE")
        deliveries = int(await conn.fetchval("SELECT count(*) FROM public.message_deliveries"))
        return time.perf_counter() - started, deliveries
    finally:
        await conn.close()


async def _over_grpc(target: str) -> tuple[float, rollout_pb2.ComparisonSummary]:
    token = mint(SECRET, uuid.uuid4(), role=Role.SERVICE_ROLE, ttl_s=3600)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = rollout_pb2_grpc.RolloutServiceStub(channel)
        started = time.perf_counter()
        summary = None
        async for r in stub.CompareReadModels(
            rollout_pb2.CompareReadModelsRequest(event_id=str(EVENT)),
            metadata=[("authorization", f"Bearer {token}")],
        ):
            if r.HasField("summary"):
                summary = r.summary
        assert summary is not None
        return time.perf_counter() - started, summary


async def run(
    dsn: str | None, *, guests: int = 2000, messages: int = 2000, runs: int = 3
) -> CompareResult:
    """Generates the event on a scratch database and times the comparison."""
    if dsn is None:
        with embedded_server() as server:
            return await _run_on(server, guests, messages, runs)
    return await _run_on(dsn, guests, messages, runs)


async def _run_on(server_dsn: str, guests: int, messages: int, runs: int) -> CompareResult:
    async with scratch_database(server_dsn, "guestfeed_bench_compare") as (_, dsn):
        print(f"generating {guests:,} guests and {messages:,} messages", flush=True)
        generation_s, deliveries = await _generate(dsn, guests, messages)
        db = await single_connection(dsn)
        use_case: list[float] = []
        try:
            comparison = ReadModelComparison(db)
            who = Principal(uuid.uuid4(), Role.SERVICE_ROLE)
            for _ in range(runs):
                started = time.perf_counter()
                async for _item in comparison.compare(who, EVENT, None, Budget(600)):
                    pass
                use_case.append(time.perf_counter() - started)
        finally:
            await db.close()
        server = await spawn_server(
            {
                "GUESTFEED_DATABASE_URL": dsn,
                "GUESTFEED_JWT_SECRET": SECRET,
                "GUESTFEED_LISTEN": "127.0.0.1:0",
            },
            log_file=Path(tempfile.gettempdir()) / f"guestfeed-bench-compare-{os.getpid()}.log",
        )
        grpc_s: list[float] = []
        try:
            for _ in range(runs):
                elapsed, summary = await _over_grpc(server.target)
                grpc_s.append(elapsed)
                print(f"  CompareReadModels: {elapsed:.2f}s", flush=True)
        finally:
            await server.stop()
        return CompareResult(
            guests=guests,
            messages=messages,
            deliveries=deliveries,
            generation_s=generation_s,
            grpc_s=grpc_s,
            use_case_s=use_case,
            guests_with_v1_only=summary.guests_with_v1_only,
            v1_only_total=summary.v1_only_total,
        )


def main_sync(dsn: str | None, guests: int, messages: int, runs: int) -> str:
    """Runs the benchmark and returns its printed report."""
    return asyncio.run(run(dsn, guests=guests, messages=messages, runs=runs)).table()
