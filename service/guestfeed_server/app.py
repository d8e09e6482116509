"""The composition root: one `running(settings)` owns every resource of a replica.

Resources are acquired in order and pushed on one `AsyncExitStack`:
telemetry, the embedded PostgreSQL (if any), the pool, the JWKS, the
rollout, health, background jobs, the gRPC server. Any exit, a failed
start-up included, releases them in reverse: health NOT_SERVING first, then
the drain (still serving for GUESTFEED_SHUTDOWN_DRAIN_S while load balancers
stop routing here), then every WatchMessages call ends (resumable), then
`server.stop(grace)` lets in-flight RPCs finish, then the jobs (the watch
hub among them), the rollout, the JWKS, the pool, the embedded server, and
last the telemetry flush (so the final RPCs' spans are exported too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from .api import tls
from .api.health import DatabaseHealth
from .api.server import (
    JWKS_HEALTH_NAME,
    ROLLOUT_HEALTH_NAME,
    ROLLOUT_NOTIFY_HEALTH_NAME,
    SERVICE_NAMES,
    WATCH_EXACT_HEALTH_NAME,
    build_server,
)
from .auth import Authenticator, JwksError, JwksKeys, KeySet
from .auth.keyring import Keys, keys_for
from .domain.budget import Budget
from .feed.readiness import ReadPathHealth
from .feed.watch_hub import WatchHub
from .replication import start_read_replicas
from .rollout import RolloutConfig, RolloutPolicy
from .rollout import store as rollout_store
from .rollout.live import RolloutState
from .settings import PoolMode, Settings, StartupError, parse_listen
from .storage import Database
from .storage.connect import connect
from .storage.embedded import start_embedded
from .storage.migrate import APPLICATION_NAME as MIGRATE_APPLICATION_NAME
from .storage.migrate import MigrationError, migrate, missing_page_functions, missing_versions
from .storage.replicas import ReadRouter
from .storage.sms import sms_snapshot
from .telemetry import Telemetry, untraced
from .telemetry.sms import SmsHealthJob
from .uses import health_budget, use_cases

log = logging.getLogger(__name__)


@dataclass
class App:
    """A running replica: where it listens and what it holds."""

    settings: Settings
    port: int
    dsn: str
    keys: Keys
    db: Database
    health: DatabaseHealth
    telemetry: Telemetry
    rollout: RolloutState | None
    jwks: JwksKeys | None
    # Live updates: the replica's one hub (docs/watch.md).
    watch: WatchHub | None = None
    # Read replicas' router (storage/replicas.py); None without replicas.
    replicas: ReadRouter | None = None

    @property
    def address(self) -> str:
        """host:port it serves on (the port the OS gave for port 0)."""
        host, _ = parse_listen(self.settings.listen)
        return f"{host}:{self.port}"


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    telemetry: Telemetry | None = None,
    rollout: RolloutPolicy | None = None,
    jwks: JwksKeys | None = None,
    migrate_first: bool | None = None,
) -> AsyncIterator[App]:
    """Starts a replica and stops it on exit, in reverse order of start-up.

    `migrate_first` (default: in embedded mode) runs `migrate` before serving;
    against a real database that is `guestfeed migrate`'s job, and a database
    that lacks a step is refused. Tests may pass fixed `telemetry`, a fixed
    `rollout` policy, or a `jwks` cache of their own.

    Raises:
        StartupError: a dependency the settings name cannot be used.
        MigrationError: the database lacks migrations.
    """
    async with contextlib.AsyncExitStack() as stack:
        for notice in settings.notices:
            log.warning(notice)
        if telemetry is None:
            # Ours to flush and stop; a caller's telemetry stays the caller's.
            telemetry = Telemetry.from_settings(settings.telemetry)
            stack.callback(telemetry.shutdown)
        dsn = settings.database_url
        if dsn is None:
            embedded = await asyncio.to_thread(start_embedded, settings.data_dir)
            stack.callback(embedded.stop)
            dsn = embedded.dsn
        session_dsn = settings.direct_database_url or dsn
        if settings.embedded if migrate_first is None else migrate_first:
            await _migrate(session_dsn, settings)
        db = await Database.open(dsn, settings)
        stack.push_async_callback(db.close)
        await _check_migrated(db, settings)
        # Read replicas (GUESTFEED_REPLICA_DATABASE_URLS), else None: all on the primary.
        router = await start_read_replicas(stack, db, dsn, settings, telemetry)
        keys = keys_for(settings)
        jwks = await _start_jwks(jwks, settings)
        if jwks is not None:
            stack.push_async_callback(jwks.stop)
        state = None
        if rollout is None:
            state = await _start_rollout(db, dsn, settings)
            stack.push_async_callback(state.stop)
            rollout = state
        uses = use_cases(db, rollout, state, keys, telemetry, settings, router)
        stack.push_async_callback(uses.shadow.stop)
        # Its tick loop starts with the first watch; this probe says at once
        # (in the log and in health) whether the horizon can be exact.
        stack.push_async_callback(uses.hub.stop)
        with untraced():
            await uses.hub.probe()
        uses.guard.start()
        stack.push_async_callback(uses.guard.stop)
        health = _health(db, state, jwks, uses.read_path, uses.hub, settings)
        with untraced():
            await health.probe()
        health.start()
        stack.push_async_callback(health.stop)
        budget = Budget(max(settings.query_timeout_s, 30.0))
        sms = SmsHealthJob(
            lambda: sms_snapshot(db, budget),
            telemetry.sources,
            interval_s=settings.sms_health_interval_s,
        )
        sms.start()
        stack.push_async_callback(sms.stop)
        auth = Authenticator(
            KeySet(jwks, keys.jwt_secret),
            issuer=settings.jwt_issuer,
            allow_anonymous=settings.allow_anonymous,
        )
        server = build_server(
            auth=auth,
            reader=uses.reader,
            policy=rollout,
            admin=uses.admin,
            comparison=uses.comparison,
            guard=uses.guard,
            health=health,
            telemetry=telemetry,
            identify_clients=settings.tls.mutual,
            watcher=uses.watcher,
            max_connection_age_s=settings.max_connection_age_s,
            max_connection_age_grace_s=settings.max_connection_age_grace_s,
            reuse_port=settings.reuse_port,
        )
        # Plaintext or TLS; a "cannot listen" or unusable TLS file is a StartupError.
        port = tls.bind(server, settings)
        await server.start()
        stack.push_async_callback(server.stop, settings.shutdown_grace_s)
        # Watches never end by themselves: end them (resumable) before the
        # grace period, which is then left to calls that do end.
        stack.callback(uses.hub.end_watches)
        if settings.shutdown_drain_s > 0:
            stack.push_async_callback(_drain, settings.shutdown_drain_s)
        # Pushed last, so on the way out it runs first: load balancers see
        # NOT_SERVING before the server stops taking calls.
        stack.push_async_callback(health.enter_shutdown)
        yield App(
            settings, port, dsn, keys, db, health, telemetry, state, jwks, uses.hub, replicas=router
        )


async def _drain(seconds: float) -> None:
    """Serves on with health NOT_SERVING until load balancers stop routing here:
    Kubernetes sends SIGTERM as it removes the pod from its endpoints, and every
    node's proxy learns of that later, so calls keep arriving meanwhile. A second
    signal still ends the process at once (see `graceful_exit`)."""
    log.info(
        "draining: health NOT_SERVING, still serving for %g s (GUESTFEED_SHUTDOWN_DRAIN_S)",
        seconds,
    )
    await asyncio.sleep(seconds)
    log.info("drain over: refusing new calls; in-flight calls get the grace period")


async def _migrate(dsn: str, settings: Settings) -> None:
    # On a session of its own: migrate takes an advisory lock.
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


async def _check_migrated(db: Database, settings: Settings) -> None:
    with untraced():
        async with db.acquire(Budget(settings.query_timeout_s)) as conn:
            missing = await missing_versions(conn)
            if settings.pool_mode is PoolMode.TRANSACTION:
                missing += await missing_page_functions(conn)
    if missing:
        raise MigrationError(
            f"the database lacks migrations {', '.join(missing)}; run `guestfeed migrate` first"
        )


async def _start_jwks(jwks: JwksKeys | None, settings: Settings) -> JwksKeys | None:
    if jwks is None and settings.jwks_url is not None:
        jwks = JwksKeys(settings.jwks_url, timeout_s=min(settings.connect_timeout_s, 5.0))
    if jwks is None:
        return None
    try:
        await jwks.start(startup_timeout_s=settings.connect_timeout_s)
    except JwksError as exc:
        raise StartupError(
            f"GUESTFEED_JWKS_URL: cannot fetch the project's signing keys from {jwks.url}: {exc}"
        ) from None
    return jwks


async def _start_rollout(db: Database, dsn: str, settings: Settings) -> RolloutState:
    """The live rollout: LISTEN on a session (the direct URL, or the main one in
    session mode), else the periodic re-read through the pool."""
    if settings.direct_database_url is not None:
        # A wrong direct URL would otherwise only show as a replica stuck on
        # its fail-safe rollout: refuse to start instead, by name.
        probe = await connect(
            settings.direct_database_url,
            "GUESTFEED_DIRECT_DATABASE_URL",
            timeout=settings.connect_timeout_s,
            application_name="guestfeed-startup",
        )
        await probe.close()
    listen_dsn = (settings.direct_database_url or dsn) if settings.can_listen else None
    if listen_dsn is None:
        log.warning(
            "GUESTFEED_DB_POOL_MODE=transaction without GUESTFEED_DIRECT_DATABASE_URL: "
            "rollout changes arrive by the periodic re-read only (every %g s), not by NOTIFY",
            settings.rollout_refresh_s,
        )
    budget = Budget(settings.query_timeout_s)

    async def poll() -> RolloutConfig:
        async with db.acquire(budget) as conn:
            return await rollout_store.load(conn, timeout=budget.seconds())

    state = RolloutState(
        listen_dsn,
        deploy_v2_allowed=settings.deploy_v2_allowed,
        refresh_s=settings.rollout_refresh_s,
        connect_timeout_s=settings.connect_timeout_s,
        poll=poll,
    )
    await state.start(initial_wait_s=min(settings.connect_timeout_s, 5.0))
    return state


def _health(
    db: Database,
    state: RolloutState | None,
    jwks: JwksKeys | None,
    read_path: ReadPathHealth,
    hub: WatchHub,
    settings: Settings,
) -> DatabaseHealth:
    components = {
        # NOT_SERVING while this replica runs on the fail-safe (v1) config.
        ROLLOUT_HEALTH_NAME: lambda: state is None or not state.fail_safe,
        ROLLOUT_NOTIFY_HEALTH_NAME: lambda: state is None or state.listening,
        # NOT_SERVING while live updates run in safe mode (no pg_read_all_stats).
        WATCH_EXACT_HEALTH_NAME: lambda: hub.exact,
    }
    if jwks is not None:
        keys = jwks
        components[JWKS_HEALTH_NAME] = lambda: keys.healthy
    budget = health_budget(settings)
    return DatabaseHealth(
        lambda: db.ping(budget),
        SERVICE_NAMES,
        interval_s=settings.health_interval_s,
        timeout_s=budget.cap_s,
        components=components,
        read_path=read_path,
    )


@contextlib.contextmanager
def graceful_exit(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop`; a second signal exits at once (grpclib's
    `graceful_exit`). The handlers are removed again on the way out.

    The shutdown itself (drain, grace) runs after this block, with both
    signals back at their default action: a second one then ends the process
    at once, killed by it, also for SIGINT (whose Python default would raise
    KeyboardInterrupt with a traceback and let the shutdown carry on unwinding).
    """
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal() -> None:
        if stop.is_set():
            raise SystemExit(1)
        log.info("shutting down (signal again to exit at once)")
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if stop.is_set():
            signal.signal(signal.SIGINT, signal.SIG_DFL)
