"""The soak's figures: per-kind summaries, the growth verdict, markdown and JSON.

The verdict compares the last third of the samples taken under load with the
first third: RSS may not grow more than `RSS_GROWTH`, open fds and threads
no more than a few (`FDS_SLACK`, `THREADS_SLACK`: a lazily started thread
pool or one more pooled socket is not a leak), the request pool never holds
more connections than its maximum and the database's other connections do
not grow at all. Fewer than `MIN_SAMPLES` samples under load is too short to
judge growth; the statuses are judged whatever the length.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from .report import percentile
from .soak_kinds import KINDS, REFUSED, STREAM_KINDS, KindStats, is_expected
from .soak_watch import POOL_APP, Sample

RSS_GROWTH = 0.20
FDS_SLACK = 4
THREADS_SLACK = 4
MIN_SAMPLES = 6
# Server-side endings that are bugs whichever client kind caused them.
SERVER_UNEXPECTED = frozenset({"UNKNOWN", "INTERNAL", "UNIMPLEMENTED", "DATA_LOSS"})
_CODE_NAMES = {sc.value[0]: sc.name for sc in grpc.StatusCode}


@dataclass
class KindSummary:
    """One kind of call over the run."""

    kind: str
    calls: int
    per_s: float
    p50_ms: float | None
    p99_ms: float | None
    first_p50_ms: float | None
    first_p99_ms: float | None
    statuses: dict[str, int]
    refused: int
    unexpected: dict[str, int]
    messages: int


@dataclass
class Check:
    """One line of the verdict; `ok` None when the run was too short to judge it."""

    what: str
    ok: bool | None
    detail: str


@dataclass
class SoakReport:
    """Everything one soak run measured."""

    options: dict[str, Any]
    machine: dict[str, Any]
    dataset: dict[str, Any]
    load_s: float
    kinds: list[KindSummary]
    start: Sample
    end: Sample
    samples: list[Sample]
    server_statuses: dict[str, dict[str, int]]
    # Client-side figures: abandoned streams held open at once (peak, cap).
    client: dict[str, Any] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verdict: list[Check] = field(default_factory=list)

    @property
    def unexpected(self) -> int:
        """Unexpected endings: seen by the clients, or by the server (its own metrics)."""
        client = sum(sum(k.unexpected.values()) for k in self.kinds)
        server = sum(
            n for codes in self.server_statuses.values() for c, n in codes.items()
            if c in SERVER_UNEXPECTED
        )  # fmt: skip
        return client + server

    @property
    def passed(self) -> bool:
        """No unexpected status and nothing judged to grow."""
        return self.unexpected == 0 and all(c.ok is not False for c in self.verdict)


def summarize(stats: dict[str, KindStats], load_s: float) -> list[KindSummary]:
    """Per-kind counts, rates and latency percentiles."""
    out = []
    for kind in KINDS:
        s = stats[kind]
        total, first = list(s.total_ms), list(s.first_ms)
        statuses = dict(s.statuses.most_common())
        out.append(
            KindSummary(
                kind=kind,
                calls=s.calls,
                per_s=round(s.calls / load_s, 1) if load_s > 0 else 0.0,
                p50_ms=_round(statistics.median(total)) if total else None,
                p99_ms=_round(percentile(total, 99)) if total else None,
                first_p50_ms=_round(statistics.median(first)) if first else None,
                first_p99_ms=_round(percentile(first, 99)) if first else None,
                statuses=statuses,
                refused=statuses.get(REFUSED, 0),
                unexpected={c: n for c, n in statuses.items() if not is_expected(kind, c)},
                messages=s.messages,
            )
        )
    return out


def server_statuses(
    before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]
) -> dict[str, dict[str, int]]:
    """RPCs the server finished during the run, by method and status name."""
    out: dict[str, dict[str, int]] = {}
    for (method, code), n in sorted(after.items()):
        delta = n - before.get((method, code), 0)
        if delta > 0:
            name = _CODE_NAMES.get(int(code), code) if code.isdigit() else code
            out.setdefault(method, {})[name] = delta
    return out


def judge(report: SoakReport, pool_max: int) -> list[Check]:
    """The verdict: statuses, then whether anything grew (see the module docstring)."""
    checks = [
        Check(
            "unexpected statuses",
            report.unexpected == 0,
            f"{report.unexpected} (clients and server's own counts)",
        )
    ]
    under = report.samples
    peak_pool = max([s.pool_connections for s in under] + [report.end.pool_connections])
    checks.append(
        Check(
            "request pool connections",
            peak_pool <= pool_max,
            f"peak {peak_pool}, pool max {pool_max}",
        )
    )
    if len(under) < MIN_SAMPLES:
        reason = f"not judged: {len(under)} samples under load, {MIN_SAMPLES} needed"
        for what in ("RSS", "open fds", "threads", "other database connections"):
            checks.append(Check(what, None, reason))
        return checks
    third = len(under) // 3
    first, last = under[:third], under[-third:]

    def grew(what: str, get: Callable[[Sample], float], slack: float, unit: str) -> Check:
        a, b = max(get(s) for s in first), max(get(s) for s in last)
        return Check(
            what, b <= a + slack, f"first third max {a:g}{unit}, last third max {b:g}{unit}"
        )

    rss_a = statistics.mean(s.rss_mb for s in first)
    rss_b = statistics.mean(s.rss_mb for s in last)
    change = (rss_b - rss_a) / rss_a if rss_a else 0.0
    checks.append(
        Check(
            "RSS",
            change <= RSS_GROWTH,
            f"first third mean {rss_a:.1f} MB, last third mean {rss_b:.1f} MB "
            f"({change:+.1%}; limit {RSS_GROWTH:+.0%})",
        )
    )
    checks.append(grew("open fds", lambda s: s.fds, FDS_SLACK, ""))
    checks.append(grew("threads", lambda s: s.threads, THREADS_SLACK, ""))
    checks.append(grew("other database connections", lambda s: s.other_connections, 0, ""))
    return checks


def markdown(r: SoakReport) -> str:
    """The tables to paste into a note."""
    o, d = r.options, r.dataset
    lines = [
        f"## Soak: {o['clients']} clients, {r.load_s:.0f} s, loopback, "
        f"{r.machine.get('cpus', '?')} CPUs (client, server and PostgreSQL share them)",
        "",
        f"Dataset: {d.get('events', '?')} events, {d.get('callers', '?')} guests with an "
        f"account (callers), {d.get('messages', '?'):,} messages, "
        f"{d.get('deliveries', '?'):,} deliveries. Request pool max {o['pool_max']}, "
        f"{o['channels']} client channels, a rollout flip every {o['flip_every_s']:g} s, "
        f"seed {o['seed']}. Abandoned streams held open at once: peak "
        f"{r.client.get('peak_held_streams', '?')} (cap {r.client.get('max_held', '?')}; "
        f"{r.client.get('cancelled_at_once_at_cap', 0):,} cancelled unheld at the cap).",
        "",
        "| kind | calls | req/s | p50 ms | p99 ms | first p50 ms | first p99 ms "
        "| statuses | refused | unexpected |",
        "|---|--:|--:|--:|--:|--:|--:|---|--:|--:|",
    ]
    for k in r.kinds:
        streams = k.kind in STREAM_KINDS
        lines.append(
            f"| {k.kind} | {k.calls:,} | {k.per_s:,.1f} | {_ms(k.p50_ms)} | {_ms(k.p99_ms)} "
            f"| {_ms(k.first_p50_ms) if streams else '-'} "
            f"| {_ms(k.first_p99_ms) if streams else '-'} "
            f"| {_statuses(k.statuses)} | {k.refused:,} | {sum(k.unexpected.values()):,} |"
        )
    calls = sum(k.calls for k in r.kinds)
    lines.append(
        f"| **all** | {calls:,} | {calls / r.load_s if r.load_s else 0:,.1f} | | | | "
        f"| | {sum(k.refused for k in r.kinds):,} "
        f"| {sum(sum(k.unexpected.values()) for k in r.kinds):,} |"
    )
    lines += [
        "",
        "p50/p99: the whole call (for stream_abandoned that includes the hold); "
        "first: until the stream's first response. refused: RESOURCE_EXHAUSTED (the "
        "per-caller stream limit).",
        "",
        "Server's own count of finished RPCs (Prometheus `rpc.server.duration`):",
        "",
        "| method | statuses |",
        "|---|---|",
    ]
    if not r.server_statuses:
        lines.append("| (no metrics scraped) | |")
    for method, codes in r.server_statuses.items():
        lines.append(f"| {method} | {_statuses(codes)} |")
    lines += ["", *_resources(r), "", *_series(r.samples), "", "Verdict:", ""]
    for c in r.verdict:
        mark = "ok" if c.ok else ("n/a" if c.ok is None else "**FAIL**")
        lines.append(f"- {c.what}: {mark} — {c.detail}")
    for note in r.notes:
        lines.append(f"- note: {note}")
    return "\n".join(lines)


def _resources(r: SoakReport) -> list[str]:
    s, e = r.start, r.end
    # Over the load: from the start to the last sample under load.
    last = r.samples[-1] if r.samples else e
    xact_avg = (last.xacts - s.xacts) / (last.t_s - s.t_s) if last.t_s > s.t_s else 0.0
    rows = [
        ("RSS (MB)", f"{s.rss_mb:.1f}", f"{e.rss_mb:.1f}"),
        ("threads", str(s.threads), str(e.threads)),
        ("open fds", str(s.fds), str(e.fds)),
        ("asyncio tasks", _opt(s.tasks), _opt(e.tasks)),
        ("DB connections: request pool", str(s.pool_connections), str(e.pool_connections)),
        ("DB connections: others", _apps(s), _apps(e)),
        ("pool in use / idle / waiting", _pool(s), _pool(e)),
        ("PostgreSQL transactions", f"{s.xacts:,}", f"{e.xacts:,}"),
    ]
    out = [
        f"Server resources (end: {r.options['settle_s']:g} s after the load stopped). "
        f"PostgreSQL: {xact_avg:,.0f} transactions/s on average under load.",
        "",
        "| | start | end |",
        "|---|--:|--:|",
    ]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return out


def _series(samples: Sequence[Sample]) -> list[str]:
    out = [
        "Under load:",
        "",
        "| t (s) | RSS MB | threads | fds | tasks | pool conns | other conns | pool in use "
        "| waiting | xact/s | server CPU % | client CPU % | held streams |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in samples:
        out.append(
            f"| {s.t_s:g} | {s.rss_mb:.1f} | {s.threads} | {s.fds} | {_opt(s.tasks)} "
            f"| {s.pool_connections} | {s.other_connections} | {_opt(s.pool_in_use)} "
            f"| {_opt(s.pool_waiting)} | {_opt(s.xact_per_s)} | {_opt(s.server_cpu_pct)} "
            f"| {_opt(s.client_cpu_pct)} | {s.held_streams} |"
        )
    return out


def to_json(r: SoakReport) -> dict[str, Any]:
    """The raw figures, JSON-ready."""
    data = asdict(r)
    data["unexpected"] = r.unexpected
    data["passed"] = r.passed
    return data


def write_json(r: SoakReport, path: Path) -> None:
    """Writes `to_json(r)` to `path` (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(r), indent=2) + "\n")


def _round(x: float) -> float:
    return round(x, 3)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.2f}"


def _opt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:g}"


def _statuses(codes: dict[str, int]) -> str:
    return ", ".join(f"{c} {n:,}" for c, n in codes.items()) or "-"


def _apps(s: Sample) -> str:
    others = {a: n for a, n in s.connections.items() if a != POOL_APP}
    return ", ".join(f"{a} {n}" for a, n in sorted(others.items())) or "0"


def _pool(s: Sample) -> str:
    return f"{_opt(s.pool_in_use)} / {_opt(s.pool_idle)} / {_opt(s.pool_waiting)}"
