"""`guestfeed serve` with GUESTFEED_WORKERS > 1: the parent's start-up, and each worker's side.

The parent serves nothing and opens no pool. Before any worker starts it does
what must happen once per host: it takes the port (port 0 included, so every
worker binds the same one), starts the embedded PostgreSQL and makes its
secrets, migrates (embedded or --demo, as a single process would), and opens
the merged /metrics. Then `supervisor.Supervisor` runs the workers; once all
serve, it logs "guestfeed serving on" once, with the real port.

Each worker is `guestfeed serve` again, told its index by the parent: a whole
replica (its own pool, rollout listener, health, guard, watch hub) whose
gRPC server binds the shared port with SO_REUSEPORT, so the kernel spreads
new connections over the workers. A connection stays on its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from ..app import App
from ..auth.keyring import Keys, keys_for
from ..settings import ConfigError, Settings, StartupError, parse_listen
from ..settings.workers import WorkerRole
from ..storage.connect import connect
from ..storage.embedded import start_embedded
from ..storage.migrate import APPLICATION_NAME as MIGRATE_APPLICATION_NAME
from ..storage.migrate import migrate
from ..telemetry import untraced
from ..telemetry.workers import serve_merged, worker_metrics_port
from .supervisor import Supervisor, WorkerPlan

log = logging.getLogger("guestfeed")

# On SIGTERM the workers get drain + grace + this to exit, before SIGKILL:
# closing the pool and flushing telemetry come after the grace period.
STOP_MARGIN_S = 10.0

# (dsn, keys, settings, address): seeds the demo event and prints its banner.
DemoHook = Callable[[str, Keys, Settings, str], Awaitable[None]]


# --- the parent ------------------------------------------------------------------


def run_parent(settings: Settings, count: int, *, demo: DemoHook | None) -> int:
    """Runs `count` workers until SIGTERM/SIGINT; returns the exit code."""
    return asyncio.run(_parent(settings, count, demo))


async def _parent(settings: Settings, count: int, demo: DemoHook | None) -> int:
    metrics_base = settings.telemetry.prometheus_port
    metrics_ports = (
        [worker_metrics_port(metrics_base, i) for i in range(count)] if metrics_base else []
    )
    if metrics_ports and metrics_ports[-1] > 65535:
        raise ConfigError(
            f"GUESTFEED_PROMETHEUS_PORT + GUESTFEED_WORKERS must be <= 65535: worker i serves "
            f"its own metrics on GUESTFEED_PROMETHEUS_PORT + 1 + i, got {metrics_ports[-1]}"
        )
    host, _ = parse_listen(settings.listen)
    held, port = reserve_port(settings.listen)
    address = f"{host}:{port}"
    scrape: Any = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            shared = {"GUESTFEED_LISTEN": address}
            dsn = settings.database_url
            if dsn is None:
                # One embedded server for every worker: each would otherwise
                # start (or join) one of its own on the same data folder.
                embedded = await asyncio.to_thread(start_embedded, settings.data_dir)
                stack.callback(embedded.stop)
                dsn = embedded.dsn
                shared["GUESTFEED_DATABASE_URL"] = dsn
            # Embedded mode makes its secrets in the data folder: here, once,
            # before any worker could race to create the same file.
            keys = keys_for(settings)
            if settings.embedded:
                shared.update(_secret_files(settings))
            if settings.embedded or demo is not None:
                # Once, here, under migrate's advisory lock, before any worker
                # checks the schema; the workers never migrate.
                await _migrate(settings.direct_database_url or dsn, settings)
            plan = WorkerPlan(
                count=count,
                argv=(sys.executable, "-m", "guestfeed_server.cli", "serve"),
                env=lambda i: _worker_env(shared, metrics_ports, i),
                stop_timeout_s=settings.shutdown_drain_s
                + settings.shutdown_grace_s
                + STOP_MARGIN_S,
            )
            supervisor = Supervisor(plan)
            if metrics_base:
                scrape = serve_merged(
                    metrics_base,
                    settings.telemetry.prometheus_addr,
                    metrics_ports,
                    supervisor.restarts,
                )

            async def on_ready() -> None:
                log.info(
                    "guestfeed serving on %s (database: %s; %d workers, pids %s)",
                    address,
                    "embedded" if settings.embedded else "GUESTFEED_DATABASE_URL",
                    count,
                    ", ".join(str(p) for p in supervisor.pids().values()),
                )
                if demo is not None:
                    await demo(dsn, keys, settings, address)

            return await supervisor.run(on_ready)
    finally:
        if scrape is not None:
            scrape.shutdown()
            scrape.server_close()
        for s in held:
            s.close()


def reserve_port(listen: str) -> tuple[list[socket.socket], int]:
    """Binds GUESTFEED_LISTEN's address(es) with SO_REUSEPORT, without listening, and
    returns the sockets (keep them open) and the port (the OS's choice for port 0).

    Held by the parent, the port stays ours while workers start and restart:
    only sockets with SO_REUSEPORT of the same user may bind it too, and a
    socket that does not listen is never given a connection.

    Raises:
        StartupError: the address cannot be bound, or another process holds the port.
    """
    host, port = parse_listen(listen)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    failure = StartupError(
        f"GUESTFEED_LISTEN: cannot listen on {listen} (in use, or not this host's)"
    )
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise failure from None
    held: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, _, _, _, sockaddr in infos:
            if (family, str(sockaddr[0])) in seen:
                continue
            seen.add((family, str(sockaddr[0])))
            where = (sockaddr[0], port, *sockaddr[2:])
            if port:
                # A plain bind first: it fails when any other process holds the
                # port, even a server that shares it by SO_REUSEPORT.
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(where)
            sock = socket.socket(family, socket.SOCK_STREAM)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(where)
            port = sock.getsockname()[1]
    except OSError:
        for sock in held:
            sock.close()
        raise failure from None
    return held, port


def _worker_env(shared: Mapping[str, str], metrics_ports: list[int], index: int) -> dict[str, str]:
    env = dict(shared)
    if metrics_ports:
        # Loopback only: the parent's merged endpoint is the one to scrape.
        env["GUESTFEED_PROMETHEUS_PORT"] = str(metrics_ports[index])
        env["GUESTFEED_PROMETHEUS_ADDR"] = "127.0.0.1"
    # OTLP: one resource per worker, or their cumulative series would be
    # reported as one and collide (the SDK reads OTEL_RESOURCE_ATTRIBUTES).
    attributes = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").strip().strip(",")
    extra = [f"guestfeed.worker={index}"]
    if "service.instance.id=" not in attributes:
        extra.append(f"service.instance.id={socket.gethostname()}/worker-{index}")
    env["OTEL_RESOURCE_ATTRIBUTES"] = ",".join(filter(None, [attributes, *extra]))
    named = (os.environ.get("GUESTFEED_REPLICA_NAME") or "").strip()
    if named:  # the guard's audit rows say which worker acted
        env["GUESTFEED_REPLICA_NAME"] = f"{named}/worker-{index}"
    return env


def _secret_files(settings: Settings) -> dict[str, str]:
    """The embedded mode's generated secrets, for workers that get a database URL
    (and so are no longer "embedded" themselves): by file, never in the environment."""
    out = {}
    if settings.jwt_secret is None:
        out["GUESTFEED_JWT_SECRET_FILE"] = str((settings.data_dir / "jwt_secret").resolve())
    if not settings.page_token_secrets:
        path = settings.data_dir / "page_token_secret"
        out["GUESTFEED_PAGE_TOKEN_SECRET_FILE"] = str(path.resolve())
    return out


async def _migrate(dsn: str, settings: Settings) -> None:
    conn = await connect(
        dsn,
        settings.session_url_variable,
        timeout=settings.connect_timeout_s,
        application_name=MIGRATE_APPLICATION_NAME,
    )
    try:
        with untraced():
            await migrate(conn)
    finally:
        await conn.close()


# --- a worker --------------------------------------------------------------------


def as_worker(settings: Settings, role: WorkerRole) -> Settings:
    """This worker's settings: the shared port with SO_REUSEPORT. Its log lines say
    which worker wrote them (`worker`, `pid`)."""
    fields = _WorkerFields(role.index)
    for handler in logging.getLogger().handlers:
        handler.addFilter(fields)
        if not settings.telemetry.json_logs:
            handler.setFormatter(
                logging.Formatter(
                    "%(asctime)s %(levelname)s %(name)s [worker %(worker)s pid %(pid)s]: "
                    "%(message)s"
                )
            )
    return dataclasses.replace(settings, reuse_port=True)


class _WorkerFields(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        record.pid = self.pid
        return True


def announce(role: WorkerRole, app: App) -> None:
    """Logs that this worker serves and tells the parent so (the parent alone logs
    "guestfeed serving on", once every worker does)."""
    log.info("guestfeed worker %d (pid %d) serving on %s", role.index, os.getpid(), app.address)
    with contextlib.suppress(OSError):  # the parent is gone: the lifeline says so too
        os.write(role.ready_fd, b"R")
    with contextlib.suppress(OSError):
        os.close(role.ready_fd)


@contextlib.contextmanager
def lifeline(role: WorkerRole | None, stop: asyncio.Event) -> Iterator[None]:
    """While serving: when the parent is gone (end of file on the lifeline), shut down
    as on SIGTERM, so no worker outlives a parent killed by SIGKILL."""
    if role is None:
        yield
        return
    loop = asyncio.get_running_loop()
    fd = role.lifeline_fd

    def on_readable() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if data:  # the parent never writes; nothing to do
            return
        loop.remove_reader(fd)
        if not stop.is_set():
            log.warning("worker %d: the parent process is gone; shutting down", role.index)
            stop.set()

    loop.add_reader(fd, on_readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)
