"""grpc.health.v1 driven by a database probe and the read path's health.

"" and the guestfeed service names say NOT_SERVING while the database cannot
be reached: a load balancer then routes around this replica instead of
sending it requests that would fail with UNAVAILABLE. The probe has its own
timeout so a hung connection cannot leave the status stale (grpclib's health
checks do the same).

Three names are meant for probes:
  * `guestfeed.live` (liveness) is SERVING while the process runs, whatever
    the database does: a database outage must not restart every pod;
  * `guestfeed.read_path` follows the page reads themselves
    (`feed.readiness.ReadPathHealth`), which can fail while `SELECT 1` works;
  * `guestfeed.ready` (readiness) is the database reachable, the read path
    healthy and the replica not shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

from ..feed.readiness import ReadPathHealth
from ..telemetry.background import start_background, stop_background

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# For a liveness probe: SERVING while the process runs (until shutdown).
LIVE_HEALTH_NAME = "guestfeed.live"
# SERVING unless page reads mostly fail on the server's side (ReadPathHealth).
READ_PATH_HEALTH_NAME = "guestfeed.read_path"
# For a readiness probe: database reachable, read path healthy, not stopping.
READY_HEALTH_NAME = "guestfeed.ready"


class DatabaseHealth:
    """Keeps the health servicer's statuses in step with the database."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[None]],
        services: Sequence[str],
        *,
        interval_s: float,
        timeout_s: float,
        components: Mapping[str, Callable[[], bool]] | None = None,
        read_path: ReadPathHealth | None = None,
    ) -> None:
        self.servicer = health_aio.HealthServicer()
        self._ping = ping
        # "" is the whole server, as grpc.health.v1 defines it.
        self._services = ("", *services)
        self._interval = interval_s
        self._timeout = timeout_s
        self._components = dict(components or {})
        self._read_path = read_path
        # Set when the read path turns unhealthy between ticks: publish at once.
        self._wake = read_path.changed if read_path is not None else asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.serving: bool | None = None
        self.read_path_healthy: bool | None = None

    async def probe(self) -> bool:
        """One check; updates every status and returns whether the database answered."""
        # The read path's state first: a trip may have woken this tick, and the
        # ping and the read path's own probe below may each take a while.
        await self._publish_read_path(self._note_read_path(None))
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns
            # the result and swallows a cancel that arrives as the probe
            # finishes, and the probe loop then never stops (a hung shutdown).
            async with asyncio.timeout(self._timeout):
                await self._ping()
            ok = True
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:
            ok = False
            if self.serving is not False:
                log.warning("database unreachable; health NOT_SERVING: %s", type(exc).__name__)
        if ok and self.serving is False:
            log.info("database reachable again; health SERVING")
        self.serving = ok
        for name in self._services:
            await self.servicer.set(name, SERVING if ok else NOT_SERVING)
        for name, check in self._components.items():
            await self.servicer.set(name, SERVING if check() else NOT_SERVING)
        await self.servicer.set(LIVE_HEALTH_NAME, SERVING)
        refreshed = await self._read_path.refresh() if self._read_path is not None else None
        await self._publish_read_path(self._note_read_path(refreshed))
        return ok

    def _note_read_path(self, refreshed: bool | None) -> bool:
        """The read path's state (`refreshed`, else the tracker's), logged once per
        change with why: one WARNING when it fails, one INFO when it is back."""
        if self._read_path is None:
            return True
        healthy = self._read_path.healthy if refreshed is None else refreshed
        if healthy != (self.read_path_healthy is not False):
            if healthy:
                log.info(
                    "read path answering again; health %s SERVING: %s",
                    READ_PATH_HEALTH_NAME,
                    self._read_path.reason,
                )
            else:
                log.warning(
                    "read path failing; health %s and %s NOT_SERVING until the feed tables "
                    "answer a probe: %s",
                    READ_PATH_HEALTH_NAME,
                    READY_HEALTH_NAME,
                    self._read_path.reason,
                )
        self.read_path_healthy = healthy
        return healthy

    async def _publish_read_path(self, healthy: bool) -> None:
        if self._read_path is not None:
            await self.servicer.set(READ_PATH_HEALTH_NAME, SERVING if healthy else NOT_SERVING)
        ready = self.serving is True and healthy
        await self.servicer.set(READY_HEALTH_NAME, SERVING if ready else NOT_SERVING)

    def start(self) -> None:
        """Starts probing in the background."""
        self._task = start_background(self._run(), "guestfeed-health")

    async def _run(self) -> None:
        while True:
            await self.probe()
            # The interval, cut short when the read path turns unhealthy. asyncio.timeout,
            # not wait_for (see `probe`).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()

    async def enter_shutdown(self) -> None:
        """Reports NOT_SERVING for everything from now on (the first step of shutdown)."""
        await self.servicer.enter_graceful_shutdown()

    async def stop(self) -> None:
        """Stops probing."""
        await stop_background(self._task)
