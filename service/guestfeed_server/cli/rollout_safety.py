"""`guestfeed rollout compare|shadow|guard`: the migration's safety net from a terminal."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable
from typing import Any

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_client import GuestFeedClient

from .rollout_commands import PROG, Console, write
from .rollout_format import Config, table, when

# Events with this many guests or more report progress, every this many guests.
_PROGRESS_FROM = 100
_TYPE = {
    feed_pb2.MESSAGE_TYPE_DIRECT: "direct",
    feed_pb2.MESSAGE_TYPE_ANNOUNCEMENT: "announcement",
    feed_pb2.MESSAGE_TYPE_CHANNEL: "channel",
}


def reason_name(value: int) -> str:
    """`tags_no_longer_match` for V1_ONLY_REASON_TAGS_NO_LONGER_MATCH."""
    return rollout_pb2.V1OnlyReason.Name(value).removeprefix("V1_ONLY_REASON_").lower()


def _guest_dict(g: rollout_pb2.GuestComparison) -> dict[str, Any]:
    return {
        "user_id": g.user_id,
        "v1_count": g.v1_count,
        "v2_count": g.v2_count,
        "common_count": g.common_count,
        "v1_only": [
            {
                "message_id": h.message_id,
                "message_type": _TYPE.get(h.message_type, "unknown"),
                "reason": reason_name(h.reason),
                "detail": h.detail,
            }
            for h in g.v1_only
        ],
        "v2_only": {_TYPE.get(c.message_type, "unknown"): c.count for c in g.v2_only},
    }


async def compare(ns: argparse.Namespace, client: GuestFeedClient, console: Console) -> int:
    """Per-guest comparison: guests with V1-only messages first, then a summary line."""
    guests: list[rollout_pb2.GuestComparison] = []
    summary: rollout_pb2.ComparisonSummary | None = None
    async for response in client.compare_read_models(str(ns.event), user_id=str(ns.guest or "")):
        if response.HasField("summary"):
            summary = response.summary
            continue
        guests.append(response.guest)
        done, total = len(guests), response.guest.guests_total
        if total >= _PROGRESS_FROM and (done % _PROGRESS_FROM == 0 or done == total):
            # Progress for long events: stderr, so the report (or JSON) stays clean.
            print(f"{PROG} compare: compared {done}/{total} guests", file=sys.stderr)
    assert summary is not None
    guests.sort(key=lambda g: (not g.v1_only, g.user_id))
    by_reason = {reason_name(r.reason): r.count for r in summary.v1_only_by_reason}
    elapsed = summary.elapsed.ToMilliseconds() / 1000
    data = {
        "event_id": summary.event_id,
        "guests": [_guest_dict(g) for g in guests],
        "summary": {
            "guests_compared": summary.guests_compared,
            "guests_with_v1_only": summary.guests_with_v1_only,
            "v1_only_total": summary.v1_only_total,
            "v1_only_by_reason": by_reason,
            "elapsed_s": elapsed,
            "snapshot_at": when(summary.snapshot_at),
        },
    }
    rows = [
        [
            g.user_id,
            str(g.v1_count),
            str(g.v2_count),
            str(g.common_count),
            str(len(g.v1_only)),
            ", ".join(f"{_TYPE[c.message_type]} {c.count}" for c in g.v2_only) or "-",
        ]
        for g in guests
    ]
    lines = [table(["USER", "V1", "V2", "COMMON", "V1 ONLY", "V2 ONLY"], rows) if rows else ""]
    hidden = [(g.user_id, h) for g in guests for h in g.v1_only]
    if hidden:
        lines += [
            "",
            "messages V1 shows and V2 hides:",
            table(
                ["USER", "MESSAGE", "TYPE", "REASON", "DETAIL"],
                [
                    [u, h.message_id, _TYPE[h.message_type], reason_name(h.reason), h.detail]
                    for u, h in hidden
                ],
            ),
        ]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())) or "none"
    lines += [
        "",
        f"{summary.guests_compared} guests compared in {elapsed:.2f}s (snapshot "
        f"{when(summary.snapshot_at)}): {summary.guests_with_v1_only} with V1-only messages, "
        f"{summary.v1_only_total} in all ({reasons})",
    ]
    console.emit(data, "\n".join(line for line in lines if line is not None).lstrip("\n"))
    return 0


async def shadow(ns: argparse.Namespace, client: GuestFeedClient, console: Console) -> int:
    """Sets the share of V1 first pages read from V2 beside them."""

    def change(c: Config) -> None:
        c.shadow_sample_rate = ns.rate

    return await write(ns, client, console, change)


async def guard(ns: argparse.Namespace, client: GuestFeedClient, console: Console) -> int:
    """Shows the guard, or pauses, resumes or retunes it."""
    if ns.action == "status":
        return await _guard_status(client, console)
    if not ns.reason:
        console.note(f"guard {ns.action} changes the config: say why with --reason")
        return 2
    edits: dict[str, Callable[[Config], None]] = {
        "pause": lambda c: setattr(c, "guard_enabled", False),
        "resume": lambda c: setattr(c, "guard_enabled", True),
        "set": lambda c: _retune(c.guard, ns),
    }

    def change(c: Config) -> None:
        edits[ns.action](c)

    return await write(ns, client, console, change)


def _retune(g: rollout_pb2.GuardConfig, ns: argparse.Namespace) -> None:
    for option, name in (
        ("window", "window_seconds"),
        ("min_requests", "min_requests"),
        ("max_error_share", "max_error_share"),
        ("max_avg_latency_ms", "max_avg_latency_ms"),
        ("max_p95_latency_ms", "max_p95_latency_ms"),
    ):
        value = getattr(ns, option, None)
        if value is not None:
            setattr(g, name, value)
    if getattr(ns, "shadow_v1_only", None) is not None:
        g.act_on_shadow_v1_only = ns.shadow_v1_only == "act"


async def _guard_status(client: GuestFeedClient, console: Console) -> int:
    s = await client.get_guard_status()
    rows = [
        [
            x.name + (f" (event {x.event_id})" if x.event_id else ""),
            f"{x.value:.4g}",
            f"{x.threshold:.4g}",
            "BREACHED" if x.breached else "ok",
        ]
        for x in s.signals
    ]
    head = (
        f"guard on {s.replica}: {'on' if s.enabled else 'paused'}, window {s.window_seconds}s, "
        f"{s.v2_requests} V2 requests ({s.v2_failures} failed), "
        + ("enough data" if s.enough_data else f"too few to decide (min {s.min_requests})")
    )
    last = (
        f"last action: revision {s.last_action.revision} at {when(s.last_action.changed_at)} by "
        f"{s.last_action.changed_by}: {s.last_action.reason}"
        if s.HasField("last_action")
        else "last action: none"
    )
    data = {
        "replica": s.replica,
        "enabled": s.enabled,
        "window_seconds": s.window_seconds,
        "v2_requests": s.v2_requests,
        "v2_failures": s.v2_failures,
        "min_requests": s.min_requests,
        "enough_data": s.enough_data,
        "signals": [
            {
                "name": x.name,
                "value": x.value,
                "threshold": x.threshold,
                "breached": x.breached,
                "event_id": x.event_id or None,
            }
            for x in s.signals
        ],
        "last_action": (
            {
                "revision": s.last_action.revision,
                "changed_by": s.last_action.changed_by,
                "reason": s.last_action.reason,
            }
            if s.HasField("last_action")
            else None
        ),
    }
    text = "\n".join([head, "", table(["SIGNAL", "VALUE", "THRESHOLD", ""], rows), "", last])
    console.emit(data, text)
    return 0


def register(command: Callable[..., argparse.ArgumentParser], reason: Callable[..., None]) -> None:
    """Adds `compare`, `shadow` and `guard` to `guestfeed rollout`."""
    p = command(
        "compare",
        compare,
        "V1 against V2 for every guest of an event, with reasons",
        token_user=False,
    )
    p.add_argument("--event", type=uuid.UUID, required=True, metavar="UUID")
    p.add_argument(
        "--user", dest="guest", type=uuid.UUID, metavar="UUID", help="compare this guest only"
    )
    p = command("shadow", shadow, "set the share of V1 first pages also read from V2")
    p.add_argument("--rate", type=_fraction, required=True, metavar="R", help="0 to 1")
    reason(p)
    p = command("guard", guard, "show the auto-rollback guard, pause, resume or retune it")
    p.add_argument("action", choices=("status", "pause", "resume", "set"))
    p.add_argument("--window", type=int, metavar="S", help="window in seconds (5-3600)")
    p.add_argument("--min-requests", type=int, metavar="N")
    p.add_argument("--max-error-share", type=float, metavar="F")
    p.add_argument("--max-avg-latency-ms", type=float, metavar="MS")
    p.add_argument("--max-p95-latency-ms", type=float, metavar="MS", help="0: watch only")
    p.add_argument("--shadow-v1-only", choices=("act", "watch"))
    p.add_argument("--reason", help="why, for the audit log (needed to change anything)")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {value}")
    return value
