"""The watch benchmark's figures: one run per scenario, as a table and as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import percentile


@dataclass(frozen=True)
class Scenario:
    """N watchers spread evenly over E events (each watcher a different guest)."""

    watchers: int
    events: int

    def label(self) -> str:
        where = "one event" if self.events == 1 else f"{self.events} events"
        return f"{self.watchers:,} watcher{'s' if self.watchers != 1 else ''} on {where}"


@dataclass
class WatchRun:
    """One scenario's window."""

    scenario: Scenario
    # From before the writes to `settle_s` after them (statements, transactions).
    window_s: float
    # The writes and the 2 s after them (CPU).
    load_s: float
    open_s: float
    messages: int
    expected_receipts: int
    latencies_ms: list[float]
    hub_queries: dict[str, float]
    db_xacts: int
    server_cpu_s: float
    pg_cpu_s: float | None
    client_cpu_s: float
    rss_idle_mb: float
    rss_watching_mb: float
    errors: dict[str, int] = field(default_factory=dict)
    server_exit: int | None = None

    def pct(self, p: float) -> float | None:
        """A latency percentile in ms (None without receipts)."""
        return percentile(self.latencies_ms, p) if self.latencies_ms else None

    @property
    def missing(self) -> int:
        """Receipts that never came."""
        return self.expected_receipts - len(self.latencies_ms)

    def per_s(self, kinds: tuple[str, ...] | None = None) -> float:
        """The hub's statements per second (every kind, or those named)."""
        n = sum(v for k, v in self.hub_queries.items() if kinds is None or k in kinds)
        return n / self.window_s

    @property
    def rss_per_watcher_kb(self) -> float:
        """The server's RSS growth from idle to N open watches, per watch."""
        return (self.rss_watching_mb - self.rss_idle_mb) * 1024 / self.scenario.watchers

    def summary(self) -> str:
        """One progress line."""
        p50, p99 = self.pct(50), self.pct(99)
        return (
            f"p50 {_ms(p50)} p99 {_ms(p99)}, {len(self.latencies_ms)}/{self.expected_receipts} "
            f"receipts, hub {self.per_s():.1f} q/s, server CPU "
            f"{100 * self.server_cpu_s / self.load_s:.0f} %, errors {self.errors or 'none'}"
        )


@dataclass
class WatchReport:
    """Every run, and where they ran."""

    machine: dict[str, Any]
    options: dict[str, Any]
    runs: list[WatchRun] = field(default_factory=list)


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} ms"


def markdown(report: WatchReport) -> str:
    """The tables docs/watch.md quotes."""
    m = report.machine
    o = report.options
    out = [
        f"Machine: {m.get('cpus')} CPUs, PostgreSQL {m.get('postgres')}, Python "
        f"{m.get('python')}; load average {m.get('loadavg_start')} -> {m.get('loadavg_end')}. "
        f"Writer: {o['rate']:g} announcements/s for {o['seconds']:g} s; readers share "
        f"{o['channels']} connections; default watch settings (tick 100 ms).",
        "",
        "| watchers | latency p50 | p90 | p99 | max | receipts | hub queries/s "
        "(horizon + changes / access / catch-up) | db xacts/s | RSS per watcher | server CPU "
        "| PostgreSQL CPU | readers' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.runs:
        w, load = r.window_s, r.load_s
        tick = r.per_s(("horizon", "changes"))
        access = r.per_s(("access",))
        catch = r.per_s(("catch_up",))
        pg = "n/a" if r.pg_cpu_s is None else f"{100 * r.pg_cpu_s / load:.0f} %"
        out.append(
            f"| {r.scenario.label()} | {_ms(r.pct(50))} | {_ms(r.pct(90))} | {_ms(r.pct(99))} "
            f"| {_ms(max(r.latencies_ms, default=None))} "
            f"| {len(r.latencies_ms):,} of {r.expected_receipts:,} "
            f"| {tick + access + catch:.1f} ({tick:.1f} / {access:.1f} / {catch:.1f}) "
            f"| {r.db_xacts / w:.1f} | {r.rss_per_watcher_kb:.0f} KB "
            f"| {100 * r.server_cpu_s / load:.0f} % | {pg} | {100 * r.client_cpu_s / load:.0f} % |"
        )
    notes = [
        f"{r.scenario.label()}: errors {r.errors}"
        for r in report.runs
        if r.errors or r.server_exit not in (0, None)
    ]
    if notes:
        out += ["", "Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(out)


def to_json(report: WatchReport) -> dict[str, Any]:
    """Everything measured, for later comparison."""
    return {
        "machine": report.machine,
        "options": report.options,
        "runs": [
            {
                "watchers": r.scenario.watchers,
                "events": r.scenario.events,
                "window_s": round(r.window_s, 3),
                "open_s": round(r.open_s, 3),
                "messages": r.messages,
                "receipts": len(r.latencies_ms),
                "expected_receipts": r.expected_receipts,
                "latency_ms": {
                    "p50": r.pct(50),
                    "p90": r.pct(90),
                    "p99": r.pct(99),
                    "max": max(r.latencies_ms, default=None),
                },
                "hub_queries": r.hub_queries,
                "hub_queries_per_s": round(r.per_s(), 2),
                "db_xacts_per_s": round(r.db_xacts / r.window_s, 2),
                "rss_idle_mb": round(r.rss_idle_mb, 1),
                "rss_watching_mb": round(r.rss_watching_mb, 1),
                "rss_per_watcher_kb": round(r.rss_per_watcher_kb, 1),
                "load_s": round(r.load_s, 3),
                "server_cpu_pct": round(100 * r.server_cpu_s / r.load_s, 1),
                "pg_cpu_pct": None if r.pg_cpu_s is None else round(100 * r.pg_cpu_s / r.load_s, 1),
                "client_cpu_pct": round(100 * r.client_cpu_s / r.load_s, 1),
                "errors": r.errors,
                "server_exit": r.server_exit,
            }
            for r in report.runs
        ],
    }


def write_json(report: WatchReport, path: Path) -> None:
    """Writes `to_json` to `path` (its folder is made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(report), indent=2) + "\n")
