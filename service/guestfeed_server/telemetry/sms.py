"""The SMS pipeline's health gauges, refreshed on a schedule (the query: storage/sms.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .background import start_background, stop_background
from .metrics import GaugeSources

log = logging.getLogger(__name__)


class SmsHealthJob:
    """Publishes a reading of `read()` to the gauges every `interval_s`."""

    def __init__(
        self,
        read: Callable[[], Awaitable[dict[str, float]]],
        sources: GaugeSources,
        *,
        interval_s: float,
    ) -> None:
        self._read = read
        self._sources = sources
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> dict[str, float]:
        """Takes one reading and publishes it to the gauges."""
        values = await self._read()
        self._sources.sms.clear()
        self._sources.sms.update(values)
        return values

    def start(self) -> None:
        """Starts the schedule in the background."""
        self._task = start_background(self._run(), "guestfeed-sms-health")

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Keep the last reading: a gap is better than a false alarm.
                log.warning("SMS health query failed: %s", type(exc).__name__)
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        """Stops the schedule."""
        await stop_background(self._task)
