"""The feed benchmark's results (`Series`, `FeedReport`) and how they are judged and printed."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    ADAPTER_V1,
    ADAPTER_V2,
    DEEP_PAGE,
    GRPC_V1,
    GRPC_V2,
    PEER,
    PEER_GENERIC,
    WHATS,
    _Progress,
)


@dataclass
class Series:
    """The latencies of one (what, scale, page)."""

    what: str
    scale: str
    page: int
    samples_ms: list[float]
    rows: int
    # Which plans PostgreSQL ran (adapters only), e.g. "210 generic / 0 custom plans".
    plans: str = ""

    @property
    def median_ms(self) -> float:
        """Median latency."""
        return statistics.median(self.samples_ms)

    @property
    def p99_ms(self) -> float:
        """99th percentile, nearest rank."""
        return percentile(self.samples_ms, 99)


@dataclass
class FeedReport:
    """Everything one run measured."""

    options: dict[str, Any]
    machine: dict[str, Any]
    dataset: dict[str, Any]
    series: list[Series] = field(default_factory=list)
    stream: dict[str, Any] = field(default_factory=dict)
    concurrency: dict[str, Any] = field(default_factory=dict)
    # The v2 first page directly and through PgBouncer (bench/poolers.py).
    poolers: list[Series] = field(default_factory=list)
    explain: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def find(self, what: str, scale: str, page: int) -> Series | None:
        """The series of (what, scale, page), if measured."""
        for s in self.series:
            if (s.what, s.scale, s.page) == (what, scale, page):
                return s
        return None


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 2nd largest)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# --- report -----------------------------------------------------------------


def _add(report: FeedReport, series: Series, say: _Progress) -> None:
    report.series.append(series)
    say(
        f"{series.what:<20} @{series.scale:<12} page {series.page:>2}: "
        f"median {series.median_ms:9.3f} ms  p99 {series.p99_ms:9.3f} ms  "
        f"({len(series.samples_ms)} samples, {series.rows} rows"
        + (f"; {series.plans})" if series.plans else ")")
    )


def ratios(report: FeedReport, s: Series) -> dict[str, float | None]:
    """peer/this, page20/page1, this/growth_1k and v1/v2 for one series (None: n/a)."""
    out: dict[str, float | None] = {
        "peer_over_this": None,
        "page20_over_page1": None,
        "over_growth_1k": None,
        "v1_over_v2": None,
    }
    if s.what not in (PEER, PEER_GENERIC):
        p = report.find(PEER, s.scale, s.page)
        if p is not None:
            out["peer_over_this"] = p.median_ms / s.median_ms
    if s.page == DEEP_PAGE:
        first = report.find(s.what, s.scale, 1)
        if first is not None:
            out["page20_over_page1"] = s.median_ms / first.median_ms
    if s.scale.startswith("growth_") and s.scale != "growth_1k":
        base = report.find(s.what, "growth_1k", s.page)
        if base is not None:
            out["over_growth_1k"] = s.median_ms / base.median_ms
    if s.what in (ADAPTER_V1, GRPC_V1):
        v2 = report.find(s.what.replace("v1", "v2"), s.scale, s.page)
        if v2 is not None:
            out["v1_over_v2"] = s.median_ms / v2.median_ms
    return out


def targets(report: FeedReport) -> list[tuple[str, str, bool | None]]:
    """The issue's targets that this run can judge: (target, value, met or None)."""
    out: list[tuple[str, str, bool | None]] = []
    g1 = report.find(GRPC_V2, "shape", 1)
    if g1 is not None:
        out.append(("grpc v2 page 1 @shape median <= 2 ms", f"{g1.median_ms:.3f} ms",
                    g1.median_ms <= 2.0))  # fmt: skip
        out.append(("grpc v2 page 1 @shape p99 <= 10 ms", f"{g1.p99_ms:.3f} ms", g1.p99_ms <= 10.0))
        p1 = report.find(PEER, "shape", 1)
        if p1 is not None:
            r = p1.median_ms / g1.median_ms
            out.append(("peer / grpc v2, page 1 @shape >= 300x", f"{r:,.0f}x", r >= 300))
        g20 = report.find(GRPC_V2, "shape", DEEP_PAGE)
        if g20 is not None:
            r = g20.median_ms / g1.median_ms
            out.append(("grpc v2 page 20 / page 1 @shape: the same (<= 1.5x)", f"{r:.2f}x",
                        r <= 1.5))  # fmt: skip
    for what in (GRPC_V2, ADAPTER_V2):
        small, big = report.find(what, "growth_1k", 1), report.find(what, "growth_100k", 1)
        if small is not None and big is not None:
            r = big.median_ms / small.median_ms
            out.append((f"{what} page 1, 100k / 1k messages <= 1.5x", f"{r:.2f}x", r <= 1.5))
    # The target is about a 100,000-message history: judged on the first
    # 100,000 of the 1M event, or else on growth_100k's feed.
    t100 = report.stream.get("throughput_100k_of_1m")
    tp = report.stream.get("throughput")
    if t100 is not None:
        rate, where = t100["messages_per_s"], f"first {t100['messages']:,} of stream_1m"
    elif tp is not None and tp["event_messages"] >= 100_000:
        rate, where = tp["messages_per_s_median"], f"{tp['event']} V2 feed"
    else:
        rate = None
    if rate is not None:
        out.append(
            (f"StreamMessages >= 50,000 messages/s ({where})", f"{rate:,}/s", rate >= 50_000)
        )
    big = report.stream.get("one_million")
    if big is not None:
        rss = f"{big['peak_rss_mb']} MB (before {big['rss_before_mb']} MB)"
        out.append(("server peak RSS streaming 1M messages (reported)", rss, None))
    if report.concurrency:
        c = report.concurrency
        out.append((
            f"{c['clients']} clients: p99 beside a long stream (reported)",
            f"{c['with_stream']['p99_ms']} ms vs {c['alone']['p99_ms']} ms alone "
            f"({c['p99_with_over_without']}x)",
            None,
        ))  # fmt: skip
    return out


