"""Read replicas: where feed pages may be read, and how stale a replica may be."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .values import ConfigError, env_int

DEFAULT_MAX_LAG_MS = 1000
DEFAULT_HEARTBEAT_MS = 500


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """GUESTFEED_REPLICA_DATABASE_URLS, _MAX_LAG_MS, _HEARTBEAT_MS and _POOL_MAX.

    No URLs (the default): every read goes to GUESTFEED_DATABASE_URL, as before.
    """

    # Streaming replicas of the primary (GUESTFEED_DATABASE_URL), in order.
    urls: tuple[str, ...] = ()
    # A replica further behind the primary than this gets no reads.
    max_lag_s: float = DEFAULT_MAX_LAG_MS / 1000
    # How often the elected writer updates guestfeed.heartbeat on the primary.
    heartbeat_s: float = DEFAULT_HEARTBEAT_MS / 1000
    # Connections per replica; None: GUESTFEED_DB_POOL_MAX.
    pool_max: int | None = None

    @property
    def enabled(self) -> bool:
        """Whether any replica is configured."""
        return bool(self.urls)

    @property
    def check_s(self) -> float:
        """How often each replica's heartbeat is read back: twice per beat, so a
        healthy replica's measured lag stays near one beat, well under the bound."""
        return self.heartbeat_s / 2

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReplicaSettings:
        """Reads and checks the replica settings (`env` has _FILE secrets read in).

        Raises:
            ConfigError: a URL is not postgresql://, there is no primary URL
                (embedded mode has no replicas), or the lag bound is not longer
                than two heartbeats (a healthy replica would then flap in and out).
        """
        raw = env.get("GUESTFEED_REPLICA_DATABASE_URLS") or ""
        urls = tuple(u.strip() for u in raw.split(",") if u.strip())
        for i, url in enumerate(urls):
            if not url.startswith(("postgres://", "postgresql://")):
                # By position: the value may hold a password.
                raise ConfigError(
                    f"GUESTFEED_REPLICA_DATABASE_URLS entry {i + 1} must be a postgresql:// URL"
                )
        if urls and not env.get("GUESTFEED_DATABASE_URL"):
            raise ConfigError(
                "GUESTFEED_REPLICA_DATABASE_URLS needs GUESTFEED_DATABASE_URL: replicas "
                "follow a primary, and the embedded PostgreSQL has none"
            )
        max_lag_ms = env_int(env, "GUESTFEED_REPLICA_MAX_LAG_MS", DEFAULT_MAX_LAG_MS, lo=1)
        heartbeat_ms = env_int(env, "GUESTFEED_REPLICA_HEARTBEAT_MS", DEFAULT_HEARTBEAT_MS, lo=50)
        if max_lag_ms < 2 * heartbeat_ms:
            raise ConfigError(
                f"GUESTFEED_REPLICA_MAX_LAG_MS ({max_lag_ms}) must be at least twice "
                f"GUESTFEED_REPLICA_HEARTBEAT_MS ({heartbeat_ms}): lag is measured in heartbeats, "
                "so a caught-up replica already looks up to one and a half heartbeats behind"
            )
        pool_max = env_int(env, "GUESTFEED_REPLICA_POOL_MAX", 0, lo=0) or None
        return cls(urls, max_lag_ms / 1000, heartbeat_ms / 1000, pool_max)
