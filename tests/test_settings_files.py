"""Secrets from files (GUESTFEED_*_FILE) and the maximum connection age.

A Kubernetes Secret volume or a Docker secret puts a value in a file; the
secret settings take `VAR_FILE=/path` as well as `VAR=value`. Start-up refuses
both at once, a file it cannot read, and an empty one, naming the variable and
the path, never the contents. GUESTFEED_MAX_CONNECTION_AGE_S and _GRACE_S
become gRPC core's max_connection_age options: a client's connection is ended
by GOAWAY once it is that old, so clients spread over new replicas.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import jwt
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guestfeed_server.api import server as api_server
from guestfeed_server.api.server import connection_options
from guestfeed_server.settings import ConfigError, Settings
from guestfeed_server.settings.values import SECRET_SETTINGS, env_or_file

from .cli_helpers import clean_env, run_cli
from .conftest import SECRET

URL = "postgresql://reader:pa55word@db.example:5432/app"
PAGE_KEY = "page-key-" + "p" * 40
SERVICE_KEY = "service-role-key-" + "s" * 40


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env(env)
    return str(exc.value)


class TestEnvOrFile:
    @pytest.mark.parametrize(
        ("content", "want"),
        [
            ("value", "value"),
            ("value\n", "value"),
            ("value\r\n", "value"),
            # One line ending only: whatever else is in the file is the value.
            ("value\n\n", "value\n"),
            (" value \n", " value "),
            ("a,b\n", "a,b"),
        ],
    )
    def test_reads_the_file_and_drops_one_line_ending(
        self, tmp_path: Path, content: str, want: str
    ) -> None:
        """`echo value > file` and `printf value > file` give the same value."""
        path = write(tmp_path, "v", content.encode())
        assert env_or_file({"GUESTFEED_X_FILE": str(path)}, "GUESTFEED_X") == want

    def test_the_variable_itself_still_works(self) -> None:
        """Without _FILE nothing changes; empty counts as unset, as before."""
        assert env_or_file({"GUESTFEED_X": "v"}, "GUESTFEED_X") == "v"
        assert env_or_file({"GUESTFEED_X": ""}, "GUESTFEED_X") is None
        assert env_or_file({"GUESTFEED_X": "", "GUESTFEED_X_FILE": ""}, "GUESTFEED_X") is None

    def test_both_set_is_refused(self, tmp_path: Path) -> None:
        """Which one would win is a guess: refuse, naming both."""
        path = write(tmp_path, "v", "from-file")
        with pytest.raises(ConfigError) as exc:
            env_or_file({"GUESTFEED_X": "v", "GUESTFEED_X_FILE": str(path)}, "GUESTFEED_X")
        assert "GUESTFEED_X and GUESTFEED_X_FILE are both set" in str(exc.value)

    def test_a_missing_file_names_the_variable_and_path(self, tmp_path: Path) -> None:
        missing = tmp_path / "nope"
        with pytest.raises(ConfigError) as exc:
            env_or_file({"GUESTFEED_X_FILE": str(missing)}, "GUESTFEED_X")
        assert str(exc.value).startswith(f"GUESTFEED_X_FILE: cannot read {missing}")

    def test_a_directory_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="GUESTFEED_X_FILE: cannot read"):
            env_or_file({"GUESTFEED_X_FILE": str(tmp_path)}, "GUESTFEED_X")

    def test_an_unreadable_file_is_refused(self, tmp_path: Path) -> None:
        if os.geteuid() == 0:
            pytest.skip("running as root, which reads a mode-000 file all the same")
        path = write(tmp_path, "v", "secret")
        path.chmod(0)
        with pytest.raises(ConfigError, match=r"GUESTFEED_X_FILE: cannot read .*Permission denied"):
            env_or_file({"GUESTFEED_X_FILE": str(path)}, "GUESTFEED_X")

    @pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
    def test_an_empty_file_is_refused(self, tmp_path: Path, content: bytes) -> None:
        """A file named on purpose but empty is a mistake, not "unset"."""
        path = write(tmp_path, "v", content)
        with pytest.raises(ConfigError, match=r"GUESTFEED_X_FILE: .* is empty"):
            env_or_file({"GUESTFEED_X_FILE": str(path)}, "GUESTFEED_X")

    def test_binary_and_huge_files_are_refused(self, tmp_path: Path) -> None:
        """A wrong path (a key in DER, a log) fails clearly instead of becoming the value."""
        binary = write(tmp_path, "der", b"\x30\x82\xff\xfe")
        with pytest.raises(ConfigError, match="not UTF-8 text"):
            env_or_file({"GUESTFEED_X_FILE": str(binary)}, "GUESTFEED_X")
        huge = write(tmp_path, "log", b"x" * (1 << 20))
        with pytest.raises(ConfigError, match="larger than"):
            env_or_file({"GUESTFEED_X_FILE": str(huge)}, "GUESTFEED_X")


class TestSecretSettingsFromFiles:
    def test_the_secret_settings_have_file_variants(self) -> None:
        assert set(SECRET_SETTINGS) == {
            "GUESTFEED_DATABASE_URL",
            "GUESTFEED_DIRECT_DATABASE_URL",
            "GUESTFEED_REPLICA_DATABASE_URLS",
            "GUESTFEED_JWT_SECRET",
            "GUESTFEED_PAGE_TOKEN_SECRET",
            "GUESTFEED_SERVICE_TOKEN",
        }

    def test_files_give_the_same_settings_as_values(self, tmp_path: Path) -> None:
        """Every secret from a file (as a Secret volume mounts them) gives the
        Settings the same values would."""
        values = {
            "GUESTFEED_DATABASE_URL": URL,
            "GUESTFEED_DIRECT_DATABASE_URL": URL.replace("db.example", "direct.example"),
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_PAGE_TOKEN_SECRET": f"{PAGE_KEY},{PAGE_KEY[::-1]}",
            "GUESTFEED_SERVICE_TOKEN": SERVICE_KEY,
        }
        files = {
            f"{name}_FILE": str(write(tmp_path, name.lower(), value + "\n"))
            for name, value in values.items()
        }
        from_values = Settings.from_env(values)
        from_files = Settings.from_env(files)
        assert from_files.database_url == URL
        assert from_files.direct_database_url == values["GUESTFEED_DIRECT_DATABASE_URL"]
        assert from_files.jwt_secret == SECRET
        assert from_files.page_token_secrets == (PAGE_KEY, PAGE_KEY[::-1])
        assert from_files.service_token == SERVICE_KEY
        for field in (
            "database_url",
            "direct_database_url",
            "jwt_secret",
            "page_token_secrets",
            "service_token",
        ):
            assert getattr(from_files, field) == getattr(from_values, field), field

    @pytest.mark.parametrize("name", SECRET_SETTINGS)
    def test_both_set_stops_start_up(self, tmp_path: Path, name: str) -> None:
        env = {name: "x" * 40, f"{name}_FILE": str(write(tmp_path, "v", "y" * 40))}
        assert f"{name} and {name}_FILE are both set" in config_error(env)

    def test_the_file_values_are_checked_like_the_values(self, tmp_path: Path) -> None:
        """A short JWT secret from a file is refused as from the variable."""
        path = write(tmp_path, "jwt", "short\n")
        assert "GUESTFEED_JWT_SECRET must be at least" in config_error(
            {"GUESTFEED_JWT_SECRET_FILE": str(path)}
        )

    def test_errors_never_show_the_file_contents(self, tmp_path: Path) -> None:
        """A URL from a file that is not postgresql:// is refused without its password."""
        path = write(tmp_path, "url", "mysql://root:hunter2@db.example/app\n")
        msg = config_error(
            {"GUESTFEED_DATABASE_URL_FILE": str(path), "GUESTFEED_JWT_SECRET": SECRET}
        )
        assert "GUESTFEED_DATABASE_URL" in msg
        assert "hunter2" not in msg

    def test_other_settings_are_untouched(self, tmp_path: Path) -> None:
        """_FILE is read for the secret settings only; GUESTFEED_LISTEN_FILE means nothing."""
        path = write(tmp_path, "listen", "0.0.0.0:1\n")
        assert Settings.from_env({"GUESTFEED_LISTEN_FILE": str(path)}).listen == "127.0.0.1:50051"

    async def test_the_cli_reads_the_secret_from_a_file(self, tmp_path: Path) -> None:
        """`guestfeed token` with GUESTFEED_JWT_SECRET_FILE signs with the file's secret."""
        path = write(tmp_path, "jwt-secret", SECRET + "\n")
        user = uuid.uuid4()
        env = clean_env(tmp_path, GUESTFEED_JWT_SECRET_FILE=str(path))
        code, out, err = await run_cli(env, "token", "--user", str(user))
        assert code == 0, err
        claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"], audience="authenticated")
        assert claims["sub"] == str(user)

    async def test_the_cli_names_an_unreadable_file(self, tmp_path: Path) -> None:
        """One line, exit 2, naming the variable: what a crash-looping pod's log shows."""
        missing = tmp_path / "secrets" / "database-url"
        env = clean_env(tmp_path, GUESTFEED_DATABASE_URL_FILE=str(missing))
        code, _, err = await run_cli(env, "migrate")
        assert code == 2
        assert err.strip() == (
            f"guestfeed: configuration error: GUESTFEED_DATABASE_URL_FILE: cannot read "
            f"{missing}: No such file or directory"
        )