def _git_label(git: dict[str, Any] | None) -> str:
    if not git:
        return ""
    return f", commit {git['commit'][:10]}" + (" + uncommitted changes" if git["dirty"] else "")


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2f}x"


def table(report: FeedReport) -> str:
    """The printed report: latencies with ratios, streaming, concurrency, targets."""
    head = (
        f"{'what':<20} {'scale':<12} {'page':>4} {'n':>5} {'median ms':>11} {'p99 ms':>11} "
        f"{'peer/this':>10} {'p20/p1':>8} {'vs 1k':>7} {'v1/v2':>7}"
    )
    lines = [
        f"guestfeed bench feed --scale {report.dataset['scale']}: "
        f"{report.machine['cpu_count']} cpu {report.machine['cpu_model']}, "
        f"PostgreSQL {report.machine['postgres']['server_version']}, "
        f"dataset {report.dataset['generation_s']:.1f}s "
        f"({report.dataset['counts']['messages']:,} messages, "
        f"{report.dataset['counts']['message_deliveries']:,} deliveries)"
        + _git_label(report.machine.get("git")),
        "",
        head,
        "-" * len(head),
    ]
    order = {w: i for i, w in enumerate(WHATS)}
    scales = list(dict.fromkeys(s.scale for s in report.series))
    for s in sorted(report.series, key=lambda s: (scales.index(s.scale), order[s.what], s.page)):
        r = ratios(report, s)
        lines.append(
            f"{s.what:<20} {s.scale:<12} {s.page:>4} {len(s.samples_ms):>5} "
            f"{s.median_ms:>11.3f} {s.p99_ms:>11.3f} "
            f"{_fmt_ratio(r['peer_over_this']):>10} {_fmt_ratio(r['page20_over_page1']):>8} "
            f"{_fmt_ratio(r['over_growth_1k']):>7} {_fmt_ratio(r['v1_over_v2']):>7}"
        )
    lines.append("")
    tp = report.stream.get("throughput")
    if tp:
        lines.append(
            f"StreamMessages V2 @{tp['event']}: {tp['feed_messages_streamed']:,} messages, "
            f"median {tp['messages_per_s_median']:,} messages/s ({tp['runs']} runs, page size "
            f"{tp['page_size']}; CPU over {tp['wall_s']}s: server {tp['server_cpu_s']}s, "
            f"client {tp['client_cpu_s']}s)"
        )
    t100 = report.stream.get("throughput_100k_of_1m")
    if t100:
        lines.append(
            f"StreamMessages V2 @stream_1m, first {t100['messages']:,}: "
            f"{t100['messages_per_s']:,} messages/s"
        )
    big = report.stream.get("one_million")
    if big:
        lines.append(
            f"StreamMessages V2 @stream_1m: {big['messages']:,} messages in {big['seconds']}s "
            f"({big['messages_per_s']:,}/s); server peak RSS {big['peak_rss_mb']} MB "
            f"(before {big['rss_before_mb']} MB, after {big['rss_after_mb']} MB; "
            f"{big['peak_rss_source']})"
        )
    if report.concurrency:
        c = report.concurrency
        for label, key in (("alone", "alone"), ("beside a long stream", "with_stream")):
            x = c[key]
            extra = (
                f", stream {x['stream_messages_per_s']:,} messages/s"
                if "stream_messages_per_s" in x
                else ""
            )
            lines.append(
                f"{c['clients']} clients x {c['rpc']} @{c['event']}, {label}: "
                f"{x['requests_per_s']:,} req/s, p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms"
                f"{extra}"
            )
    if report.poolers:
        lines += ["", _pooler_lines(report.poolers)]
    lines.append("")
    lines.append("targets:")
    for name, value, met in targets(report):
        mark = "  --  " if met is None else (" MET  " if met else " MISSED")
        lines.append(f"  [{mark}] {name}: {value}")
    for note in report.notes:
        lines.append(f"note: {note}")
    lines.append(f"(whole run {report.elapsed_s:.0f}s)")
    return "\n".join(lines)


