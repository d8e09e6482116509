"""The context a feed benchmark run records: its options, dataset, machine and checkout."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from . import dataset
from .common import FeedOptions

# --- context ----------------------------------------------------------------


def _options_json(options: FeedOptions) -> dict[str, Any]:
    return {
        "scale": options.scale,
        "iterations": options.iterations,
        "peer_samples": options.peer_samples,
        "peer_budget_s": options.peer_budget_s,
        "stream_1m": options.stream_1m or options.scale == "all",
        "concurrency_s": options.concurrency_s,
        "clients": options.clients,
        "channels": options.channels,
        "warmup": options.warmup,
        "viewers": options.viewers,
    }


def _dataset_json(data: dataset.Dataset) -> dict[str, Any]:
    return {
        "scale": data.scale,
        "generation_s": round(data.total_s, 1),
        "timings_s": data.timings_s,
        "counts": data.counts,
        "events": {
            k: {
                "event_id": str(s.event_id),
                "guests": s.guests,
                "messages": s.messages,
                "scheduled_messages": s.scheduled,
                "deliveries": s.deliveries,
            }
            for k, s in data.events.items()
        },
    }


def _host() -> tuple[str, float | None]:
    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return cpu_model, mem_gb


async def _machine(conn: asyncpg.Connection) -> dict[str, Any]:
    cpu_model, mem_gb = _host()
    from google.protobuf.internal import api_implementation

    settings = {}
    for name in (
        "server_version",
        "shared_buffers",
        "work_mem",
        "effective_cache_size",
        "random_page_cost",
        "max_parallel_workers_per_gather",
        "jit",
        "plan_cache_mode",
    ):
        settings[name] = await conn.fetchval(f"SHOW {name}")
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "mem_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "protobuf_backend": api_implementation.Type(),
        "asyncpg": asyncpg.__version__,
        "postgres": settings,
        "git": _git(),
    }


def _git() -> dict[str, Any] | None:
    """The checkout measured: commit and whether it had uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}
