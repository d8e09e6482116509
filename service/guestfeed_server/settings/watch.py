"""Live updates (WatchMessages): how often the hub polls, and the bounds it keeps."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .health import env_seconds_or_zero
from .values import ConfigError, env_float, env_int

DEFAULT_TICK_MS = 100
DEFAULT_HEARTBEAT_S = 15.0
DEFAULT_BUFFER = 1000
DEFAULT_MAX_CATCHUP = 1000
DEFAULT_SAFE_LAG_S = 30.0
DEFAULT_MARGIN_MS = 50


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """GUESTFEED_WATCH_* (docs/watch.md says what each one trades)."""

    # One horizon query and one changes query per tick, for every watcher.
    tick_s: float = DEFAULT_TICK_MS / 1000
    # An empty response at least this often, so idle streams show they live.
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    # Messages queued for one watcher that it has not taken yet; past it the
    # stream ends with UNAVAILABLE (WATCH_BUFFER_FULL), resumable.
    buffer: int = DEFAULT_BUFFER
    # The most messages a resume may catch up on; more is FAILED_PRECONDITION.
    max_catchup: int = DEFAULT_MAX_CATCHUP
    # Without pg_read_all_stats: how far behind now the horizon is held.
    safe_lag_s: float = DEFAULT_SAFE_LAG_S
    # Below statement time, for a writer between taking its start time and
    # publishing it in pg_stat_activity (microseconds in practice).
    margin_s: float = DEFAULT_MARGIN_MS / 1000
    # How often access (removal, tags) and the kill switches are re-read.
    access_s: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WatchSettings:
        """Reads and checks the watch settings.

        Raises:
            ConfigError: a value is not a positive number (the margin may be 0),
                or the heartbeat is not longer than a tick.
        """
        tick_ms = env_int(env, "GUESTFEED_WATCH_TICK_MS", DEFAULT_TICK_MS, lo=10)
        heartbeat = env_float(env, "GUESTFEED_WATCH_HEARTBEAT_S", DEFAULT_HEARTBEAT_S)
        safe_lag = env_float(env, "GUESTFEED_WATCH_SAFE_LAG_S", DEFAULT_SAFE_LAG_S)
        margin_ms = env_seconds_or_zero(env, "GUESTFEED_WATCH_MARGIN_MS", DEFAULT_MARGIN_MS)
        for name, value in (
            ("GUESTFEED_WATCH_HEARTBEAT_S", heartbeat),
            ("GUESTFEED_WATCH_SAFE_LAG_S", safe_lag),
        ):
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number of seconds, got {value}")
        if heartbeat * 1000 <= tick_ms:
            raise ConfigError(
                f"GUESTFEED_WATCH_HEARTBEAT_S ({heartbeat}) must be longer than "
                f"GUESTFEED_WATCH_TICK_MS ({tick_ms} ms)"
            )
        return cls(
            tick_s=tick_ms / 1000,
            heartbeat_s=heartbeat,
            buffer=env_int(env, "GUESTFEED_WATCH_BUFFER", DEFAULT_BUFFER, lo=1),
            max_catchup=env_int(env, "GUESTFEED_WATCH_MAX_CATCHUP", DEFAULT_MAX_CATCHUP, lo=1),
            safe_lag_s=safe_lag,
            margin_s=margin_ms / 1000,
        )
