"""`python -m bench ...`: benchmarks that print their figures (run by `make bench`).

Speed goals are met here, never asserted in tests. Every benchmark works on a
scratch database (on `--dsn`'s server, or a temporary embedded one), never on
a configured GUESTFEED_DATABASE_URL. Not part of the installed service.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the command line and runs one benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    kinds = parser.add_subparsers(dest="bench", required=True)
    prop = kinds.add_parser(
        "propagation", help="time for a rollout change to reach another replica"
    )
    prop.add_argument("--flips", type=int, default=50, help="changes to time (default 50)")
    _dsn(prop)
    prop.add_argument("--json", type=Path, help="also write the figures here")
    prop.set_defaults(func=_propagation)
    feed = kinds.add_parser(
        "feed",
        help="our v1/v2 read paths (adapters and gRPC) against the plan's SQL, one database",
    )
    feed.add_argument(
        "--scale",
        choices=("small", "shape", "growth", "all"),
        default="small",
        help="small: a quick check; shape: the issue's 300 guests / 30,000 messages event in "
        "a ~5M-delivery database; growth: 1k/10k/100k-message events; all: every one of "
        "them plus the 1M-message stream (default small)",
    )
    _dsn(feed)
    feed.add_argument("--json", type=Path, help="also write the figures here")
    feed.add_argument(
        "--iterations", type=int, default=200, help="samples per figure (default 200)"
    )
    feed.add_argument(
        "--peer-iterations",
        type=int,
        help="samples per figure of the plan's function (default iterations/20, at least 5)",
    )
    feed.add_argument(
        "--stream-1m",
        action="store_true",
        help="also generate a 1M-message event and report the server's peak RSS streaming it "
        "(always on with --scale all)",
    )
    feed.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of each concurrency measurement (default 10)",
    )
    feed.add_argument(
        "--explain", action="store_true", help="also print EXPLAIN ANALYZE of our page queries"
    )
    feed.set_defaults(func=_feed)
    compare = kinds.add_parser(
        "compare", help="CompareReadModels on a 2,000-guest, 2,000-message event, timed"
    )
    _dsn(compare)
    compare.add_argument("--guests", type=int, default=2000, help="default 2000")
    compare.add_argument("--messages", type=int, default=2000, help="default 2000")
    compare.add_argument("--runs", type=int, default=3, help="default 3")
    compare.set_defaults(func=_compare)
    soak = kinds.add_parser(
        "soak",
        help="N mixed clients for T seconds against one server: statuses, latency, whether "
        "anything grows (exits 1 when the verdict fails; docs/soak.md)",
    )
    soak.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    soak.add_argument(
        "--seconds", type=float, default=300.0, help="length of the load (default 300)"
    )
    soak.add_argument(
        "--channels", type=int, default=4, help="gRPC channels the clients share (default 4)"
    )
    soak.add_argument("--seed", type=int, help="the clients' random seed (default: random)")
    _dsn(soak)
    soak.add_argument("--json", type=Path, help="also write the raw figures here")
    soak.set_defaults(func=_soak)
    _streams_parser(kinds)
    _watch_parser(kinds)
    _workers_parser(kinds)
    ns = parser.parse_args(argv)
    result: int = ns.func(ns)
    return result


def _dsn(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dsn",
        help="superuser DSN of a PostgreSQL server to make a scratch database on "
        "(default: a temporary embedded server)",
    )


def _streams_parser(kinds: Any) -> None:
    streams = kinds.add_parser(
        "streams",
        help="what idle and actively read streams make the database do, and unary p50/p99 "
        "beside them (docs/performance.md, Streams: bounded database work)",
    )
    streams.add_argument(
        "--seconds", type=float, default=20.0, help="length of each window (default 20)"
    )
    streams.add_argument(
        "--idle-streams",
        default="10,100",
        help="idle stream counts, comma separated (default 10,100; 0 always runs too)",
    )
    streams.add_argument(
        "--idle-windows",
        default="bdp,fixed",
        help="idle clients' flow-control windows: bdp (grpcio's default, grows) and/or "
        "fixed (64 KB, BDP probing off) (default bdp,fixed)",
    )
    streams.add_argument(
        "--active-streams", type=int, default=100, help="actively read streams (default 100)"
    )
    streams.add_argument(
        "--repeats", type=int, default=3, help="runs of every scenario (default 3)"
    )
    streams.add_argument(
        "--before-src",
        type=Path,
        help="also run a server from this tree (`git archive 061d408 | tar -x -C DIR`: "
        "the code before the fix) on this Python and its packages",
    )
    streams.add_argument(
        "--part", choices=("idle", "active", "all"), default="all", help="default all"
    )
    streams.add_argument(
        "--messages", type=int, default=8000, help="messages in the event (default 8000)"
    )
    streams.add_argument(
        "--pool-max", type=int, default=10, help="the server's GUESTFEED_DB_POOL_MAX (default 10)"
    )
    _dsn(streams)
    streams.add_argument("--json", type=Path, help="also write every run's figures here")
    streams.set_defaults(func=_streams)


def _streams(ns: argparse.Namespace) -> int:
    from . import streams, streams_report

    try:
        idle = tuple(sorted({int(n) for n in ns.idle_streams.split(",") if n.strip()} - {0}))
    except ValueError:
        raise SystemExit(
            "python -m bench streams: --idle-streams is numbers, e.g. 10,100"
        ) from None
    if ns.seconds <= 0 or ns.repeats < 1 or ns.active_streams < 1 or ns.messages < 1:
        raise SystemExit(
            "python -m bench streams: --seconds > 0; --repeats, --active-streams, --messages >= 1"
        )
    windows = tuple(w.strip() for w in ns.idle_windows.split(",") if w.strip())
    if not windows or set(windows) - {"bdp", "fixed"}:
        raise SystemExit("python -m bench streams: --idle-windows is bdp, fixed or bdp,fixed")
    if any(n < 0 for n in idle) or ns.pool_max < 1:
        raise SystemExit("python -m bench streams: stream counts >= 0, --pool-max >= 1")
    options = streams.StreamsOptions(
        seconds=ns.seconds,
        idle_streams=idle,
        idle_windows=windows,
        active_streams=ns.active_streams,
        repeats=ns.repeats,
        before_src=ns.before_src,
        parts=("idle", "active") if ns.part == "all" else (ns.part,),
        messages=ns.messages,
        pool_max=ns.pool_max,
    )
    report = asyncio.run(streams.run(options, ns.dsn))
    if ns.json is not None:
        streams_report.write_json(report, ns.json)
    print(streams_report.markdown(report))
    return 0


def _watch_parser(kinds: Any) -> None:
    watch = kinds.add_parser(
        "watch",
        help="WatchMessages at 1, 100 and 1,000 watchers on one event, and 1,000 over 100 "
        "events: commit-to-receipt latency, database queries/s, RSS per watcher, CPU "
        "(docs/watch.md)",
    )
    watch.add_argument(
        "--scenarios",
        default="1x1,100x1,1000x1,1000x100",
        help="WATCHERSxEVENTS, comma separated (default 1x1,100x1,1000x1,1000x100)",
    )
    watch.add_argument(
        "--seconds", type=float, default=15.0, help="length of each window (default 15)"
    )
    watch.add_argument(
        "--rate", type=float, default=2.0, help="announcements committed per second (default 2)"
    )
    watch.add_argument(
        "--channels", type=int, default=50, help="connections the readers share (default 50)"
    )
    _dsn(watch)
    watch.add_argument("--json", type=Path, help="also write the figures here")
    watch.set_defaults(func=_watch)


def _watch(ns: argparse.Namespace) -> int:
    from . import watch, watch_report

    try:
        pairs = [tuple(int(x) for x in s.split("x")) for s in ns.scenarios.split(",") if s]
        scenarios = tuple(watch_report.Scenario(w, e) for w, e in pairs)
    except ValueError:
        raise SystemExit("python -m bench watch: --scenarios is e.g. 1x1,1000x100") from None
    bad = [s for s in scenarios if s.watchers < s.events or s.watchers % s.events]
    if bad or any(s.events > watch.EVENTS or s.events < 1 for s in scenarios):
        raise SystemExit(
            f"python -m bench watch: watchers must be a multiple of events (1-{watch.EVENTS})"
        )
    if ns.seconds <= 0 or ns.rate <= 0 or ns.channels < 1:
        raise SystemExit("python -m bench watch: --seconds and --rate > 0, --channels >= 1")
    options = watch.WatchOptions(
        scenarios=scenarios, seconds=ns.seconds, rate=ns.rate, channels=ns.channels
    )
    report = asyncio.run(watch.run(options, ns.dsn))
    if ns.json is not None:
        watch_report.write_json(report, ns.json)
    print(watch_report.markdown(report))
    return 0


def _workers_parser(kinds: Any) -> None:
    workers = kinds.add_parser(
        "workers",
        help="32 concurrent clients doing ListMessages against 1 and 2 worker processes "
        "(GUESTFEED_WORKERS): requests/s, p50, p99 (docs/performance.md, Workers)",
    )
    workers.add_argument(
        "--workers",
        default="1,2",
        help="worker counts, comma separated, each N or NxPOOL (GUESTFEED_DB_POOL_MAX of each "
        "worker; default --pool-max), e.g. 1,2,2x5 (default 1,2)",
    )
    workers.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3)")
    workers.add_argument(
        "--seconds", type=float, default=15.0, help="length of each round (default 15)"
    )
    workers.add_argument("--clients", type=int, default=32, help="default 32")
    workers.add_argument(
        "--pool-max", type=int, default=10, help="GUESTFEED_DB_POOL_MAX per worker (default 10)"
    )
    workers.add_argument(
        "--scale",
        choices=("small", "shape"),
        default="shape",
        help="shape: the issue's event in a ~5M-delivery database; small: a quick check",
    )
    _dsn(workers)
    workers.add_argument("--json", type=Path, help="also write every round's figures here")
    workers.set_defaults(func=_workers)


def _workers(ns: argparse.Namespace) -> int:
    from . import workers

    try:
        setups = tuple(
            (int(n), int(pool or ns.pool_max))
            for n, _, pool in (s.strip().partition("x") for s in ns.workers.split(","))
            if n
        )
    except ValueError:
        raise SystemExit("python -m bench workers: --workers is e.g. 1,2 or 1,2,2x5") from None
    numbers = [x for setup in setups for x in setup]
    if not setups or min(numbers) < 1 or ns.rounds < 1 or ns.clients < 1:
        raise SystemExit("python -m bench workers: counts, pools, --rounds, --clients >= 1")
    if ns.seconds <= 0:
        raise SystemExit("python -m bench workers: --seconds > 0")
    options = workers.WorkersOptions(
        setups=setups,
        rounds=ns.rounds,
        seconds=ns.seconds,
        clients=ns.clients,
        scale=ns.scale,
    )
    report = asyncio.run(workers.run(options, ns.dsn))
    if ns.json is not None:
        workers.write_json(report, ns.json)
    print(workers.markdown(report))
    return 0


def _propagation(ns: argparse.Namespace) -> int:
    from . import propagation

    if ns.flips < 1:
        raise SystemExit("python -m bench propagation: --flips must be >= 1")
    result = asyncio.run(propagation.run(ns.flips, ns.dsn))
    print(propagation.report(result, ns.json))
    return 0


def _compare(ns: argparse.Namespace) -> int:
    from . import compare

    if min(ns.guests, ns.messages, ns.runs) < 1:
        raise SystemExit("python -m bench compare: --guests, --messages and --runs must be >= 1")
    print(compare.main_sync(ns.dsn, ns.guests, ns.messages, ns.runs))
    return 0


def _soak(ns: argparse.Namespace) -> int:
    from . import soak, soak_report

    if ns.clients < 1 or ns.channels < 1 or ns.seconds <= 0:
        raise SystemExit("python -m bench soak: --clients and --channels >= 1, --seconds > 0")
    options = soak.SoakOptions(
        clients=ns.clients, seconds=ns.seconds, channels=ns.channels, seed=ns.seed
    )
    report = asyncio.run(soak.run(options, ns.dsn))
    if ns.json is not None:
        soak_report.write_json(report, ns.json)
    print(soak_report.markdown(report))
    return 0 if report.passed else 1


def _feed(ns: argparse.Namespace) -> int:
    from . import feed

    if ns.iterations < 1 or (ns.peer_iterations is not None and ns.peer_iterations < 1):
        raise SystemExit("python -m bench feed: iterations must be >= 1")
    if ns.duration <= 0:
        raise SystemExit("python -m bench feed: --duration must be > 0")
    options = feed.FeedOptions(
        scale=ns.scale,
        iterations=ns.iterations,
        peer_iterations=ns.peer_iterations,
        stream_1m=ns.stream_1m,
        concurrency_s=ns.duration,
    )
    report = asyncio.run(feed.run(options, ns.dsn))
    if ns.json is not None:
        feed.write_json(report, ns.json)
    print()
    print(feed.table(report))
    if ns.explain:
        print()
        print(feed.explain_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
