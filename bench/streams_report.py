"""The streams benchmark's runs, their medians and the tables it prints."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Scenario:
    """One thing measured: a kind of load, a server's code, and its settings."""

    kind: str  # "idle" | "active"
    code: str  # "after" (this tree) | "before" (--before-src)
    streams: int
    page_size: int
    # GUESTFEED_DB_BULK_SHARE given to the server; None: its default.
    bulk_share: int | None
    # Idle streams' client flow-control window: "bdp" (grpcio's default) or "fixed".
    window: str = "bdp"

    def label(self) -> str:
        """How progress lines name it."""
        share = "" if self.bulk_share is None else f", bulk share {self.bulk_share}"
        window = f", {self.window} window" if self.kind == "idle" and self.streams else ""
        return f"{self.kind} {self.streams} streams{window}, {self.code}{share}"


@dataclass
class Run:
    """One window of one scenario."""

    scenario: Scenario
    repeat: int
    window_s: float
    xacts: int
    probe_calls: int
    server_cpu_s: float
    pg_cpu_s: float | None
    client_cpu_s: float
    p50_ms: float | None
    p99_ms: float | None
    probe_errors: dict[str, int]
    stream_messages: int
    stream_errors: dict[str, int]
    streams_completed: int
    first_responses_s: float | None
    server_exit: int
    # Messages the server sent on streams, and the streams' statuses (its log).
    sent: int = 0
    stream_statuses: dict[str, int] = field(default_factory=dict)
    # The messages of the server's error log lines.
    server_errors: list[str] = field(default_factory=list)

    @property
    def stream_xacts(self) -> int:
        """Transactions beyond the probe's (each ListMessages is one)."""
        return self.xacts - self.probe_calls

    @property
    def xacts_per_1000_sent(self) -> float | None:
        """Transactions beyond the probe per 1,000 stream messages the server sent."""
        return 1000 * self.stream_xacts / self.sent if self.sent else None

    @property
    def messages_per_s(self) -> float:
        """Stream messages received per second of the window."""
        return self.stream_messages / self.window_s if self.window_s > 0 else 0.0

    def summary(self) -> str:
        """One progress line."""
        return (
            f"{self.xacts} xacts ({self.stream_xacts} beyond the probe), server "
            f"{self.server_cpu_s:.1f} CPU s, p50 {_ms(self.p50_ms)} p99 {_ms(self.p99_ms)} ms, "
            f"{self.messages_per_s:,.0f} stream msgs/s"
        )


@dataclass
class StreamsReport:
    """Everything one `python -m bench streams` measured."""

    options: dict[str, Any]
    machine: dict[str, Any]
    dataset: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    def runs_of(self, scenario: Scenario) -> list[Run]:
        """The repeats of one scenario."""
        return [r for r in self.runs if r.scenario == scenario]

    def scenarios(self, kind: str) -> list[Scenario]:
        """The scenarios of a kind, in the order they first ran."""
        seen: list[Scenario] = []
        for r in self.runs:
            if r.scenario.kind == kind and r.scenario not in seen:
                seen.append(r.scenario)
        return seen

    def notes(self) -> list[str]:
        """What went wrong in any run (errors, a server that did not stop cleanly)."""
        out = []
        for r in self.runs:
            where = f"{r.scenario.label()}, repeat {r.repeat + 1}"
            if r.probe_errors:
                out.append(f"{where}: ListMessages failed {r.probe_errors}")
            if r.stream_errors:
                out.append(f"{where}: streams failed {r.stream_errors}")
            if r.server_exit != 0:
                out.append(f"{where}: guestfeed serve exited with {r.server_exit}")
        return out


def median_of(runs: Sequence[Run], get: Callable[[Run], float | None]) -> float | None:
    """The median of a figure over runs (None when no run has it)."""
    values = [v for v in (get(r) for r in runs) if v is not None]
    return statistics.median(values) if values else None


