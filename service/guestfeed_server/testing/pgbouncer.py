"""A real PgBouncer (Debian's package) in front of a PostgreSQL server.

Tests and the benchmark start one in session or transaction mode. In
transaction mode its server pool can be kept smaller than the service's
client pool, so clients really do share server connections between
transactions: anything that relies on session state breaks there as it
would behind Supavisor.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)

MISSING = "pgbouncer is not installed (Debian package 'pgbouncer'; .ci/run installs it)"


@dataclass
class Bouncer:
    """A running PgBouncer and how to reach a database through it."""

    port: int
    mode: str
    log: Path

    def dsn(self, direct_dsn: str) -> str:
        """`direct_dsn`'s database, reached through this PgBouncer."""
        parts = urlsplit(direct_dsn)
        return urlunsplit(
            ("postgresql", f"postgres@127.0.0.1:{self.port}", parts.path or "/postgres", "", "")
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_address(server_dsn: str) -> tuple[str, int, str]:
    """host (or socket folder), port, user of the PostgreSQL behind `server_dsn`."""
    parts = urlsplit(server_dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    return host, parts.port or 5432, parts.username or "postgres"


@contextlib.contextmanager
def running_pgbouncer(server_dsn: str, mode: str, *, server_pool: int = 3) -> Iterator[Bouncer]:
    """PgBouncer in `mode` (session or transaction) in front of `server_dsn`'s server."""
    assert PGBOUNCER is not None
    host, port, user = _server_address(server_dsn)
    listen = _free_port()
    with tempfile.TemporaryDirectory(prefix="guestfeed-pgbouncer-") as tmp:
        folder = Path(tmp)
        log = folder / "pgbouncer.log"
        ini = folder / "pgbouncer.ini"
        ini.write_text(
            f"""[databases]
* = host={host} port={port} user={user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = any
pool_mode = {mode}
default_pool_size = {server_pool}
max_client_conn = 500
logfile = {log}
pidfile = {folder / "pgbouncer.pid"}
"""
        )
        command = [PGBOUNCER, str(ini)]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root. Run it as whoever may reach the
            # server: the embedded server's socket folder is its owner's only.
            owner = Path(host).stat().st_uid if host.startswith("/") else None
            name = pwd.getpwuid(owner).pw_name if owner else "nobody"
            os.chmod(folder, 0o777)
            log.touch()
            os.chmod(log, 0o666)
            command += ["-u", name]
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        try:
            _wait_listening(listen, proc, log)
            yield Bouncer(port=listen, mode=mode, log=log)
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"pgbouncer exited: {err}\n{log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("pgbouncer did not start listening:\n" + log.read_text())
