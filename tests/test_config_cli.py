"""Settings from the environment, and the `guestfeed` console script."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import asyncpg
import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestfeed_server.settings import ConfigError, Settings
from guestfeed_server.storage.migrate import REQUIRED_VERSIONS, first_run

from .cli_helpers import clean_env, run_cli
from .conftest import SECRET

URL = "postgresql://user@db.example:5432/app"


def _env(**overrides: str) -> dict[str, str]:
    """A valid environment (URL + secret), with `overrides` applied."""
    env = {"GUESTFEED_DATABASE_URL": URL, "GUESTFEED_JWT_SECRET": SECRET}
    env.update(overrides)
    return env


def _config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env(env)
    return str(exc.value)


class TestSettingsDefaults:
    def test_unset_environment_means_embedded_defaults(self) -> None:
        """Unset: embedded database, no secret, 127.0.0.1:50051, default pool and timeouts."""
        s = Settings.from_env({})
        assert s.embedded is True
        assert (s.database_url, s.jwt_secret, s.listen) == (None, None, "127.0.0.1:50051")
        assert s.data_dir == Path(".guestfeed")
        assert (s.pool_min_size, s.pool_max_size) == (1, 10)
        assert (
            s.query_timeout_s,
            s.connect_timeout_s,
            s.health_interval_s,
            s.shutdown_grace_s,
        ) == (
            5.0,
            10.0,
            2.0,
            5.0,
        )

    def test_empty_values_count_as_unset(self) -> None:
        """Empty strings fall back to the defaults instead of failing."""
        names = [
            "GUESTFEED_DATABASE_URL",
            "GUESTFEED_JWT_SECRET",
            "GUESTFEED_DB_POOL_MIN",
            "GUESTFEED_DB_POOL_MAX",
            "GUESTFEED_QUERY_TIMEOUT_S",
            "GUESTFEED_CONNECT_TIMEOUT_S",
            "GUESTFEED_HEALTH_INTERVAL_S",
            "GUESTFEED_SHUTDOWN_GRACE_S",
        ]
        assert Settings.from_env(dict.fromkeys(names, "")) == Settings.from_env({})

    def test_valid_values_are_read(self) -> None:
        """Every variable set to a valid value ends up in the settings."""
        s = Settings.from_env(
            _env(
                GUESTFEED_LISTEN="[::1]:6000",
                GUESTFEED_DATA_DIR="/tmp/gf",
                GUESTFEED_DB_POOL_MIN="0",
                GUESTFEED_DB_POOL_MAX="3",
                GUESTFEED_QUERY_TIMEOUT_S="1.5",
                GUESTFEED_CONNECT_TIMEOUT_S="2",
                GUESTFEED_HEALTH_INTERVAL_S="0.25",
                GUESTFEED_SHUTDOWN_GRACE_S="7",
            )
        )
        assert s.embedded is False
        assert (s.database_url, s.jwt_secret, s.listen, s.data_dir) == (
            URL,
            SECRET,
            "[::1]:6000",
            Path("/tmp/gf"),
        )
        assert (s.pool_min_size, s.pool_max_size) == (0, 3)
        assert (
            s.query_timeout_s,
            s.connect_timeout_s,
            s.health_interval_s,
            s.shutdown_grace_s,
        ) == (
            1.5,
            2.0,
            0.25,
            7.0,
        )

    def test_postgres_scheme_alias_is_accepted(self) -> None:
        """postgres:// is accepted as well as postgresql://."""
        assert Settings.from_env(_env(GUESTFEED_DATABASE_URL="postgres://u@h/db")).database_url == (
            "postgres://u@h/db"
        )


