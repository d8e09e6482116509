"""The `guestfeed rollout` subcommands themselves, each an RPC or two through the client."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

import grpc

from guestfeed.v1 import rollout_pb2
from guestfeed_client import GuestFeedClient, RPCError

from .rollout_format import (
    MODELS,
    Config,
    config_dict,
    config_diff,
    format_config,
    iso,
    table,
    when,
)

PROG = "guestfeed rollout"
# A conflicting writer between our read and our write costs one more round trip.
MAX_RETRIES = 3


@dataclass
class Console:
    """Where a command writes, and how."""

    out: TextIO
    err: TextIO
    json: bool
    target: str

    def emit(self, data: object, text: str) -> None:
        """Prints `data` as JSON with --json, else the human-readable `text`."""
        print(json.dumps(data, indent=2) if self.json else text.rstrip("\n"), file=self.out)

    def note(self, text: str) -> None:
        """A remark for the person at the terminal (stderr, never in --json output)."""
        print(f"{PROG}: {text}", file=self.err)


Command = Callable[[argparse.Namespace, GuestFeedClient, Console], Awaitable[int]]


async def status(ns: argparse.Namespace, client: GuestFeedClient, console: Console) -> int:
    config = await client.get_rollout_config()
    console.emit(config_dict(config), format_config(config))
    return 0


async def set_percentage(ns: argparse.Namespace, client: GuestFeedClient, console: Console) -> int:
    def change(c: Config) -> None:
        c.v2_percentage = ns.percentage

    return await write(ns, client, console, change)


async def enable(ns: argparse.Namespace, client: GuestFeedClient, console: Console) -> int:
    return await write(ns, client, console, lambda c: setattr(c, "v2_enabled", True))


async def kill(ns: argparse.Namespace, client: GuestFeedClient, console: Console) -> int:
    return await write(ns, client, console, lambda c: setattr(c, "v2_enabled", False))


async def override(ns: argparse.Namespace, client: GuestFeedClient, console: Console) -> int:
    def change(c: Config) -> None:
        apply_override(c, ns.kind, str(ns.id), ns.model)

    return await write(ns, client, console, change)


def apply_override(config: Config, kind: str, key: str, model: str) -> None:
    overrides = config.user_overrides if kind == "user" else config.event_overrides
    if model == "clear":
        overrides.pop(key, None)
    else:
        overrides[key] = MODELS[model]


async def write(
    ns: argparse.Namespace,
    client: GuestFeedClient,
    console: Console,
    change: Callable[[Config], None],
) -> int:
    """Read, modify, write on the read revision; re-read and retry when someone came first."""
    for attempt in range(MAX_RETRIES + 1):
        current = await client.get_rollout_config()
        proposed = Config()
        proposed.CopyFrom(current)
        change(proposed)
        diff = config_diff(current, proposed)
        if not diff:
            console.emit(
                {"changed": False, "retries": attempt, "config": config_dict(current)},
                f"nothing to change: revision {current.revision} already says so",
            )
            return 0
        try:
            new = await client.update_rollout_config(
                proposed, expected_revision=current.revision, reason=ns.reason
            )
        except RPCError as exc:
            if exc.code is not grpc.StatusCode.ABORTED or attempt == MAX_RETRIES:
                raise
            console.note(
                f"revision {current.revision} was changed by someone else meanwhile; "
                f"re-reading and retrying ({attempt + 1}/{MAX_RETRIES})"
            )
            continue
        console.emit(
            {"changed": True, "retries": attempt, "config": config_dict(new)},
            f"updated to revision {new.revision} (was {current.revision}): {', '.join(diff)}",
        )
        return 0
    raise AssertionError("unreachable: the last attempt returns or raises")


async def history(ns: argparse.Namespace, client: GuestFeedClient, console: Console) -> int:
    changes: list[rollout_pb2.RolloutChange] = []
    token = ""
    while len(changes) < ns.limit:
        page = await client.list_rollout_changes(
            page_size=min(ns.limit - len(changes), 200), page_token=token
        )
        changes.extend(page.changes)
        token = page.next_page_token
        if not token:
            break
    rows = [
        [
            str(c.revision),
            when(c.changed_at),
            c.changed_by,
            " ".join(c.reason.split()),
            ", ".join(config_diff(c.before, c.after)) or "(no change)",
        ]
        for c in changes
    ]
    text = table(["REVISION", "WHEN", "WHO", "REASON", "CHANGES"], rows) if rows else "no changes"
    if token:
        text += f"\n(older changes exist; raise --limit above {ns.limit} to see them)"
    data = {
        "changes": [
            {
                "revision": c.revision,
                "changed_at": iso(c.changed_at),
                "changed_by": c.changed_by,
                "reason": c.reason,
                "changes": config_diff(c.before, c.after),
                "before": config_dict(c.before),
                "after": config_dict(c.after),
            }
            for c in changes
        ],
        "more": bool(token),
    }
    console.emit(data, text)
    return 0


async def preview(ns: argparse.Namespace, client: GuestFeedClient, console: Console) -> int:
    current = await client.get_rollout_config()
    proposed = Config()
    proposed.CopyFrom(current)
    if ns.percentage is not None:
        proposed.v2_percentage = ns.percentage
    if ns.enable or ns.kill:
        proposed.v2_enabled = bool(ns.enable)
    for kind in ("user", "event"):
        for key, model in getattr(ns, f"override_{kind}"):
            apply_override(proposed, kind, key, model)
    diff = config_diff(current, proposed)
    impact = await client.preview_rollout_change(proposed, max_events=ns.max_events)
    totals = [
        ["guests evaluated", str(impact.guests_evaluated)],
        ["guests changing", str(impact.guests_changing)],
        ["  to v2", str(impact.guests_to_v2)],
        ["  to v1", str(impact.guests_to_v1)],
        ["events changing", str(impact.events_changing)],
    ]
    lines = [
        f"proposal against revision {impact.current_revision}: "
        + (", ".join(diff) if diff else "no change"),
        "",
        table(None, totals),
    ]
    if impact.events:
        events = [
            [e.event_id, str(e.guests_changing), str(e.guests_to_v2), str(e.guests_to_v1)]
            for e in impact.events
        ]
        lines += ["", table(["EVENT", "CHANGING", "TO V2", "TO V1"], events)]
    if impact.events_changing > len(impact.events):
        lines.append(
            f"(showing {len(impact.events)} of {impact.events_changing} events, those with "
            "the most changing guests; see --max-events)"
        )
    data = {
        "current_revision": impact.current_revision,
        "proposed": config_dict(proposed),
        "changes": diff,
        "guests_evaluated": impact.guests_evaluated,
        "guests_changing": impact.guests_changing,
        "guests_to_v2": impact.guests_to_v2,
        "guests_to_v1": impact.guests_to_v1,
        "events_changing": impact.events_changing,
        "events": [
            {
                "event_id": e.event_id,
                "guests_changing": e.guests_changing,
                "guests_to_v2": e.guests_to_v2,
                "guests_to_v1": e.guests_to_v1,
            }
            for e in impact.events
        ],
    }
    console.emit(data, "\n".join(lines))
    return 0
