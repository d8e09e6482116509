"""Running the `guestfeed` console script as a user would, and a database for it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .conftest import scratch_database

ROOT = Path(__file__).resolve().parent.parent
GUESTFEED = ROOT / ".venv" / "bin" / "guestfeed"


def clean_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The process environment without any GUESTFEED_* variable, plus `overrides`.

    GUESTFEED_DATA_DIR points into tmp_path so a mistaken embedded start would
    never touch the repo's .guestfeed/ (and the tests can see it happened).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUESTFEED_")}
    env["GUESTFEED_DATA_DIR"] = str(tmp_path / "data")
    env.update(overrides)
    return env


async def run_cli(env: dict[str, str], *args: str, timeout: float = 30) -> tuple[int, str, str]:
    """Runs the console script without blocking the event loop (servers share it)."""
    if not GUESTFEED.exists():
        pytest.skip(".venv/bin/guestfeed is not installed")
    proc = await asyncio.create_subprocess_exec(
        str(GUESTFEED),
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"guestfeed {' '.join(args)} did not exit within {timeout}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def fresh_db(server_dsn: str) -> AsyncIterator[str]:
    """An empty database of its own, dropped WITH (FORCE) afterwards."""
    async with scratch_database(server_dsn, "guestfeed_cli") as (_, dsn):
        yield dsn