class TestConnectionAgeSettings:
    def test_unset_is_no_limit(self) -> None:
        s = Settings.from_env({})
        assert s.max_connection_age_s is None and s.max_connection_age_grace_s is None
        assert connection_options(None, None) == []

    def test_seconds_are_read(self) -> None:
        s = Settings.from_env(
            {
                "GUESTFEED_MAX_CONNECTION_AGE_S": "300",
                "GUESTFEED_MAX_CONNECTION_AGE_GRACE_S": "2.5",
            }
        )
        assert (s.max_connection_age_s, s.max_connection_age_grace_s) == (300.0, 2.5)
        assert connection_options(s.max_connection_age_s, s.max_connection_age_grace_s) == [
            ("grpc.max_connection_age_ms", 300_000),
            ("grpc.max_connection_age_grace_ms", 2_500),
        ]

    def test_age_without_grace_leaves_calls_unbounded(self) -> None:
        s = Settings.from_env({"GUESTFEED_MAX_CONNECTION_AGE_S": "60"})
        assert s.max_connection_age_grace_s is None
        assert connection_options(60.0) == [("grpc.max_connection_age_ms", 60_000)]

    def test_grace_needs_an_age(self) -> None:
        msg = config_error({"GUESTFEED_MAX_CONNECTION_AGE_GRACE_S": "30"})
        assert "GUESTFEED_MAX_CONNECTION_AGE_GRACE_S needs GUESTFEED_MAX_CONNECTION_AGE_S" in msg

    @pytest.mark.parametrize(
        "name", ["GUESTFEED_MAX_CONNECTION_AGE_S", "GUESTFEED_MAX_CONNECTION_AGE_GRACE_S"]
    )
    @pytest.mark.parametrize("raw", ["0", "-5", "nan", "inf", "soon", "2147484"])
    def test_bad_values_name_the_variable(self, name: str, raw: str) -> None:
        env = {"GUESTFEED_MAX_CONNECTION_AGE_S": "300", name: raw}
        msg = config_error(env)
        assert name in msg and "seconds > 0" in msg

    async def test_build_server_passes_the_options(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """What build_server hands grpc.aio.server: the options of the settings."""
        seen: dict[str, Any] = {}
        real = grpc.aio.server

        def spy(*args: Any, **kwargs: Any) -> grpc.aio.Server:
            seen.update(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(api_server.grpc.aio, "server", spy)
        params = inspect.signature(api_server.build_server).parameters
        required = {
            name: mock.MagicMock()
            for name, p in params.items()
            if p.default is inspect.Parameter.empty
        }
        api_server.build_server(
            **required, max_connection_age_s=120.0, max_connection_age_grace_s=10.0
        )
        options = dict(seen["options"])
        assert options["grpc.max_connection_age_ms"] == 120_000
        assert options["grpc.max_connection_age_grace_ms"] == 10_000


async def _health_server(options: list[tuple[str, int]]) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=options)
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _left_ready_within(channel: grpc.aio.Channel, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while channel.get_state() == grpc.ChannelConnectivity.READY:
                await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
    except TimeoutError:
        return False
    return True


class TestConnectionAgeOnTheWire:
    """gRPC ignores option names it does not know: these show core acts on ours."""

    async def test_an_old_connection_is_closed_and_the_client_reconnects(self) -> None:
        """After the age the server sends GOAWAY: the channel leaves READY, and the
        next call opens a new connection (where a Service may route it elsewhere)."""
        server, port = await _health_server(connection_options(1.0, 0.5))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                assert await _left_ready_within(channel, 5), "no GOAWAY after the max age"
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                assert response.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop(0)

    async def test_without_a_limit_the_connection_stays(self) -> None:
        """The control: no options, the same connection after the same wait."""
        server, port = await _health_server(connection_options(None))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                assert not await _left_ready_within(channel, 1.5)
        finally:
            await server.stop(0)

    async def test_the_grace_bounds_a_stream_on_an_old_connection(self) -> None:
        """A stream still open at age + grace ends UNAVAILABLE (a resumable end:
        the client reopens it from its last page token)."""
        server, port = await _health_server(connection_options(0.5, 0.5))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    async with asyncio.timeout(5):
                        async for _ in call:
                            pass
                assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() - started < 4
        finally:
            await server.stop(0)
