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
    ns = parser.parse_args(argv)
    result: int = ns.func(ns)
    return result


def _dsn(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dsn",
        help="superuser DSN of a PostgreSQL server to make a scratch database on "
        "(default: a temporary embedded server)",
    )


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