def _pooler_lines(series: list[Series]) -> str:
    """The pooler series, each against the same kind of call in session mode."""
    by = {s.what: s for s in series}
    head = (
        f"{'pooler: v2 first page':<28} {'scale':<10} {'median ms':>10} {'p99 ms':>10}  vs session"
    )
    lines = [head, "-" * len(head)]
    for s in series:
        base = by.get(
            "grpc v2 pgb-session" if s.what.startswith("grpc") else "adapter v2 pgb-session"
        )
        versus = ""
        if base is not None and base is not s:
            versus = f"{s.median_ms / base.median_ms:.2f}x ({s.median_ms - base.median_ms:+.3f} ms)"
        lines.append(f"{s.what:<28} {s.scale:<10} {s.median_ms:>10.3f} {s.p99_ms:>10.3f}  {versus}")
    return "\n".join(lines)


def to_json(report: FeedReport) -> dict[str, Any]:
    """The report as JSON-ready data (the same figures as the table, plus samples)."""
    return {
        "options": report.options,
        "machine": report.machine,
        "dataset": report.dataset,
        "rows": [
            {
                "what": s.what,
                "scale": s.scale,
                "page": s.page,
                "samples": len(s.samples_ms),
                "rows_returned": s.rows,
                "plans": s.plans or None,
                "median_ms": round(s.median_ms, 4),
                "p99_ms": round(s.p99_ms, 4),
                "min_ms": round(min(s.samples_ms), 4),
                "max_ms": round(max(s.samples_ms), 4),
                **{
                    k: (round(v, 3) if v is not None else None)
                    for k, v in ratios(report, s).items()
                },
            }
            for s in report.series
        ],
        "stream": report.stream,
        "concurrency": report.concurrency,
        "poolers": [
            {
                "what": s.what,
                "scale": s.scale,
                "samples": len(s.samples_ms),
                "median_ms": round(s.median_ms, 4),
                "p99_ms": round(s.p99_ms, 4),
            }
            for s in report.poolers
        ],
        "targets": [{"target": n, "value": v, "met": m} for n, v, m in targets(report)],
        "notes": report.notes,
        "explain": report.explain,
        "elapsed_s": report.elapsed_s,
    }


def write_json(report: FeedReport, path: Path) -> None:
    """Writes `to_json(report)` to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(report), indent=2, default=str) + "\n")


def explain_text(report: FeedReport) -> str:
    """The EXPLAIN plans, one after another."""
    return "\n\n".join(f"== {k}\n{v}" for k, v in report.explain.items())
