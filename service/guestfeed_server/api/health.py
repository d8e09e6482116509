"""grpc.health.v1 driven by a database probe.

Health says NOT_SERVING while the database cannot be reached: a load balancer
then routes around this replica instead of sending it requests that would
fail with UNAVAILABLE. The probe has its own timeout so a hung connection
cannot leave the status stale (grpclib's health checks do the same).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

from ..telemetry.background import start_background, stop_background

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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
    ) -> None:
        self.servicer = health_aio.HealthServicer()
        self._ping = ping
        # "" is the whole server, as grpc.health.v1 defines it.
        self._services = ("", *services)
        self._interval = interval_s
        self._timeout = timeout_s
        self._components = dict(components or {})
        self._task: asyncio.Task[None] | None = None
        self.serving: bool | None = None

    async def probe(self) -> bool:
        """One check; updates every status and returns whether the database answered."""
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
        return ok

    def start(self) -> None:
        """Starts probing in the background."""
        self._task = start_background(self._run(), "guestfeed-health")

    async def _run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self._interval)

    async def enter_shutdown(self) -> None:
        """Reports NOT_SERVING for everything from now on (the first step of shutdown)."""
        await self.servicer.enter_graceful_shutdown()

    async def stop(self) -> None:
        """Stops probing."""
        await stop_background(self._task)
