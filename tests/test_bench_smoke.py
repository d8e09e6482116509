"""`guestfeed bench feed` runs end to end at the small scale (figures exist; no timing asserted)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from bench import dataset, feed, peer, soak, soak_kinds, soak_report
from bench.__main__ import main as bench_main

from .conftest import scratch_database

# A few samples of everything: this checks that the benchmark works, not how fast.
TINY = feed.FeedOptions(
    scale="small",
    iterations=3,
    peer_iterations=2,
    warmup=1,
    concurrency_s=0.3,
    clients=4,
    channels=2,
    stream_runs=1,
    log=False,
)


def test_peer_function_is_the_plans() -> None:
    """peer.sql carries the plan's function byte for byte (only its schema differs)."""
    matches = peer.plan_function_matches()
    if matches is None:
        pytest.skip("the plan (../shared/seed/) is not beside this checkout")
    assert matches


def test_scales_name_their_events() -> None:
    """Every scale names its events; `all` holds the others and the 1M stream event."""
    keys = {s: {e.key for e in dataset.specs_for(s)} for s in dataset.SCALES}
    assert keys["small"] == {"small"}
    assert {"shape", "filler"} <= keys["shape"]
    assert keys["growth"] == {"growth_1k", "growth_10k", "growth_100k"}
    assert keys["all"] == keys["shape"] | keys["growth"] | {"stream_1m"}
    assert dataset.bench_uuid("event", 1, 0) == dataset.specs_for("small")[0].event_id


@pytest.mark.timeout(60)
async def test_small_scale_end_to_end(server_dsn: str) -> None:
    """Dataset, peer, adapters, gRPC, stream and concurrency all produce figures,
    and the first page of the peer and of ours (directly and over gRPC) holds 50 rows."""
    async with scratch_database(server_dsn, "guestfeed_bench_smoke") as (_, dsn):
        report = await feed.run_in(TINY, dsn)

        conn = await asyncpg.connect(dsn)
        try:
            event = dataset.specs_for("small")[0]
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM public.messages WHERE event_id = $1", event.event_id
                )
                == event.messages
            )
            # Production indexes of the contract, rebuilt after the load, and
            # ours; the plan's were dropped once the peer had been measured.
            indexes = {
                r["indexname"]
                for r in await conn.fetch(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
                )
            }
            assert {"idx_deliveries_user", "message_deliveries_pkey"} <= indexes
            assert "gf_messages_event_type_created_id" in indexes
            assert not set(peer.PLAN_INDEXES) & indexes
            assert await conn.fetchval(
                "SELECT to_regprocedure($1) IS NOT NULL",
                "bench_peer.get_guest_event_messages_v2(uuid, int, timestamptz)",
            )
        finally:
            await conn.close()

    assert report.dataset["counts"]["message_deliveries"] > 0
    for what in feed.WHATS:
        first = report.find(what, "small", 1)
        assert first is not None, what
        assert first.rows == feed.PAGE_SIZE, what
        assert first.samples_ms and first.median_ms > 0 and first.p99_ms >= first.median_ms
        if what != feed.PEER_GENERIC:
            assert report.find(what, "small", feed.DEEP_PAGE) is not None, what
    assert report.stream["throughput"]["feed_messages_streamed"] > feed.PAGE_SIZE
    for key in ("alone", "with_stream"):
        assert report.concurrency[key]["requests"] > 0
    assert any("v2 page 1" in k for k in report.explain)

    text = feed.table(report)
    assert "peer (plan v2 SQL)" in text and "grpc v2" in text
    data = feed.to_json(report)
    assert {r["what"] for r in data["rows"]} == set(feed.WHATS)


@pytest.mark.timeout(90)
async def test_short_soak_reports_every_kind(server_dsn: str) -> None:
    """A 5-second soak of 4 clients calls every kind, sees no unexpected status, and
    reports the server's resources at the start, under load and at the end."""
    options = soak.SoakOptions(
        clients=4,
        seconds=5,
        channels=1,
        seed=7,
        flip_every_s=0.5,
        hold_s=(0.2, 1.0),
        sample_every_s=1.0,
        settle_s=0.5,
        events=soak.TINY_EVENTS,
        log=False,
    )
    async with scratch_database(server_dsn, "guestfeed_bench_soak_smoke") as (name, dsn):
        report = await soak.run_in(options, name, dsn)

    assert [k.kind for k in report.kinds] == list(soak_kinds.KINDS)
    for k in report.kinds:
        assert k.calls > 0 and k.p50_ms is not None, k
        assert not k.unexpected, (k.kind, k.statuses)
    assert report.unexpected == 0, report.server_statuses
    assert report.server_statuses["ListMessages"]["OK"] > 0
    assert report.start.rss_mb > 0 and report.end.rss_mb > 0
    assert report.end.pool_connections >= 1 and report.end.xacts > report.start.xacts
    assert len(report.samples) >= 3
    assert {c.what for c in report.verdict} >= {"unexpected statuses", "RSS", "open fds"}

    text = soak_report.markdown(report)
    assert "| stream_abandoned |" in text and "Verdict:" in text
    data = soak_report.to_json(report)
    assert data["unexpected"] == 0 and len(data["kinds"]) == len(soak_kinds.KINDS)


