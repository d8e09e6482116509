"""How evenly the plan's `simpleHash(eventId + userId) % 100` spreads real uuids.

For several realistic shapes of (event_id, user_id) pairs, all random version-4
uuids drawn from a seeded `random.Random` (so runs are reproducible), it counts
pairs per bucket and reports:

- the chi-square statistic against a uniform spread over 100 buckets
  (99 degrees of freedom), its p-value, and the smallest and largest bucket;
- for rollout thresholds of 10, 25 and 50 %, the share of pairs below the
  threshold against the expected share, as a z-score and a 2-cell chi-square
  (1 degree of freedom) with its p-value;
- for shapes with many events, how much the per-event share below each
  threshold spreads, against the binomial spread independent pairs would give
  (an index-of-dispersion chi-square with one degree of freedom per event).

p-values are exact: the chi-square survival function is the regularized upper
incomplete gamma function Q(k/2, x/2), computed with its power series when
x < a + 1 and with a Lentz continued fraction otherwise (Numerical Recipes,
`gammq`). The Wilson-Hilferty normal approximation is reported alongside in
the JSON as a cross-check. Standard library only.

    python scripts/hash_quality.py [--pairs 100000] [--seed 20240501] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from guestfeed_server.bucketing import bucket
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))
    from guestfeed_server.bucketing import bucket

BUCKETS = 100
THRESHOLDS = (10, 25, 50)
DEFAULT_SEED = 20240501
DEFAULT_PAIRS = 100_000


# ---- chi-square survival function ----

_EPS = 1e-15
_TINY = 1e-300


def _log_gamma_prefactor(a: float, x: float) -> float:
    return -x + a * math.log(x) - math.lgamma(a)


def _lower_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its power series (x < a + 1)."""
    term = total = 1.0 / a
    ap = a
    for _ in range(10_000):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(_log_gamma_prefactor(a, x))