class TestSettingsValidation:
    @pytest.mark.parametrize("url", ["mysql://u@h/db", "http://h", "h:5432/db", "postgresql:/x"])
    def test_bad_url_scheme_names_the_url_variable(self, url: str) -> None:
        """A URL that is not postgresql:// fails naming GUESTFEED_DATABASE_URL."""
        assert "GUESTFEED_DATABASE_URL" in _config_error(_env(GUESTFEED_DATABASE_URL=url))

    def test_short_secret_names_the_secret_variable(self) -> None:
        """A secret under 32 bytes fails naming GUESTFEED_JWT_SECRET and the minimum."""
        msg = _config_error(_env(GUESTFEED_JWT_SECRET="x" * 31))
        assert "GUESTFEED_JWT_SECRET" in msg
        assert "32" in msg

    def test_secret_of_exactly_32_bytes_is_accepted(self) -> None:
        """The minimum secret length is inclusive."""
        assert Settings.from_env(_env(GUESTFEED_JWT_SECRET="x" * 32)).jwt_secret == "x" * 32

    def test_short_secret_is_rejected_in_embedded_mode_too(self) -> None:
        """A short secret fails even without a database URL."""
        assert "GUESTFEED_JWT_SECRET" in _config_error({"GUESTFEED_JWT_SECRET": "short"})

    def test_url_without_secret_names_the_secret_variable(self) -> None:
        """A database URL without a JWT secret fails naming GUESTFEED_JWT_SECRET."""
        assert "GUESTFEED_JWT_SECRET" in _config_error({"GUESTFEED_DATABASE_URL": URL})

    def test_pool_min_above_max_names_both(self) -> None:
        """GUESTFEED_DB_POOL_MIN > GUESTFEED_DB_POOL_MAX fails naming both."""
        msg = _config_error(_env(GUESTFEED_DB_POOL_MIN="5", GUESTFEED_DB_POOL_MAX="4"))
        assert "GUESTFEED_DB_POOL_MIN" in msg
        assert "GUESTFEED_DB_POOL_MAX" in msg

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("GUESTFEED_DB_POOL_MAX", "abc"),
            ("GUESTFEED_DB_POOL_MAX", "2.5"),
            ("GUESTFEED_DB_POOL_MAX", "0"),
            ("GUESTFEED_DB_POOL_MIN", "many"),
            ("GUESTFEED_DB_POOL_MIN", "-1"),
        ],
    )
    def test_bad_pool_size_names_the_variable(self, name: str, value: str) -> None:
        """A non-integer or out-of-range pool size fails naming its variable and the value."""
        msg = _config_error(_env(**{name: value}))
        assert name in msg
        assert value in msg

    @given(lo=st.integers(0, 500), hi=st.integers(1, 500))
    @settings(max_examples=25, deadline=None)
    def test_pool_sizes_accepted_exactly_when_min_le_max(self, lo: int, hi: int) -> None:
        """Any min >= 0 and max >= 1 is accepted iff min <= max."""
        env = _env(GUESTFEED_DB_POOL_MIN=str(lo), GUESTFEED_DB_POOL_MAX=str(hi))
        if lo <= hi:
            s = Settings.from_env(env)
            assert (s.pool_min_size, s.pool_max_size) == (lo, hi)
        else:
            assert "GUESTFEED_DB_POOL_MIN" in _config_error(env)

    @pytest.mark.parametrize(
        "listen",
        [
            "50051",
            ":50051",
            "localhost",
            "localhost:",
            "localhost:http",
            "localhost:65536",
            "localhost:-1",
            "[::1]",
        ],
    )
    def test_bad_listen_names_the_variable(self, listen: str) -> None:
        """A listen address without host, or with a bad port, fails naming GUESTFEED_LISTEN."""
        assert "GUESTFEED_LISTEN" in _config_error(_env(GUESTFEED_LISTEN=listen))

    @given(
        host=st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "[::1]", "[::]"]),
        port=st.integers(0, 65535),
    )
    @settings(max_examples=25, deadline=None)
    def test_any_host_and_port_in_range_is_accepted(self, host: str, port: int) -> None:
        """host:port with a port in 0-65535 is accepted as given."""
        assert Settings.from_env(_env(GUESTFEED_LISTEN=f"{host}:{port}")).listen == f"{host}:{port}"

    @pytest.mark.parametrize(
        "name",
        [
            "GUESTFEED_QUERY_TIMEOUT_S",
            "GUESTFEED_CONNECT_TIMEOUT_S",
            "GUESTFEED_HEALTH_INTERVAL_S",
            "GUESTFEED_SHUTDOWN_GRACE_S",
        ],
    )
    @pytest.mark.parametrize("value", ["0", "-1", "-0.5", "nan", "soon"])
    def test_bad_duration_names_the_variable(self, name: str, value: str) -> None:
        """A zero, negative, NaN or non-numeric duration fails naming its variable."""
        assert name in _config_error(_env(**{name: value}))


# --- the console script -------------------------------------------------------------------