def _ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _n(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _per(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "n/a"
    r = a / b
    return f"{r:,.0f}x" if r >= 100 else f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def _range(runs: Sequence[Run], get: Callable[[Run], float | None]) -> str:
    values = [v for v in (get(r) for r in runs) if v is not None]
    return f"{_ms(min(values))}-{_ms(max(values))}" if values else "n/a"


_WINDOWS = {"bdp": "grpcio default (BDP)", "fixed": "64 KB (no BDP)"}
_IDLE = (
    ("db xacts", lambda r: float(r.xacts), _n),
    ("beyond the probe", lambda r: float(r.stream_xacts), _n),
    ("msgs sent", lambda r: float(r.sent), _n),
    ("xacts / 1,000 sent", lambda r: r.xacts_per_1000_sent, _per),
    ("server CPU s", lambda r: r.server_cpu_s, _s),
    ("PostgreSQL CPU s", lambda r: r.pg_cpu_s, _s),
    ("ListMessages p50 ms", lambda r: r.p50_ms, _ms),
    ("p99 ms", lambda r: r.p99_ms, _ms),
)


def idle_table(report: StreamsReport) -> str:
    """Idle streams, after and before the fix, with before / after per stream count."""
    scenarios = report.scenarios("idle")
    if not scenarios:
        return ""
    head = ["streams", "client window", "code", *(name for name, _, _ in _IDLE), "p99 runs"]
    lines = [_row(head), _row(["---"] * len(head))]
    groups = sorted({(s.streams, s.window) for s in scenarios}, key=lambda g: (g[0], g[1]))
    for n, window in groups:
        label = "" if n == 0 else _WINDOWS.get(window, window)
        by_code = {
            s.code: report.runs_of(s) for s in scenarios if (s.streams, s.window) == (n, window)
        }
        for code in ("after", "before"):
            if code in by_code:
                runs = by_code[code]
                cells = [fmt(median_of(runs, get)) for _, get, fmt in _IDLE]
                lines.append(_row([str(n), label, code, *cells, _range(runs, lambda r: r.p99_ms)]))
        if "before" in by_code and "after" in by_code:
            cells = [
                _ratio(median_of(by_code["before"], get), median_of(by_code["after"], get))
                for _, get, _ in _IDLE
            ]
            lines.append(_row([str(n), label, "**before / after**", *cells, ""]))
    o = report.options
    title = (
        f"Idle streams: page_size {o['idle_page_size']}, the first response read, then "
        f"nothing for the {o['seconds']:g} s window; a separate process calls ListMessages "
        f"every {o['probe_interval_s'] * 1000:g} ms (page_size {o['probe_page_size']}). "
        "msgs sent: what the server's log says it sent on the streams (the client's gRPC "
        f"library takes in what its window allows). Medians of {o['repeats']} runs."
    )
    return title + "\n\n" + "\n".join(lines)


def active_table(report: StreamsReport) -> str:
    """Unary latency beside actively read streams, by bulk share (and before the fix)."""
    scenarios = report.scenarios("active")
    if not scenarios:
        return ""
    o = report.options
    pool, default = o["pool_max"], o["default_bulk_share"]
    baseline = next((s for s in scenarios if s.streams == 0), None)
    base_p50 = median_of(report.runs_of(baseline), lambda r: r.p50_ms) if baseline else None
    base_p99 = median_of(report.runs_of(baseline), lambda r: r.p99_ms) if baseline else None
    head = [
        "streams",
        "bulk share of the pool",
        "code",
        "ListMessages p50 ms",
        "p99 ms",
        "p99 runs",
        "p50 / p99 / no streams",
        "stream msgs/s",
        "db xacts",
        "server CPU s",
    ]
    lines = [_row(head), _row(["---"] * len(head))]
    for s in scenarios:
        runs = report.runs_of(s)
        if s.code == "before":
            share = "none (before the fix)"
        elif s.bulk_share is None:
            share = f"{default} of {pool} (default)"
        else:
            share = f"{s.bulk_share} of {pool}" + (" (no share)" if s.bulk_share >= pool else "")
        p50 = median_of(runs, lambda r: r.p50_ms)
        p99 = median_of(runs, lambda r: r.p99_ms)
        vs = "" if s is baseline else f"{_ratio(p50, base_p50)} / {_ratio(p99, base_p99)}"
        lines.append(
            _row(
                [
                    str(s.streams),
                    share,
                    s.code,
                    _ms(p50),
                    _ms(p99),
                    _range(runs, lambda r: r.p99_ms),
                    vs,
                    _n(median_of(runs, lambda r: r.messages_per_s)) if s.streams else "",
                    _n(median_of(runs, lambda r: float(r.xacts))),
                    _s(median_of(runs, lambda r: r.server_cpu_s)),
                ]
            )
        )
    title = (
        f"Unary beside {o['active_streams']} actively read streams (page_size "
        f"{o['active_page_size']}, read as fast as they come, reopened at their end), pool of "
        f"{pool}; the same probe; {o['seconds']:g} s windows. Medians of {o['repeats']} runs."
    )
    return title + "\n\n" + "\n".join(lines)


def markdown(report: StreamsReport) -> str:
    """The tables, the dataset and machine lines, and any notes."""
    d, m = report.dataset, report.machine
    parts = [
        f"Dataset: one event, {d['messages']:,} messages, {d['deliveries']:,} deliveries; "
        f"the {d['callers']} callers see {d['visible_min']:,}-{d['visible_max']:,} messages "
        f"each. Machine: {m['cpus']} CPUs, load average {m['loadavg_start'][0]} at the start, "
        f"{m.get('loadavg_end', ['?'])[0]} at the end; PostgreSQL {m['postgres']}, "
        f"Python {m['python']}.",
        idle_table(report),
        active_table(report),
    ]
    errors = [(r, e) for r in report.runs for e in r.server_errors]
    if errors:
        kinds = sorted({r.scenario.label() for r, _ in errors})
        parts.append(
            f"Server log: {len(errors)} error lines, in {'; '.join(kinds)}; the first: "
            f"{errors[0][1]!r}."
        )
    notes = report.notes()
    if notes:
        parts.append("Notes:\n" + "\n".join(f"- {n}" for n in notes))
    return "\n\n".join(p for p in parts if p)


def to_json(report: StreamsReport) -> dict[str, Any]:
    """Every run's figures, and the options, machine and dataset."""
    return {
        "options": report.options,
        "machine": report.machine,
        "dataset": report.dataset,
        "runs": [
            {**asdict(r), "stream_xacts": r.stream_xacts, "messages_per_s": r.messages_per_s}
            for r in report.runs
        ],
    }


def write_json(report: StreamsReport, path: Path) -> None:
    """Writes `to_json` to `path`, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(report), indent=2) + "\n")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