@pytest.mark.timeout(180)
def test_streams_command_prints_every_row(
    server_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m bench streams` with a 1-second window and 2 streams prints the idle
    rows (after, before, before / after, for both client windows) and the unary rows (no
    streams, default share, no share, before the fix), with no failed call. This tree
    stands in for --before-src: the point is that a server runs from the given tree."""
    root = Path(__file__).resolve().parent.parent
    argv = [
        "streams",
        "--dsn",
        server_dsn,
        "--seconds",
        "1",
        "--idle-streams",
        "2",
        "--active-streams",
        "2",
        "--repeats",
        "1",
        "--messages",
        "300",
        "--before-src",
        str(root),
    ]
    assert bench_main(argv) == 0
    out = capsys.readouterr().out
    for row in (
        "| 0 |  | after |",
        "| 0 |  | before |",
        "| 2 | grpcio default (BDP) | after |",
        "| 2 | grpcio default (BDP) | before |",
        "| 2 | grpcio default (BDP) | **before / after** |",
        "| 2 | 64 KB (no BDP) | after |",
        "| 2 | 64 KB (no BDP) | **before / after** |",
        "| 0 | 3 of 10 (default) | after |",
        "| 2 | 3 of 10 (default) | after |",
        "| 2 | 10 of 10 (no share) | after |",
        "| 2 | none (before the fix) | before |",
    ):
        assert row in out, (row, out)
    assert "Notes:" not in out, out


@pytest.mark.timeout(180)
async def test_watch_bench_measures_every_scenario(server_dsn: str) -> None:
    """`python -m bench watch` with tiny settings: every scenario's watchers go live, get
    every announcement (no receipt missing, no error), and the table has their rows
    with the hub's queries split by kind."""
    from bench import watch, watch_report

    options = watch.WatchOptions(
        scenarios=(watch_report.Scenario(1, 1), watch_report.Scenario(20, 10)),
        seconds=2.0,
        rate=3.0,
        channels=4,
        settle_s=2.0,
        log=False,
    )
    async with scratch_database(server_dsn, "guestfeed_bench_watch_smoke") as (name, dsn):
        report = await watch.run_in(options, name, dsn)
    assert [r.scenario for r in report.runs] == list(options.scenarios)
    for r in report.runs:
        assert r.errors == {} and r.server_exit == 0, r
        assert r.messages == 6 and r.missing == 0 and r.expected_receipts > 0, r
        assert r.hub_queries.get("horizon", 0) > 0 and r.pct(50) is not None
    text = watch_report.markdown(report)
    assert "| 1 watcher on one event |" in text and "| 20 watchers on 10 events |" in text
    data = watch_report.to_json(report)
    assert data["runs"][1]["receipts"] == data["runs"][1]["expected_receipts"]


@pytest.mark.timeout(120)
async def test_workers_bench_measures_one_and_two_workers(server_dsn: str) -> None:
    """`python -m bench workers` with tiny rounds: 1 and 2 workers both serve V2 pages
    without an error and exit 0, calls reach both workers, and the table compares them."""
    from bench import workers

    # 12 clients, 12 connections: the kernel puts them all on one worker 1 time in 2,048.
    options = workers.WorkersOptions(
        rounds=1, seconds=0.5, warmup_s=0.2, clients=12, scale="small", log=False
    )
    async with scratch_database(server_dsn, "guestfeed_bench_workers_smoke") as (name, dsn):
        report = await workers.run_in(options, name, dsn)
    assert [r.workers for r in report.rounds] == [1, 2]
    for r in report.rounds:
        assert r.errors == {} and r.requests > 0 and r.p99_ms >= r.p50_ms > 0, r
        assert len(r.calls_per_worker) == r.workers, r
    text = workers.markdown(report)
    assert "| 1 x 10 | 1 |" in text and "| 2 x 10 | 1 |" in text
