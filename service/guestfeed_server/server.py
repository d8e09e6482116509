"""Builds the gRPC server and runs it through start-up and shutdown.

Shutdown order (so no request sees a closed pool): health NOT_SERVING, then
`server.stop(grace)` lets in-flight RPCs finish, then the pool closes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import asyncpg
import grpc
from google.protobuf.internal import api_implementation
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from guestfeed.v1 import feed_pb2, feed_pb2_grpc, rollout_pb2, rollout_pb2_grpc

from .auth import Authenticator, JwksError, JwksKeys, KeySet
from .config import PoolMode, Settings, StartupError
from .consistency import ConsistencySampler
from .db import Keys, TrackedPool
from .db import connect as db_connect
from .feed import FeedReader
from .grpc_errors import ErrorMappingInterceptor
from .health import DatabaseHealth
from .model import ReadModel
from .pagination import PageTokens
from .rollout import RolloutConfig, RolloutPolicy
from .rollout import store as rollout_store
from .rollout.admin import RolloutAdmin
from .rollout.live import RolloutState
from .servicers.feed import GuestFeedServicer
from .servicers.rollout import RolloutServicer
from .storage import make_store
from .telemetry import Telemetry, untraced
from .telemetry.interceptor import TelemetryInterceptor
from .telemetry.sms import SmsHealthJob

log = logging.getLogger(__name__)

# A health entry of its own: SERVING once the stored rollout config was read.
ROLLOUT_HEALTH_NAME = "guestfeed.rollout.config"
# SERVING while rollout changes arrive by NOTIFY; NOT_SERVING when they
# arrive by the periodic re-read only (a transaction pooler, no direct URL).
ROLLOUT_NOTIFY_HEALTH_NAME = "guestfeed.rollout.notify"
# SERVING while the last JWKS fetch succeeded (only with GUESTFEED_JWKS_URL).
JWKS_HEALTH_NAME = "guestfeed.auth.jwks"

SERVICE_NAMES = (
    feed_pb2.DESCRIPTOR.services_by_name["GuestFeedService"].full_name,
    rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name,
)


def protobuf_backend() -> str:
    """Which protobuf implementation runs: "upb" (C, the default), "cpp" or "python"."""
    return str(api_implementation.Type())


@dataclass
class App:
    """A started server and what it owns."""

    server: grpc.aio.Server
    port: int
    health: DatabaseHealth
    pool: asyncpg.Pool
    grace_s: float
    rollout: RolloutState | None
    sms: SmsHealthJob
    telemetry: Telemetry
    jwks: JwksKeys | None = None

    async def stop(self) -> None:
        """Stops in order: health, RPCs (with grace), background jobs, the pool.

        Telemetry is flushed by its owner afterwards (`guestfeed serve`), so
        the spans of the last RPCs are exported too.
        """
        await self.health.stop()
        await self.server.stop(self.grace_s)
        if self.rollout is not None:
            await self.rollout.stop()
        await self.sms.stop()
        if self.jwks is not None:
            await self.jwks.stop()
        await self.pool.close()


async def start(
    settings: Settings,
    pool: asyncpg.Pool,
    keys: Keys,
    *,
    dsn: str | None = None,
    listen: str | None = None,
    rollout: RolloutPolicy | None = None,
    telemetry: Telemetry | None = None,
    jwks: JwksKeys | None = None,
) -> App:
    """Builds and starts the server on `listen` (default: the settings').

    The rollout follows the stored config live (a dedicated LISTEN connection
    to `dsn`, or GUESTFEED_DIRECT_DATABASE_URL when set; re-reads through the
    pool behind a transaction pooler without one); tests may pass a fixed
    `rollout` policy instead. Telemetry is off unless given
    (`Telemetry.from_env()` in `guestfeed serve`).

    Raises:
        StartupError: GUESTFEED_JWKS_URL is set and no keys could be fetched.
    """
    telemetry = telemetry or Telemetry.disabled()
    if protobuf_backend() != "upb":
        # Building a page's messages is the costliest Python step of an RPC;
        # the pure-Python backend (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python)
        # is many times slower than upb, the default of the pinned protobuf.
        log.warning("protobuf's %r backend is in use: pages build slowly", protobuf_backend())
    if jwks is None and settings.jwks_url is not None:
        jwks = JwksKeys(settings.jwks_url, timeout_s=min(settings.connect_timeout_s, 5.0))
    if jwks is not None:
        try:
            await jwks.start(startup_timeout_s=settings.connect_timeout_s)
        except JwksError as exc:
            raise StartupError(
                f"GUESTFEED_JWKS_URL: cannot fetch the project's signing keys from "
                f"{jwks.url}: {exc}"
            ) from None
    auth = Authenticator(
        KeySet(jwks, keys.jwt_secret),
        issuer=settings.jwt_issuer,
        allow_anonymous=settings.allow_anonymous,
    )
    tracked = TrackedPool(pool)
    telemetry.sources.pool_in_use = tracked.in_use
    telemetry.sources.pool_idle = tracked.idle
    telemetry.sources.pool_waiting = lambda: tracked.waiting
    state: RolloutState | None = None
    if rollout is None:
        if dsn is None:
            raise ValueError("start() needs the dsn for the rollout listener, or a rollout policy")
        listen_dsn = settings.direct_database_url or dsn if settings.can_listen else None
        if settings.direct_database_url is not None:
            # A wrong direct URL would otherwise only show as a replica stuck
            # on its fail-safe rollout: refuse to start instead, by name.
            probe = await db_connect(
                settings.direct_database_url,
                "GUESTFEED_DIRECT_DATABASE_URL",
                timeout=settings.connect_timeout_s,
                application_name="guestfeed-startup",
            )
            await probe.close()
        if listen_dsn is None:
            log.warning(
                "GUESTFEED_DB_POOL_MODE=transaction without GUESTFEED_DIRECT_DATABASE_URL: "
                "rollout changes arrive by the periodic re-read only (every %g s), not by NOTIFY",
                settings.rollout_refresh_s,
            )

        async def poll() -> RolloutConfig:
            async with tracked.acquire(timeout=settings.query_timeout_s) as conn:
                return await rollout_store.load(conn, timeout=settings.query_timeout_s)

        state = RolloutState(
            listen_dsn,
            deploy_v2_allowed=settings.deploy_v2_allowed,
            refresh_s=settings.rollout_refresh_s,
            connect_timeout_s=settings.connect_timeout_s,
            poll=poll,
        )
        await state.start(initial_wait_s=min(settings.connect_timeout_s, 5.0))
    policy: RolloutPolicy = state or rollout  # type: ignore[assignment]
    admin = RolloutAdmin(
        tracked,
        deploy_v2_allowed=settings.deploy_v2_allowed,
        query_timeout_s=settings.query_timeout_s,
        applied=state.apply if state is not None else None,
    )
    # Behind a transaction pooler pages are read through server-side
    # functions (their plans cached in the server session, see storage/base.py).
    server_side = settings.pool_mode is PoolMode.TRANSACTION
    stores = {m: make_store(m, server_side=server_side) for m in ReadModel}
    sampler = ConsistencySampler(
        tracked,
        stores,
        telemetry.metrics,
        rate=settings.consistency_sample_rate,
        timeout_s=settings.query_timeout_s,
    )
    reader = FeedReader(
        tracked,
        stores,
        policy,
        PageTokens(keys.page_token_keys),
        query_timeout_s=settings.query_timeout_s,
        sampler=sampler,
    )
    # The telemetry interceptor is outermost, so it sees the final status.
    server = grpc.aio.server(
        interceptors=[
            TelemetryInterceptor(
                telemetry.tracer, telemetry.metrics, trace_health=telemetry.trace_health
            ),
            ErrorMappingInterceptor(),
        ]
    )
    feed_pb2_grpc.add_GuestFeedServiceServicer_to_server(GuestFeedServicer(auth, reader), server)
    rollout_pb2_grpc.add_RolloutServiceServicer_to_server(
        RolloutServicer(auth, policy, admin), server
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_name = "grpc.health.v1.Health"
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_name, reflection.SERVICE_NAME), server
    )
    address = listen or settings.listen
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not listen on {address}")
    health = DatabaseHealth(
        health_servicer,
        pool,
        SERVICE_NAMES,
        interval_s=settings.health_interval_s,
        timeout_s=min(settings.query_timeout_s, 2.0),
        components={
            # NOT_SERVING while this replica runs on the fail-safe (v1) config.
            ROLLOUT_HEALTH_NAME: (lambda: state is None or not state.fail_safe),
            ROLLOUT_NOTIFY_HEALTH_NAME: (lambda: state is None or state.listening),
            **({JWKS_HEALTH_NAME: (lambda: jwks.healthy)} if jwks is not None else {}),
        },
    )
    with untraced():
        await health.probe()
    health.start()
    sms = SmsHealthJob(
        pool,
        telemetry.sources,
        interval_s=settings.sms_health_interval_s,
        timeout_s=max(settings.query_timeout_s, 30.0),
    )
    sms.start()
    await server.start()
    return App(
        server=server,
        port=port,
        health=health,
        pool=pool,
        grace_s=settings.shutdown_grace_s,
        rollout=state,
        sms=sms,
        telemetry=telemetry,
        jwks=jwks,
    )


async def serve_forever(app: App) -> None:
    """Waits for SIGINT/SIGTERM, then shuts down gracefully; a second signal exits at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            raise SystemExit(1)
        log.info("shutting down (signal again to exit at once)")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    await app.stop()
