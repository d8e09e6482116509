"""Whether the feed's reads get answers: readiness that `SELECT 1` cannot see.

A database can answer `SELECT 1` while every page read times out (a table
locked by a migration, a stuck transaction), so a health check that only
pings says SERVING to a replica that serves nothing. `ReadPathHealth`
watches the page outcomes the reader already reports to the guard
(`PageOutcome`: caller mistakes are never outcomes) and turns unhealthy as
soon as, within a short window, enough reads failed on the server's side
and they were at least half of all reads.

It recovers actively: while unhealthy, each health tick (`refresh`) probes
the feed tables with a short timeout. A readiness probe takes an unhealthy
replica out of rotation, so no traffic would ever come to prove it well
again; the probe does that instead. It recovers once the probe answers and
the reads since the last tick (if any came) no longer fail.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..domain.signals import PageOutcome

# "Mostly failing": at least this share of the window's reads failed.
FAILING_SHARE = 0.5
# The window is counted in this many slices, so memory stays constant however
# many pages a replica serves (a deque of outcomes would hold every one).
_SLICES = 10


@dataclass(slots=True)
class _Slice:
    start: float
    ok: int = 0
    failed: int = 0


class ReadPathHealth:
    """The read path's health, from page outcomes and, while failing, a probe.

    `observe` is called by the reader for each page read (synchronously, on
    the event loop); `refresh` by the health loop at each tick. `changed` is
    set when `observe` turns the read path unhealthy, so the health loop can
    publish that at once instead of at its next tick.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        *,
        window_s: float,
        min_failures: int,
        probe_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self.window_s = window_s
        self._min_failures = min_failures
        self._probe_timeout = probe_timeout_s
        self._clock = clock
        self._slice_s = window_s / _SLICES
        self._slices: collections.deque[_Slice] = collections.deque()
        # Reads since the last `refresh`: the evidence recovery checks.
        self._recent_ok = 0
        self._recent_failed = 0
        self.healthy = True
        # Why the state last changed, in words for the log line that reports it.
        self.reason = ""
        self._since = clock()
        self.changed = asyncio.Event()

    def observe(self, outcome: PageOutcome) -> None:
        """Counts one page read; turns unhealthy when the window says so."""
        now = self._clock()
        self._count(now, failed=outcome.failed)
        if not (self.healthy and outcome.failed):
            return
        ok, failed = self.window(now)
        if self._failing(ok, failed):
            self.healthy = False
            self._since = now
            self.reason = (
                f"{failed} of {ok + failed} page reads in the last {self.window_s:g} s failed "
                "on the server's side (database timeouts, unreachable, or errors)"
            )
            self.changed.set()

    async def refresh(self) -> bool:
        """One health tick: while unhealthy, probes the feed tables; returns `healthy`."""
        ok, failed = self._recent_ok, self._recent_failed
        self._recent_ok = self._recent_failed = 0
        if self.healthy:
            return True
        try:
            # asyncio.timeout, not wait_for (see api/health.py: a cancel must not be lost).
            async with asyncio.timeout(self._probe_timeout):
                await self._probe()
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception:
            # Still locked or unreachable: the WARNING that tripped it stands.
            return False
        if self._failing(ok, failed):
            # The tables answer, yet pages still fail (a slow plan, a bug): the
            # pages are what callers get, so they decide.
            return False
        now = self._clock()
        self.reason = (
            f"the feed tables answered a probe after {now - self._since:.1f} s of failing reads"
        )
        self.healthy = True
        self._since = now
        # The failures that tripped it are old news; a new trip needs new ones.
        self._slices.clear()
        return True

    def window(self, now: float | None = None) -> tuple[int, int]:
        """(ok, failed) page reads within the window ending `now`."""
        now = self._clock() if now is None else now
        self._prune(now)
        ok = failed = 0
        for piece in self._slices:
            ok += piece.ok
            failed += piece.failed
        return ok, failed

    def _failing(self, ok: int, failed: int) -> bool:
        return failed >= self._min_failures and failed >= FAILING_SHARE * (ok + failed)

    def _count(self, now: float, *, failed: bool) -> None:
        if not self._slices or now - self._slices[-1].start >= self._slice_s:
            self._slices.append(_Slice(now))
        last = self._slices[-1]
        if failed:
            last.failed += 1
            self._recent_failed += 1
        else:
            last.ok += 1
            self._recent_ok += 1
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._slices and self._slices[0].start <= now - self.window_s:
            self._slices.popleft()