def _upper_continued_fraction(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by a Lentz continued fraction (x >= a + 1)."""
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + an / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h * math.exp(_log_gamma_prefactor(a, x))


def gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma function Q(a, x) = Gamma(a, x) / Gamma(a)."""
    if a <= 0 or x < 0:
        raise ValueError("gamma_q needs a > 0 and x >= 0")
    if x == 0:
        return 1.0
    if x < a + 1.0:
        return 1.0 - _lower_series(a, x)
    return _upper_continued_fraction(a, x)


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square(df), exactly via Q(df/2, x/2)."""
    return gamma_q(df / 2.0, x / 2.0)


def chi2_sf_wilson_hilferty(x: float, df: int) -> float:
    """P(X >= x) by the Wilson-Hilferty cube-root normal approximation."""
    if x <= 0:
        return 1.0
    k = float(df)
    z = ((x / k) ** (1.0 / 3.0) - (1.0 - 2.0 / (9.0 * k))) / math.sqrt(2.0 / (9.0 * k))
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _self_check() -> None:
    """Known quantiles: chi2(99) 95th percentile 123.2252, chi2(1) 95th 3.841459."""
    for x, df, p in ((123.2252, 99, 0.05), (3.841459, 1, 0.05), (77.04633, 99, 0.95)):
        got = chi2_sf(x, df)
        if abs(got - p) > 1e-5:
            raise AssertionError(f"chi2_sf({x}, {df}) = {got}, expected {p}")


# ---- shapes of (event_id, user_id) pairs ----


def uuid4_from(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(frozen=True)
class Shape:
    key: str
    title: str
    # Yields (group, event_id, user_id); group is the event index for
    # per-event figures, or None when every pair has its own event.
    pairs: Callable[[random.Random, int], Iterator[tuple[int | None, str, str]]]
    per_event: bool
    # The same users, in the same order, in every event.
    shared_users: bool = False


def _independent(rng: random.Random, n: int) -> Iterator[tuple[int | None, str, str]]:
    for _ in range(n):
        yield None, uuid4_from(rng), uuid4_from(rng)


def _one_event(rng: random.Random, n: int) -> Iterator[tuple[int | None, str, str]]:
    event = uuid4_from(rng)
    for _ in range(n):
        yield 0, event, uuid4_from(rng)


def _events_with_own_guests(rng: random.Random, n: int) -> Iterator[tuple[int | None, str, str]]:
    per_event = 100
    for e in range(n // per_event):
        event = uuid4_from(rng)
        for _ in range(per_event):
            yield e, event, uuid4_from(rng)


def _same_users_every_event(rng: random.Random, n: int) -> Iterator[tuple[int | None, str, str]]:
    users = [uuid4_from(rng) for _ in range(100)]
    for e in range(n // len(users)):
        event = uuid4_from(rng)
        for user in users:
            yield e, event, user


SHAPES = (
    Shape("independent", "independent pairs (fresh event and user)", _independent, False),
    Shape("one_event", "one event x all users", _one_event, False),
    Shape("events_x_100_users", "events x 100 own users each", _events_with_own_guests, True),
    Shape(
        "100_users_x_events",
        "same 100 users in every event",
        _same_users_every_event,
        True,
        shared_users=True,
    ),
)


# ---- measurement ----


def measure(shape: Shape, n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}:{shape.key}")
    counts = [0] * BUCKETS
    groups: dict[int, list[int]] = {}
    start = time.perf_counter()
    total = 0
    for group, event_id, user_id in shape.pairs(rng, n):
        b = bucket(event_id, user_id)
        counts[b] += 1
        total += 1
        if shape.per_event and group is not None:
            groups.setdefault(group, []).append(b)
    elapsed = time.perf_counter() - start

    expected = total / BUCKETS
    chi2 = sum((c - expected) ** 2 for c in counts) / expected
    df = BUCKETS - 1
    result: dict[str, Any] = {
        "key": shape.key,
        "title": shape.title,
        "pairs": total,
        "events": len(groups) if shape.per_event else (1 if shape.key == "one_event" else total),
        "expected_per_bucket": expected,
        "chi_square": chi2,
        "df": df,
        "p_value": chi2_sf(chi2, df),
        "p_value_wilson_hilferty": chi2_sf_wilson_hilferty(chi2, df),
        "min_bucket_count": min(counts),
        "max_bucket_count": max(counts),
        "min_bucket": counts.index(min(counts)),
        "max_bucket": counts.index(max(counts)),
        "seconds": elapsed,
        "thresholds": [],
        "counts": counts,
    }
    for pct in THRESHOLDS:
        p = pct / BUCKETS
        below = sum(counts[:pct])
        share = below / total
        z = (share - p) / math.sqrt(p * (1 - p) / total)
        chi2_1 = z * z  # the 2-cell (below / not below) chi-square equals z^2
        row: dict[str, Any] = {
            "percentage": pct,
            "below": below,
            "expected_below": p * total,
            "share": share,
            "expected_share": p,
            "z": z,
            "chi_square": chi2_1,
            "df": 1,
            "p_value": chi2_sf(chi2_1, 1),
        }
        if shape.per_event and groups:
            shares = []
            dispersion = 0.0
            for bs in groups.values():
                m = len(bs)
                k = sum(1 for b in bs if b < pct)
                shares.append(k / m)
                dispersion += (k - m * p) ** 2 / (m * p * (1 - p))
            sizes = {len(bs) for bs in groups.values()}
            m = min(sizes)
            mean = sum(shares) / len(shares)
            sd = math.sqrt(sum((s - mean) ** 2 for s in shares) / (len(shares) - 1))
            row["per_event"] = {
                "events": len(groups),
                "users_per_event": m if len(sizes) == 1 else sorted(sizes),
                "min_share": min(shares),
                "max_share": max(shares),
                "sd_share": sd,
                "binomial_sd_share": math.sqrt(p * (1 - p) / m),
                "dispersion_chi_square": dispersion,
                "df": len(groups),
                "p_value": chi2_sf(dispersion, len(groups)),
            }
        result["thresholds"].append(row)
    if shape.shared_users and groups:
        result["user_pairs"] = user_pair_figures(list(groups.values()))
    return result


def user_pair_figures(rows: list[list[int]]) -> dict[str, Any]:
    """How often two users land together, across events, against independence.

    `rows[e][i]` is user i's bucket in event e. For independent assignments a
    pair is below threshold N together in a share p^2 of events (p = N/100) and
    in the same bucket in 1 % of them, binomially spread.
    """
    events = len(rows)
    users = len(rows[0])
    pairs = users * (users - 1) // 2
    figures: dict[str, Any] = {"users": users, "events": events, "pairs": pairs}
    same = []
    for i in range(users):
        for j in range(i + 1, users):
            same.append(sum(1 for row in rows if row[i] == row[j]) / events)
    same.sort()
    figures["same_bucket"] = {
        "expected_share": 1 / BUCKETS,
        "median_share": same[pairs // 2],
        "max_share": same[-1],
        "pairs_never": sum(1 for x in same if x == 0) / pairs,
        "expected_pairs_never": (1 - 1 / BUCKETS) ** events,
    }
    figures["both_below"] = []
    for pct in THRESHOLDS:
        p = pct / BUCKETS
        masks = [0] * users
        for e, row in enumerate(rows):
            for i, b in enumerate(row):
                if b < pct:
                    masks[i] |= 1 << e
        shares = sorted(
            (masks[i] & masks[j]).bit_count() / events
            for i in range(users)
            for j in range(i + 1, users)
        )
        mean = sum(shares) / pairs
        sd = math.sqrt(sum((x - mean) ** 2 for x in shares) / (pairs - 1))
        figures["both_below"].append(
            {
                "percentage": pct,
                "expected_share": p * p,
                "mean_share": mean,
                "sd_share": sd,
                "binomial_sd_share": math.sqrt(p * p * (1 - p * p) / events),
                "min_share": shares[0],
                "max_share": shares[-1],
                "pairs_never": sum(1 for x in shares if x == 0) / pairs,
                "expected_pairs_never": (1 - p * p) ** events,
            }
        )
    return figures


# ---- output ----


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.2e}"


def print_report(results: list[dict[str, Any]], seed: int) -> None:
    print(f"simpleHash(eventId + userId) % 100 over random uuid4s (seed {seed})")
    print("p-values: exact chi-square survival, regularized upper incomplete gamma Q(k/2, x/2)")
    print()
    head = (
        f"{'shape':<40} {'pairs':>8} {'expect':>7} {'min':>6} {'max':>6}"
        f" {'chi2 (df 99)':>13} {'p':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r['title']:<40} {r['pairs']:>8,} {r['expected_per_bucket']:>7.0f}"
            f" {r['min_bucket_count']:>6} {r['max_bucket_count']:>6}"
            f" {r['chi_square']:>13.2f} {_p(r['p_value']):>8}"
        )
    print()
    print("share of pairs below the rollout threshold (bucket < N)")
    head = (
        f"{'shape':<40} {'N':>3} {'share':>8} {'expect':>7} {'z':>6} {'chi2 (df 1)':>12} {'p':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        for t in r["thresholds"]:
            print(
                f"{r['title']:<40} {t['percentage']:>3} {t['share']:>8.4%}"
                f" {t['expected_share']:>7.0%} {t['z']:>6.2f}"
                f" {t['chi_square']:>12.3f} {_p(t['p_value']):>8}"
            )
    print()
    print("per-event share below N, against the binomial spread of independent pairs")
    head = (
        f"{'shape':<40} {'N':>3} {'min':>6} {'max':>6} {'sd':>7} {'binom sd':>8}"
        f" {'dispersion chi2':>16} {'df':>5} {'p':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        for t in r["thresholds"]:
            e = t.get("per_event")
            if e is None:
                continue
            print(
                f"{r['title']:<40} {t['percentage']:>3} {e['min_share']:>6.0%}"
                f" {e['max_share']:>6.0%} {e['sd_share']:>7.4f} {e['binomial_sd_share']:>8.4f}"
                f" {e['dispersion_chi_square']:>16.1f} {e['df']:>5} {_p(e['p_value']):>8}"
            )
    for r in results:
        u = r.get("user_pairs")
        if u is None:
            continue
        print()
        print(
            f"user pairs across events ({r['title']}: {u['users']} users,"
            f" {u['pairs']:,} pairs, {u['events']:,} events)"
        )
        head = (
            f"{'both below N':<14} {'expect':>7} {'mean':>7} {'sd':>7} {'binom sd':>8}"
            f" {'max':>7} {'pairs never together':>21} {'expect':>9}"
        )
        print(head)
        print("-" * len(head))
        for t in u["both_below"]:
            print(
                f"{t['percentage']:<14} {t['expected_share']:>7.2%} {t['mean_share']:>7.2%}"
                f" {t['sd_share']:>7.4f} {t['binomial_sd_share']:>8.4f} {t['max_share']:>7.2%}"
                f" {t['pairs_never']:>21.2%} {t['expected_pairs_never']:>9.2e}"
            )
        sb = u["same_bucket"]
        print(
            f"{'same bucket':<14} {sb['expected_share']:>7.2%} {'':>7} {'':>7} {'':>8}"
            f" {sb['max_share']:>7.2%} {sb['pairs_never']:>21.2%}"
            f" {sb['expected_pairs_never']:>9.2e}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="pairs per shape")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.pairs < 200 or args.pairs % 100:
        parser.error("--pairs must be a multiple of 100, at least 200")

    _self_check()
    results = [measure(shape, args.pairs, args.seed) for shape in SHAPES]
    print_report(results, args.seed)

    if args.json:
        doc = {
            "hash": "js_simple_hash_v1: simpleHash(eventId + userId) % 100",
            "seed": args.seed,
            "pairs_per_shape": args.pairs,
            "uuid_source": "uuid.UUID(int=random.Random(f'{seed}:{shape}').getrandbits(128),"
            " version=4)",
            "p_value_method": (
                "exact: regularized upper incomplete gamma Q(df/2, x/2), power series for"
                " x < a + 1, Lentz continued fraction otherwise; p_value_wilson_hilferty is"
                " the Wilson-Hilferty approximation, for comparison"
            ),
            "shapes": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
