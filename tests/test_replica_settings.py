"""GUESTFEED_REPLICA_*: read, checked, and refused by name (no database needed)."""

from __future__ import annotations

import pytest

from guestfeed_server.settings import ConfigError, Settings

from .conftest import SECRET


def env(**extra: str) -> dict[str, str]:
    return {"GUESTFEED_JWT_SECRET": SECRET, "GUESTFEED_DATABASE_URL": "postgresql://p/db", **extra}


class TestSettings:
    def test_defaults_and_the_list(self) -> None:
        """Off by default; a comma-separated list; 1000 ms bound and 500 ms beats."""
        assert not Settings.from_env(env()).replicas.enabled
        cfg = Settings.from_env(
            env(GUESTFEED_REPLICA_DATABASE_URLS=" postgresql://a/db , postgres://b/db ,")
        ).replicas
        assert cfg.urls == ("postgresql://a/db", "postgres://b/db")
        assert (cfg.max_lag_s, cfg.heartbeat_s, cfg.pool_max) == (1.0, 0.5, None)

    @pytest.mark.parametrize(
        ("extra", "says"),
        [
            ({"GUESTFEED_REPLICA_DATABASE_URLS": "postgresql://a/db,mysql://u:pw@b/db"}, "entry 2"),
            ({"GUESTFEED_REPLICA_MAX_LAG_MS": "900"}, "at least twice"),
            ({"GUESTFEED_REPLICA_HEARTBEAT_MS": "10"}, "GUESTFEED_REPLICA_HEARTBEAT_MS"),
            ({"GUESTFEED_REPLICA_POOL_MAX": "-1"}, "GUESTFEED_REPLICA_POOL_MAX"),
        ],
    )
    def test_bad_values_are_refused_by_name(self, extra: dict[str, str], says: str) -> None:
        """A bad value names its variable (never a URL's password)."""
        with pytest.raises(ConfigError, match=says) as caught:
            Settings.from_env(
                env(**{"GUESTFEED_REPLICA_DATABASE_URLS": "postgresql://a/db", **extra})
            )
        assert "pw" not in str(caught.value)

    def test_replicas_need_a_primary_url(self) -> None:
        """The embedded PostgreSQL has no replicas."""
        bare = {"GUESTFEED_REPLICA_DATABASE_URLS": "postgresql://a/db"}
        with pytest.raises(ConfigError, match="needs GUESTFEED_DATABASE_URL"):
            Settings.from_env(bare)
