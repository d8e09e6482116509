"""Configuring a real deployment: keys, page-token secrets, pool modes, clear start-up errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.auth.keyring import keys_for
from guestfeed_server.domain.errors import InvalidArgument
from guestfeed_server.domain.model import Cursor, ReadModel
from guestfeed_server.feed.tokens import PageTokens, TokenScope
from guestfeed_server.settings import ConfigError, PoolMode, Settings
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.testing.procs import spawn_server

from .cli_helpers import clean_env, run_cli
from .conftest import SECRET
from .factory import World
from .jwks_server import ISSUER, JwksServer, user_claims

URL = "postgresql://user@db.example:5432/app"
PAGE_KEY = "page-key-one-" + "1" * 40
PAGE_KEY_2 = "page-key-two-" + "2" * 40


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env(env)
    return str(exc.value)


class TestKeySettings:
    def test_jwks_only_needs_a_page_token_secret(self) -> None:
        """JWKS and no HS256 secret: start-up is refused until page tokens have a key."""
        msg = config_error(
            {"GUESTFEED_DATABASE_URL": URL, "GUESTFEED_JWKS_URL": "https://x.supabase.co/j"}
        )
        assert "GUESTFEED_PAGE_TOKEN_SECRET" in msg and "every replica" in msg

    def test_jwks_issuer_and_page_secret_are_enough(self) -> None:
        """The three variables of a new Supabase project make a valid configuration."""
        s = Settings.from_env(
            {
                "GUESTFEED_DATABASE_URL": URL,
                "GUESTFEED_JWKS_URL": "https://ref.supabase.co/auth/v1/.well-known/jwks.json",
                "GUESTFEED_JWT_ISSUER": "https://ref.supabase.co/auth/v1",
                "GUESTFEED_PAGE_TOKEN_SECRET": f"{PAGE_KEY},{PAGE_KEY_2}",
            }
        )
        assert s.jwt_secret is None
        assert s.jwt_issuer == "https://ref.supabase.co/auth/v1"
        assert s.page_token_secrets == (PAGE_KEY, PAGE_KEY_2)

    def test_a_url_without_any_key_source_names_both_variables(self) -> None:
        """A database URL with neither JWKS nor secret names both ways to fix it."""
        msg = config_error({"GUESTFEED_DATABASE_URL": URL})
        assert "GUESTFEED_JWKS_URL" in msg and "GUESTFEED_JWT_SECRET" in msg

    @pytest.mark.parametrize("url", ["ftp://x/jwks", "jwks.json", "https://", "file:///etc/x"])
    def test_bad_jwks_url_names_the_variable(self, url: str) -> None:
        """Only http(s) URLs with a host are accepted."""
        assert "GUESTFEED_JWKS_URL" in config_error(
            {"GUESTFEED_JWT_SECRET": SECRET, "GUESTFEED_JWKS_URL": url}
        )

    def test_short_page_token_keys_are_refused(self) -> None:
        """Every page-token key must have at least 32 bytes; the message says which."""
        msg = config_error({"GUESTFEED_PAGE_TOKEN_SECRET": f"{PAGE_KEY},short"})
        assert "GUESTFEED_PAGE_TOKEN_SECRET key 2" in msg

    @pytest.mark.parametrize(
        ("name", "value"),
        [("GUESTFEED_DB_POOL_MODE", "statement"), ("GUESTFEED_DIRECT_DATABASE_URL", "mysql://x")],
    )
    def test_bad_pooler_settings_name_the_variable(self, name: str, value: str) -> None:
        """An unknown pool mode or a non-PostgreSQL direct URL is refused by name."""
        assert name in config_error({"GUESTFEED_JWT_SECRET": SECRET, name: value})

    def test_transaction_mode_without_a_direct_url_cannot_listen(self) -> None:
        """Transaction mode alone has no session to LISTEN on; a direct URL gives one back."""
        base = {"GUESTFEED_JWT_SECRET": SECRET, "GUESTFEED_DATABASE_URL": URL}
        s = Settings.from_env({**base, "GUESTFEED_DB_POOL_MODE": "transaction"})
        assert (s.pool_mode, s.can_listen) == (PoolMode.TRANSACTION, False)
        s = Settings.from_env(
            {**base, "GUESTFEED_DB_POOL_MODE": "transaction", "GUESTFEED_DIRECT_DATABASE_URL": URL}
        )
        assert (s.can_listen, s.session_url_variable) == (True, "GUESTFEED_DIRECT_DATABASE_URL")


class TestPageTokenKeys:
    def test_keys_fall_back_to_the_jwt_secret_as_before(self) -> None:
        """Without GUESTFEED_PAGE_TOKEN_SECRET, tokens are keyed from the JWT secret (upgrades
        keep every issued token valid)."""
        s = Settings.from_env({"GUESTFEED_DATABASE_URL": URL, "GUESTFEED_JWT_SECRET": SECRET})
        assert keys_for(s).page_token_keys == (SECRET,)

    def test_embedded_mode_keeps_a_generated_key_in_the_data_folder(self, tmp_path: Path) -> None:
        """Embedded: a page-token key is made once, kept (0600) and reused."""
        s = Settings.from_env({"GUESTFEED_DATA_DIR": str(tmp_path)})
        first = keys_for(s).page_token_keys
        assert first == keys_for(s).page_token_keys
        path = tmp_path / "page_token_secret"
        assert path.read_text().strip() == first[0]
        assert path.stat().st_mode & 0o777 == 0o600

    def test_rotation_accepts_old_tokens_until_the_old_key_is_dropped(self) -> None:
        """A token of key 1 verifies under [key 2, key 1] and fails under [key 2] alone."""
        scope = TokenScope(uuid.uuid4(), uuid.uuid4(), ReadModel.V2)
        cursor = Cursor(datetime(2026, 5, 1, tzinfo=UTC), uuid.uuid4())
        old = PageTokens([PAGE_KEY]).encode(scope, cursor)
        assert PageTokens([PAGE_KEY_2, PAGE_KEY]).open(old).cursor_for(scope) == cursor
        new = PageTokens([PAGE_KEY_2, PAGE_KEY]).encode(scope, cursor)
        assert PageTokens([PAGE_KEY_2]).open(new).cursor_for(scope) == cursor
        with pytest.raises(InvalidArgument):
            PageTokens([PAGE_KEY_2]).open(old)


class TestCredentialsOfTheCommands:
    async def test_token_says_it_needs_the_hs256_secret(self, tmp_path: Path) -> None:
        """`guestfeed token` with only a JWKS exits 2 and says it is an HS256 dev tool."""
        env = clean_env(
            tmp_path,
            GUESTFEED_DATABASE_URL=URL,
            GUESTFEED_JWKS_URL="https://x.supabase.co/auth/v1/.well-known/jwks.json",
            GUESTFEED_PAGE_TOKEN_SECRET=PAGE_KEY,
        )
        code, out, err = await run_cli(env, "token", "--user", str(uuid.uuid4()))
        assert (code, out) == (2, "")
        assert "development tool" in err and "GUESTFEED_JWT_SECRET" in err

    async def test_rollout_without_a_credential_names_the_service_token(
        self, tmp_path: Path
    ) -> None:
        """With only a JWKS, `rollout status` needs --token or GUESTFEED_SERVICE_TOKEN."""
        env = clean_env(
            tmp_path,
            GUESTFEED_DATABASE_URL=URL,
            GUESTFEED_JWKS_URL="https://x.supabase.co/auth/v1/.well-known/jwks.json",
            GUESTFEED_PAGE_TOKEN_SECRET=PAGE_KEY,
        )
        code, _, err = await run_cli(env, "rollout", "status")
        assert code == 2
        assert "GUESTFEED_SERVICE_TOKEN" in err

    async def test_migrate_behind_a_transaction_pooler_needs_the_direct_url(
        self, tmp_path: Path
    ) -> None:
        """migrate takes an advisory lock: transaction mode without a direct URL exits 2."""
        env = clean_env(
            tmp_path,
            GUESTFEED_DATABASE_URL=URL,
            GUESTFEED_JWT_SECRET=SECRET,
            GUESTFEED_DB_POOL_MODE="transaction",
        )
        code, _, err = await run_cli(env, "migrate")
        assert code == 2
        assert "GUESTFEED_DIRECT_DATABASE_URL" in err


@pytest.fixture
def unreachable_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


class TestDatabaseStartUpErrors:
    @pytest.mark.parametrize("command", ["serve", "migrate"])
    @pytest.mark.parametrize(
        ("case", "cause"),
        [
            ("refused", "connection refused"),
            ("unknown_host", "unknown host"),
            ("malformed", "malformed URL"),
            ("no_database", "does not exist"),
            ("no_role", "does not exist"),
        ],
    )
    async def test_one_line_naming_the_variable_and_exit_2(
        self,
        tmp_path: Path,
        server_dsn: str,
        unreachable_port: int,
        command: str,
        case: str,
        cause: str,
    ) -> None:
        """Each connection failure is one stderr line: variable, place, cause; no traceback,
        no password, exit 2."""
        from urllib.parse import urlsplit, urlunsplit

        from guestfeed_server.testing.scratch import with_database

        real = with_database(server_dsn, "guestfeed_no_such_db")
        urls = {
            "refused": f"postgresql://app:s3cretpw@127.0.0.1:{unreachable_port}/app",
            "unknown_host": "postgresql://app:s3cretpw@no-such-host.invalid:5432/app",
            "malformed": "postgresql://app:s3cretpw@127.0.0.1:notaport/app",
            "no_database": real,
            "no_role": urlunsplit(
                urlsplit(real)._replace(
                    netloc="guestfeed_nobody:s3cretpw@" + urlsplit(real).netloc.split("@")[-1],
                    path="/postgres",
                )
            ),
        }
        env = clean_env(
            tmp_path,
            GUESTFEED_DATABASE_URL=urls[case],
            GUESTFEED_JWT_SECRET=SECRET,
            GUESTFEED_CONNECT_TIMEOUT_S="3",
        )
        code, out, err = await run_cli(env, command, timeout=30)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, err
        assert len(lines) == 1, err
        assert "GUESTFEED_DATABASE_URL" in lines[0] and cause in lines[0], lines[0]
        assert "Traceback" not in err and "s3cretpw" not in err
        assert out == ""


@pytest.fixture
def endpoint() -> Iterator[JwksServer]:
    server = JwksServer().start()
    server.add("ES256", "es-1")
    server.add("RS256", "rs-1")
    yield server
    server.stop()


@pytest.fixture
async def migrated(server_dsn: str) -> Iterator[str]:  # type: ignore[misc]
    from guestfeed_server.testing.scratch import scratch_database

    async with scratch_database(server_dsn, "guestfeed_deploy") as (_, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield dsn


class TestNewSupabaseProject:
    async def test_serve_with_only_jwks_issuer_and_page_secret(
        self, tmp_path: Path, migrated: str, endpoint: JwksServer
    ) -> None:
        """`guestfeed serve` with JWKS + issuer + page secret serves ES256 and RS256 users."""
        import asyncpg as pg
        import grpc

        pool = await pg.create_pool(migrated, min_size=1, max_size=2)
        assert pool is not None
        world = World(pool)
        event = await world.event()
        user, guest = await world.member(event)
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=guest, user_id=user)
        env = clean_env(
            tmp_path,
            GUESTFEED_DATABASE_URL=migrated,
            GUESTFEED_JWKS_URL=endpoint.url,
            GUESTFEED_JWT_ISSUER=ISSUER,
            GUESTFEED_PAGE_TOKEN_SECRET=PAGE_KEY,
            GUESTFEED_LISTEN="127.0.0.1:0",
        )
        server = await spawn_server(env)
        try:
            async with grpc.aio.insecure_channel(server.target) as channel:
                stub = feed_pb2_grpc.GuestFeedServiceStub(channel)
                for kid in ("es-1", "rs-1"):
                    token = endpoint.sign(user_claims(user), endpoint.keys[kid])
                    got = await stub.ListMessages(
                        feed_pb2.ListMessagesRequest(event_id=str(event)),
                        metadata=[("authorization", f"Bearer {token}")],
                    )
                    assert [m.message_id for m in got.messages] == [str(mid)]
        finally:
            assert await server.stop() == 0
            await pool.close()

    async def test_an_unreachable_jwks_at_start_up_is_exit_2(
        self, tmp_path: Path, migrated: str, unreachable_port: int
    ) -> None:
        """No keys can be fetched: one line naming GUESTFEED_JWKS_URL, exit 2."""
        env = clean_env(
            tmp_path,
            GUESTFEED_DATABASE_URL=migrated,
            GUESTFEED_JWKS_URL=f"http://127.0.0.1:{unreachable_port}/jwks.json",
            GUESTFEED_PAGE_TOKEN_SECRET=PAGE_KEY,
            GUESTFEED_CONNECT_TIMEOUT_S="1",
        )
        code, _, err = await run_cli(env, "serve", timeout=30)
        lines = [line for line in err.splitlines() if '"level"' not in line and line.strip()]
        assert code == 2, err
        assert len(lines) == 1 and "GUESTFEED_JWKS_URL" in lines[0], err
        assert "Traceback" not in err


class TestDirectUrl:
    async def test_an_unreachable_direct_url_is_exit_2_naming_it(
        self, tmp_path: Path, migrated: str, unreachable_port: int
    ) -> None:
        """A direct URL that refuses connections stops `serve` with one line naming it."""
        env = clean_env(
            tmp_path,
            GUESTFEED_DATABASE_URL=migrated,
            GUESTFEED_JWT_SECRET=SECRET,
            GUESTFEED_DB_POOL_MODE="transaction",
            GUESTFEED_DIRECT_DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{unreachable_port}/db",
        )
        code, _, err = await run_cli(env, "serve", timeout=30)
        lines = [line for line in err.splitlines() if '"level"' not in line and line.strip()]
        assert code == 2, err
        assert len(lines) == 1 and "GUESTFEED_DIRECT_DATABASE_URL" in lines[0], err
        assert "connection refused" in lines[0]
