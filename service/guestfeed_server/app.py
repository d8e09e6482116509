"""The composition root: one `running(settings)` owns every resource of a replica.

Resources are acquired in order and pushed on one `AsyncExitStack`:
telemetry, the embedded PostgreSQL (if any), the pool, the JWKS, the
rollout, health, background jobs, the gRPC server. Any exit, a failed
start-up included, releases them in reverse: health NOT_SERVING first, then
`server.stop(grace)` lets in-flight RPCs finish, then the jobs, the rollout,
the JWKS, the pool, the embedded server, and last the telemetry flush (so
the final RPCs' spans are exported too).
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
    build_server,
)
from .auth import Authenticator, JwksError, JwksKeys, KeySet
from .auth.keyring import Keys, keys_for
from .domain.budget import Budget
from .domain.model import ReadModel
from .feed import FeedReader, PageTokens
from .feed.shadow import ShadowReads
from .rollout import RolloutConfig, RolloutPolicy
from .rollout import store as rollout_store
from .rollout.admin import RolloutAdmin
from .rollout.compare import ReadModelComparison
from .rollout.guard import Guard
from .rollout.live import RolloutState
from .settings import PoolMode, Settings, StartupError, parse_listen
from .storage import Database, make_store
from .storage.connect import connect
from .storage.embedded import start_embedded
from .storage.migrate import MigrationError, migrate, missing_page_functions, missing_versions
from .storage.sms import sms_snapshot
from .telemetry import Telemetry, untraced
from .telemetry.sms import SmsHealthJob

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
        keys = keys_for(settings)
        jwks = await _start_jwks(jwks, settings)
        if jwks is not None:
            stack.push_async_callback(jwks.stop)
        state = None
        if rollout is None:
            state = await _start_rollout(db, dsn, settings)
            stack.push_async_callback(state.stop)
            rollout = state
        uses = _use_cases(db, rollout, state, keys, telemetry, settings)
        stack.push_async_callback(uses.shadow.stop)
        uses.guard.start()
        stack.push_async_callback(uses.guard.stop)
        health = _health(db, state, jwks, settings)
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
        )
        # Plaintext or TLS; a "cannot listen" or unusable TLS file is a StartupError.
        port = tls.bind(server, settings)
        await server.start()
        stack.push_async_callback(server.stop, settings.shutdown_grace_s)
        # Pushed last, so on the way out it runs first: load balancers see
        # NOT_SERVING before the server stops taking calls.
        stack.push_async_callback(health.enter_shutdown)
        yield App(settings, port, dsn, keys, db, health, telemetry, state, jwks)


async def _migrate(dsn: str, settings: Settings) -> None:
    # On a session of its own: migrate takes an advisory lock.
    conn = await connect(dsn, settings.session_url_variable, timeout=settings.connect_timeout_s)
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


@dataclass
class UseCases:
    """The use cases a replica serves, wired to its database and telemetry."""

    reader: FeedReader
    admin: RolloutAdmin
    comparison: ReadModelComparison
    shadow: ShadowReads
    guard: Guard


def _use_cases(
    db: Database,
    policy: RolloutPolicy,
    state: RolloutState | None,
    keys: Keys,
    telemetry: Telemetry,
    settings: Settings,
) -> UseCases:
    telemetry.sources.pool_in_use = db.in_use
    telemetry.sources.pool_idle = db.idle
    telemetry.sources.pool_waiting = lambda: db.waiting
    stores = {m: make_store(m, db) for m in ReadModel}
    admin = RolloutAdmin(
        db,
        deploy_v2_allowed=settings.deploy_v2_allowed,
        query_timeout_s=settings.query_timeout_s,
        applied=state.apply if state is not None else None,
    )

    def stored() -> RolloutConfig | None:
        # The live config, or a fixed policy's (tests, tools).
        config = getattr(policy, "config", None)
        return config if isinstance(config, RolloutConfig) else None

    guard = Guard(
        admin, stored, replica=settings.replica_name, interval_s=settings.guard_interval_s
    )
    shadow = ShadowReads(
        stores,
        telemetry.metrics,
        telemetry.tracer,
        rate=lambda: config.shadow_sample_rate if (config := stored()) else 0.0,
        timeout_s=settings.query_timeout_s,
        listener=guard.observe_shadow,
    )
    reader = FeedReader(
        stores,
        policy,
        PageTokens(keys.page_token_keys),
        query_timeout_s=settings.query_timeout_s,
        shadow=shadow,
        observe=guard.observe_page,
    )
    return UseCases(reader, admin, ReadModelComparison(db), shadow, guard)


def _health(
    db: Database,
    state: RolloutState | None,
    jwks: JwksKeys | None,
    settings: Settings,
) -> DatabaseHealth:
    components = {
        # NOT_SERVING while this replica runs on the fail-safe (v1) config.
        ROLLOUT_HEALTH_NAME: lambda: state is None or not state.fail_safe,
        ROLLOUT_NOTIFY_HEALTH_NAME: lambda: state is None or state.listening,
    }
    if jwks is not None:
        keys = jwks
        components[JWKS_HEALTH_NAME] = lambda: keys.healthy
    budget = Budget(min(settings.query_timeout_s, 2.0))
    return DatabaseHealth(
        lambda: db.ping(budget),
        SERVICE_NAMES,
        interval_s=settings.health_interval_s,
        timeout_s=budget.cap_s,
        components=components,
    )


@contextlib.contextmanager
def graceful_exit(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop`; a second signal exits at once (grpclib's
    `graceful_exit`). The handlers are removed again on the way out."""
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