class TestTokenCommand:
    async def test_token_is_a_valid_supabase_style_jwt(self, tmp_path: Path) -> None:
        """`token --user U` prints an HS256 JWT: aud and role authenticated, sub U, exp ahead."""
        user = uuid.uuid4()
        code, out, err = await run_cli(
            clean_env(tmp_path, GUESTFEED_JWT_SECRET=SECRET, GUESTFEED_DATABASE_URL=URL),
            "token",
            "--user",
            str(user),
        )
        assert code == 0, err
        token = out.strip()
        assert jwt.get_unverified_header(token)["alg"] == "HS256"
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="authenticated")
        assert claims["sub"] == str(user)
        assert claims["aud"] == "authenticated"
        assert claims["role"] == "authenticated"
        now = time.time()
        assert now < claims["exp"] <= now + 3600 + 5
        assert not (tmp_path / "data").exists()

    async def test_role_and_ttl_options_are_applied(self, tmp_path: Path) -> None:
        """`--role service_role --ttl 60` mints a service_role token expiring in about a minute."""
        user = uuid.uuid4()
        code, out, err = await run_cli(
            clean_env(tmp_path, GUESTFEED_JWT_SECRET=SECRET, GUESTFEED_DATABASE_URL=URL),
            "token",
            "--user",
            str(user),
            "--role",
            "service_role",
            "--ttl",
            "60",
        )
        assert code == 0, err
        claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"], audience="authenticated")
        assert (claims["sub"], claims["role"]) == (str(user), "service_role")
        assert claims["exp"] - claims["iat"] == 60

    async def test_token_is_not_signed_with_another_secret(self, tmp_path: Path) -> None:
        """The token verifies only with the configured secret."""
        code, out, err = await run_cli(
            clean_env(tmp_path, GUESTFEED_JWT_SECRET=SECRET, GUESTFEED_DATABASE_URL=URL),
            "token",
            "--user",
            str(uuid.uuid4()),
        )
        assert code == 0, err
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(
                out.strip(),
                "another-secret-" + "y" * 40,
                algorithms=["HS256"],
                audience="authenticated",
            )

    @pytest.mark.parametrize(
        "args", [["--user", "not-a-uuid"], ["--user", str(uuid.UUID(int=1)), "--role", "anon"]]
    )
    async def test_bad_arguments_exit_with_usage_error(
        self, tmp_path: Path, args: list[str]
    ) -> None:
        """A non-UUID user or an unknown role is a usage error (exit 2) and prints no token."""
        code, out, err = await run_cli(
            clean_env(tmp_path, GUESTFEED_JWT_SECRET=SECRET, GUESTFEED_DATABASE_URL=URL),
            "token",
            *args,
        )
        assert (code, out) == (2, "")
        assert "usage: guestfeed" in err


class TestInvalidConfigStopsStartUp:
    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("GUESTFEED_DB_POOL_MAX", "abc"),
            ("GUESTFEED_LISTEN", "nowhere"),
            ("GUESTFEED_QUERY_TIMEOUT_S", "0"),
            ("GUESTFEED_DATABASE_URL", "mysql://u@h/db"),
            ("GUESTFEED_JWT_SECRET", "short"),
        ],
    )
    async def test_serve_exits_2_naming_the_variable(
        self, tmp_path: Path, name: str, value: str
    ) -> None:
        """`serve` with one bad variable exits 2, names it on stderr, starts nothing."""
        code, out, err = await run_cli(clean_env(tmp_path, **{name: value}), "serve", timeout=20)
        assert code == 2
        assert "configuration error" in err
        assert name in err
        assert out == ""
        # No embedded PostgreSQL was started: the data folder was never created.
        assert not (tmp_path / "data").exists()

    async def test_migrate_with_url_but_no_secret_exits_2(self, tmp_path: Path) -> None:
        """`guestfeed migrate` with a URL and no secret exits 2 naming GUESTFEED_JWT_SECRET."""
        code, _, err = await run_cli(clean_env(tmp_path, GUESTFEED_DATABASE_URL=URL), "migrate")
        assert code == 2
        assert "GUESTFEED_JWT_SECRET" in err


class TestMigrateCommand:
    async def test_migrate_applies_all_then_nothing(self, tmp_path: Path, fresh_db: str) -> None:
        """`migrate` prints every applied version; a second run prints that none was."""
        env = clean_env(tmp_path, GUESTFEED_DATABASE_URL=fresh_db, GUESTFEED_JWT_SECRET=SECRET)
        code, out, err = await run_cli(env, "migrate")
        assert code == 0, err
        assert out.strip() == "applied: " + ", ".join(first_run())
        code, out, err = await run_cli(env, "migrate")
        assert code == 0, err
        assert out.strip() == "applied: nothing (already up to date)"
        conn = await asyncpg.connect(fresh_db)
        try:
            rows = await conn.fetch(
                "SELECT version FROM guestfeed.schema_migrations ORDER BY version"
            )
        finally:
            await conn.close()
        assert [r["version"] for r in rows] == list(REQUIRED_VERSIONS)

    async def test_migrate_refuses_partial_schema_with_exit_3(
        self, tmp_path: Path, fresh_db: str
    ) -> None:
        """`migrate` on some production tables only exits 3, naming the missing ones."""
        conn = await asyncpg.connect(fresh_db)
        try:
            await conn.execute("CREATE TABLE public.users (id uuid PRIMARY KEY)")
        finally:
            await conn.close()
        env = clean_env(tmp_path, GUESTFEED_DATABASE_URL=fresh_db, GUESTFEED_JWT_SECRET=SECRET)
        code, out, err = await run_cli(env, "migrate")
        assert code == 3
        assert "migration refused" in err
        assert "message_deliveries" in err
        assert out == ""
