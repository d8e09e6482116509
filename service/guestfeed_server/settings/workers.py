"""GUESTFEED_WORKERS: how many serving processes `guestfeed serve` runs on one port.

Only `serve` reads it. With 1 (the default) nothing changes: the process
serves by itself. With more, it becomes a parent that serves nothing and
runs that many worker processes (`cli/supervisor.py`), each a whole replica
with its own pool, all listening on the one port with SO_REUSEPORT.

The parent tells each worker who it is through the `_WORKER_*` variables
below; they are internal (the parent sets them, nothing else should).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .values import ConfigError

WORKERS = "GUESTFEED_WORKERS"
# Set by the parent in each worker's environment only.
WORKER_INDEX = "GUESTFEED_WORKER_INDEX"
# The pipe the worker writes one byte to once it serves (the parent logs
# "serving on" once all have): the parent never reads the workers' logs.
WORKER_READY_FD = "GUESTFEED_WORKER_READY_FD"
# The pipe whose other end only the parent holds: end of file there means the
# parent is gone (even killed by SIGKILL), and the worker shuts down.
WORKER_LIFELINE_FD = "GUESTFEED_WORKER_LIFELINE_FD"


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What a worker process was told by its parent."""

    index: int
    ready_fd: int
    lifeline_fd: int


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """GUESTFEED_WORKERS resolved, and whether this process is one of the workers."""

    count: int = 1
    # None: not a worker (a single process, or the parent).
    role: WorkerRole | None = None

    @property
    def supervise(self) -> bool:
        """True for the process that must start workers instead of serving itself."""
        return self.count > 1 and self.role is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Reads GUESTFEED_WORKERS (a whole number >= 1, or `auto`) and the worker marker.

        Raises:
            ConfigError: the value is not understood; the message names the variable.
        """
        env = os.environ if env is None else env
        return cls(count=worker_count(env), role=_role(env))


def worker_count(env: Mapping[str, str]) -> int:
    """GUESTFEED_WORKERS: unset or empty is 1; `auto` is the machine's CPU count.

    Raises:
        ConfigError: neither `auto` nor a whole number >= 1.
    """
    raw = (env.get(WORKERS) or "").strip().lower()
    if not raw:
        return 1
    if raw == "auto":
        # os.cpu_count() is the host's, not a container's CPU limit: under a
        # limit, set the number instead (README, "Every core").
        return os.cpu_count() or 1
    try:
        count = int(raw)
    except ValueError:
        raise ConfigError(
            f"{WORKERS} must be a whole number >= 1 or auto (one per CPU), got {raw!r}"
        ) from None
    if count < 1:
        raise ConfigError(f"{WORKERS} must be >= 1 (or auto), got {count}")
    return count


def _role(env: Mapping[str, str]) -> WorkerRole | None:
    raw = env.get(WORKER_INDEX)
    if raw is None:
        return None
    try:
        return WorkerRole(int(raw), int(env[WORKER_READY_FD]), int(env[WORKER_LIFELINE_FD]))
    except (KeyError, ValueError):
        raise ConfigError(
            f"{WORKER_INDEX} is set by `guestfeed serve` for its workers only; unset it"
        ) from None
