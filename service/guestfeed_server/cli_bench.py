"""`guestfeed bench ...`: benchmarks that print their figures.

Speed goals are met here, never asserted in tests. Every benchmark works on a
scratch database (on `--dsn`'s server, or a temporary embedded one), never on
the configured GUESTFEED_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from .config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds the `bench` subcommand tree."""
    bench = sub.add_parser("bench", help="run a benchmark and print its figures")
    kinds = bench.add_subparsers(dest="bench", required=True)
    prop = kinds.add_parser(
        "propagation", help="time for a rollout change to reach another replica"
    )
    prop.add_argument("--flips", type=int, default=50, help="changes to time (default 50)")
    prop.add_argument(
        "--dsn",
        help="superuser DSN of a PostgreSQL server to make a scratch database on "
        "(default: a temporary embedded server)",
    )
    prop.add_argument("--json", type=Path, help="also write the figures here")
    prop.set_defaults(func=_propagation)


def _propagation(settings: Settings, ns: argparse.Namespace) -> int:
    from .bench import propagation

    if ns.flips < 1:
        raise SystemExit("guestfeed bench propagation: --flips must be >= 1")
    result = asyncio.run(propagation.run(ns.flips, ns.dsn))
    print(propagation.report(result, ns.json))
    return 0
