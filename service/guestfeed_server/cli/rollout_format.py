"""Plain-text tables and JSON shapes for `guestfeed rollout` (no dependencies)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from guestfeed.v1 import feed_pb2, rollout_pb2

Config = rollout_pb2.RolloutConfig
MODELS = {"v1": feed_pb2.READ_MODEL_V1, "v2": feed_pb2.READ_MODEL_V2}
_MODEL_NAMES: dict[int, str] = {v: k for k, v in MODELS.items()}


def table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    all_rows = [list(headers), *map(list, rows)] if headers else [list(r) for r in rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in all_rows
    )


def format_config(config: Config) -> str:
    """The config as a person reads it: settings, then each override list."""
    lines = [
        table(
            None,
            [
                ["revision", str(config.revision)],
                ["v2 enabled", "yes" if config.v2_enabled else "no (kill switch on: all v1)"],
                ["v2 percentage", f"{config.v2_percentage}%"],
                ["hash version", _hash_name(config.hash_version)],
                ["shadow reads", f"{config.shadow_sample_rate:g} of V1 first pages"],
                ["guard", guard_line(config.guard, config.guard_enabled)],
                ["updated at", when(config.updated_at)],
                ["updated by", config.updated_by],
            ],
        )
    ]
    for kind, overrides in (("user", config.user_overrides), ("event", config.event_overrides)):
        if not overrides:
            lines += ["", f"{kind} overrides: none"]
            continue
        rows = [[k, _model_name(v)] for k, v in sorted(overrides.items())]
        lines += ["", f"{kind} overrides ({len(rows)}):", table([kind.upper(), "MODEL"], rows)]
    return "\n".join(lines)


def config_dict(config: Config) -> dict[str, Any]:
    """The config as plain JSON values (ints stay numbers, enums become short names)."""
    return {
        "v2_enabled": config.v2_enabled,
        "v2_percentage": config.v2_percentage,
        "hash_version": _hash_name(config.hash_version),
        "user_overrides": {k: _model_name(v) for k, v in sorted(config.user_overrides.items())},
        "event_overrides": {k: _model_name(v) for k, v in sorted(config.event_overrides.items())},
        "revision": config.revision,
        "updated_at": iso(config.updated_at),
        "updated_by": config.updated_by,
        "shadow_sample_rate": config.shadow_sample_rate,
        "guard": guard_dict(config.guard),
        "guard_enabled": config.guard_enabled,
    }


def guard_dict(guard: rollout_pb2.GuardConfig) -> dict[str, Any]:
    """The guard's settings as plain JSON values."""
    return {
        "window_seconds": guard.window_seconds,
        "min_requests": guard.min_requests,
        "max_error_share": guard.max_error_share,
        "max_avg_latency_ms": guard.max_avg_latency_ms,
        "max_p95_latency_ms": guard.max_p95_latency_ms,
        "act_on_shadow_v1_only": guard.act_on_shadow_v1_only,
    }


def guard_line(guard: rollout_pb2.GuardConfig, enabled: bool) -> str:
    """The guard's settings on one line."""
    state = "on" if enabled else "paused"
    p95 = f"{guard.max_p95_latency_ms:g} ms" if guard.max_p95_latency_ms else "watched"
    return (
        f"{state}: window {guard.window_seconds}s, min {guard.min_requests} requests, "
        f"errors > {guard.max_error_share:g}, avg > {guard.max_avg_latency_ms:g} ms, "
        f"p95 > {p95}, shadow v1-only: {'act' if guard.act_on_shadow_v1_only else 'watch'}"
    )


def config_diff(before: Config, after: Config) -> list[str]:
    """What a change does to the settable fields, e.g. `percentage 0->10`."""
    out: list[str] = []
    if before.v2_enabled != after.v2_enabled:
        out.append(f"enabled {_yes(before.v2_enabled)}->{_yes(after.v2_enabled)}")
    if before.v2_percentage != after.v2_percentage:
        out.append(f"percentage {before.v2_percentage}->{after.v2_percentage}")
    if before.shadow_sample_rate != after.shadow_sample_rate:
        out.append(f"shadow rate {before.shadow_sample_rate:g}->{after.shadow_sample_rate:g}")
    if before.guard_enabled != after.guard_enabled:
        out.append(f"guard_enabled {_yes(before.guard_enabled)}->{_yes(after.guard_enabled)}")
    if before.guard != after.guard:
        g0, g1 = guard_dict(before.guard), guard_dict(after.guard)
        out += [f"guard {k} {g0[k]}->{g1[k]}" for k in g0 if g0[k] != g1[k]]
    if before.hash_version != after.hash_version:
        out.append(f"hash {_hash_name(before.hash_version)}->{_hash_name(after.hash_version)}")
    for kind, old, new in (
        ("user", before.user_overrides, after.user_overrides),
        ("event", before.event_overrides, after.event_overrides),
    ):
        for key in sorted(set(old) | set(new)):
            was, now = old.get(key), new.get(key)
            if was != now:
                out.append(f"{kind} {key} {_model_name(was)}->{_model_name(now)}")
    return out


def _yes(value: bool) -> str:
    return "true" if value else "false"


def _model_name(value: int | None) -> str:
    return "none" if value is None else _MODEL_NAMES.get(value, f"unknown({value})")


def _hash_name(value: int) -> str:
    if value == rollout_pb2.HASH_VERSION_UNSPECIFIED:
        return "unspecified"
    try:
        return rollout_pb2.HashVersion.Name(value).removeprefix("HASH_VERSION_").lower()
    except ValueError:
        return f"unknown({value})"


def when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ts: Timestamp) -> str | None:
    return ts.ToDatetime(tzinfo=UTC).isoformat() if ts.seconds or ts.nanos else None
