"""What one caller may make the service do at once, and the pool's share for bulk work."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .values import ConfigError, env_int

DEFAULT_STREAMS_PER_CALLER = 8
DEFAULT_STREAMS_PER_CALLER_EVENT = 4


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """GUESTFEED_MAX_STREAMS_PER_CALLER, _PER_CALLER_EVENT and GUESTFEED_DB_BULK_SHARE."""

    # Concurrent StreamMessages calls one caller may hold, in all and per event.
    streams_per_caller: int = DEFAULT_STREAMS_PER_CALLER
    streams_per_caller_event: int = DEFAULT_STREAMS_PER_CALLER_EVENT
    # Connections that bulk work (stream reads, shadow reads, comparisons) may
    # hold at once; None: a third of the pool, at least one.
    bulk_share: int | None = None

    def db_bulk_share(self, pool_max: int) -> int:
        """The bulk lane's connections for a pool of `pool_max`."""
        if self.bulk_share is not None:
            return min(self.bulk_share, pool_max)
        return max(1, pool_max // 3)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LimitSettings:
        """Reads and checks the limits.

        Raises:
            ConfigError: a limit is not a whole number of at least 1, or the
                per-event limit exceeds the per-caller one.
        """
        per_caller = env_int(
            env, "GUESTFEED_MAX_STREAMS_PER_CALLER", DEFAULT_STREAMS_PER_CALLER, lo=1
        )
        per_event = env_int(
            env, "GUESTFEED_MAX_STREAMS_PER_CALLER_EVENT", DEFAULT_STREAMS_PER_CALLER_EVENT, lo=1
        )
        if per_event > per_caller:
            raise ConfigError(
                f"GUESTFEED_MAX_STREAMS_PER_CALLER_EVENT ({per_event}) must not exceed "
                f"GUESTFEED_MAX_STREAMS_PER_CALLER ({per_caller})"
            )
        share = env_int(env, "GUESTFEED_DB_BULK_SHARE", 0, lo=0) or None
        return cls(per_caller, per_event, share)
