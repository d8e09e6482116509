"""Read replicas in a running replica of the service: the heartbeat writer and the router.

`app.running` calls `start_read_replicas` once, after the primary's pool is
open, and its exit stack owns what this starts. Without
GUESTFEED_REPLICA_DATABASE_URLS it starts nothing and returns None: every
read stays on the primary and no heartbeat is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .settings import Settings
from .storage import Database
from .storage.heartbeat import HeartbeatWriter
from .storage.replicas import ReadRouter
from .telemetry import SCOPE, Telemetry
from .telemetry.replicas import ReplicaMetrics

log = logging.getLogger(__name__)


async def start_read_replicas(
    stack: contextlib.AsyncExitStack,
    primary: Database,
    dsn: str,
    settings: Settings,
    telemetry: Telemetry,
) -> ReadRouter | None:
    """Starts the heartbeat writer and the router's checks; None without replicas."""
    cfg = settings.replicas
    if not cfg.enabled:
        return None
    router: ReadRouter | None = None

    def status() -> list[tuple[str, str, float | None]]:
        if router is None:
            return []
        return [(s.name, s.state.value, s.lag_s) for s in router.status()]

    metrics = ReplicaMetrics(telemetry.meter_provider.get_meter(SCOPE), status)
    router = ReadRouter(primary, settings, on_read=lambda t, r: metrics.read(t, r.value))
    # The writer's lock needs a real session: the direct URL, or the main one in
    # session mode. Behind a transaction pooler alone, every replica writes.
    session = (settings.direct_database_url or dsn) if settings.can_listen else None
    writer = HeartbeatWriter(
        primary,
        session,
        writer=settings.replica_name,
        interval_s=cfg.heartbeat_s,
        connect_timeout_s=settings.connect_timeout_s,
        query_timeout_s=settings.query_timeout_s,
    )
    stack.push_async_callback(writer.stop)
    # One beat before the checks start, so a cluster whose writer is this
    # process does not begin with every replica a stale beat behind.
    try:
        async with asyncio.timeout(min(settings.connect_timeout_s, 2.0)):
            await writer.beat()
    except Exception as exc:  # the loop retries and says why, once
        log.debug("first heartbeat failed: %r", exc)
    writer.start()
    stack.push_async_callback(router.stop)
    # Logs each replica's state once it has settled (or the wait is over).
    await router.start(wait_s=min(settings.connect_timeout_s, max(1.0, 3 * cfg.heartbeat_s)))
    return router
