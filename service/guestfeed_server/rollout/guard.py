"""The auto-rollback guard: a replica rolls V2 back on evidence, with nobody watching.

Each replica watches its own V2 pages over a sliding window (server-side
failures, latency) and the shadow reads' V1-only results per event, and
compares them with the thresholds in the rollout config (the plan's alert
conditions by default). A breach is acted on through the same audited,
optimistic path as a person's change (`RolloutAdmin.apply`):

* an event-local signal (a shadow read found V1-only messages in an event,
  or the failures are concentrated in one event) forces that event to V1;
* a service-wide breach turns the stored kill switch on.

Rules: it never promotes; a window with fewer requests than the minimum is
no decision either way (unlike Flagger, which counts "no values" as a failed
check, or Argo Rollouts, which errors on an empty result); it acts once,
however many replicas see the same breach, because each change is a
read-modify-write on the config's revision that re-reads and finds the work
done; evidence from before the current config revision is not held against
it; `guard_enabled` in the config (stored as `guard.enabled`) pauses it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..domain.model import ReadModel
from ..domain.signals import PageOutcome, ShadowResult
from ..telemetry.background import start_background, stop_background
from .admin import RolloutAdmin
from .config import GuardConfig, RolloutConfig

log = logging.getLogger(__name__)

# A breach whose failures come this much from one event is that event's.
_CONCENTRATED = 0.8
# Memory bound of the window, whatever the request rate.
_MAX_SAMPLES = 200_000


@dataclass(frozen=True, slots=True)
class Signal:
    """One watched value against its threshold."""

    name: str
    value: float
    threshold: float
    breached: bool
    event_id: uuid.UUID | None = None


@dataclass
class GuardStatus:
    """The guard's view of its window right now."""

    enabled: bool
    window_s: int
    min_requests: int
    requests: int
    failures: int
    signals: list[Signal] = field(default_factory=list)

    @property
    def enough_data(self) -> bool:
        """Whether the window holds enough requests to decide anything service-wide."""
        return self.requests >= self.min_requests


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    event_id: uuid.UUID
    latency_ms: float
    failed: bool


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] if ordered else 0.0


class Guard:
    """Watches V2 on this replica and rolls it back on evidence."""

    def __init__(
        self,
        admin: RolloutAdmin,
        config: Callable[[], RolloutConfig | None],
        *,
        replica: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._admin = admin
        self._config = config
        self.replica = replica
        self._interval = interval_s
        self._clock = clock
        self._pages: deque[_Sample] = deque(maxlen=_MAX_SAMPLES)
        self._v1_only: deque[tuple[float, uuid.UUID]] = deque(maxlen=_MAX_SAMPLES)
        # Evidence gathered under an older config revision does not count.
        self._revision = -1
        self._since = clock()
        self._task: asyncio.Task[None] | None = None

    @property
    def actor(self) -> str:
        """How the audit log names this guard."""
        return f"guard@{self.replica}"

    def observe_page(self, outcome: PageOutcome) -> None:
        """Records a V2 page (V1 pages are not the guard's business)."""
        if outcome.read_model is ReadModel.V2:
            self._pages.append(
                _Sample(self._clock(), outcome.event_id, outcome.latency_ms, outcome.failed)
            )

    def observe_shadow(self, event_id: uuid.UUID, result: ShadowResult) -> None:
        """Records a shadow read's V1-only result for its event."""
        if result is ShadowResult.V1_ONLY:
            self._v1_only.append((self._clock(), event_id))

    def status(self) -> GuardStatus:
        """The signals over the window, now."""
        config = self._config()
        guard = config.guard if config is not None else GuardConfig()
        self._rebase(config)
        start = max(self._clock() - guard.window_s, self._since)
        pages = [s for s in self._pages if s.at >= start]
        failures = sum(1 for s in pages if s.failed)
        status = GuardStatus(
            guard.enabled, guard.window_s, guard.min_requests, len(pages), failures
        )
        enough = status.enough_data
        latencies = [s.latency_ms for s in pages]
        share = failures / len(pages) if pages else 0.0
        avg = sum(latencies) / len(latencies) if latencies else 0.0
        p95 = _p95(latencies)
        status.signals += [
            Signal(
                "error_share",
                share,
                guard.max_error_share,
                enough and share > guard.max_error_share,
            ),
            Signal(
                "avg_latency_ms",
                avg,
                guard.max_avg_latency_ms,
                enough and avg > guard.max_avg_latency_ms,
            ),
            Signal(
                "p95_latency_ms",
                p95,
                guard.max_p95_latency_ms,
                enough and guard.max_p95_latency_ms > 0 and p95 > guard.max_p95_latency_ms,
            ),
        ]
        hidden = Counter(e for at, e in self._v1_only if at >= start)
        status.signals += [
            Signal("shadow_v1_only", n, 0, guard.act_on_shadow_v1_only, event_id=e)
            for e, n in sorted(hidden.items(), key=lambda kv: (-kv[1], str(kv[0])))
        ]
        return status

    async def evaluate(self) -> list[str]:
        """One look at the window; acts on what breaches. Returns the changes written."""
        status = self.status()
        if not status.enabled:
            return []
        window = f"{status.window_s}s"
        done: list[str] = []
        for signal in status.signals:
            if signal.name == "shadow_v1_only" and signal.breached and signal.event_id:
                reason = (
                    f"auto-rollback: shadow_v1_only {signal.value:g} > 0 over {window} "
                    f"({status.requests} requests) in event {signal.event_id}"
                )
                done += await self._force_v1(signal.event_id, reason)
        breached = [s for s in status.signals if s.breached and s.event_id is None]
        if not breached:
            return done
        signal = breached[0]
        reason = (
            f"auto-rollback: {signal.name} {signal.value:.4g} > {signal.threshold:.4g} "
            f"over {window} ({status.requests} requests)"
        )
        event = self._concentrated() if signal.name == "error_share" else None
        if event is not None:
            done += await self._force_v1(event, f"{reason}, {_CONCENTRATED:.0%}+ in event {event}")
        else:
            done += await self._kill(reason)
        return done

    def start(self) -> None:
        """Evaluates every `interval_s` in the background."""
        self._task = start_background(self._run(), "guestfeed-guard")

    async def stop(self) -> None:
        """Stops evaluating."""
        await stop_background(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database may be what is failing: try again next round.
                log.warning("guard could not act: %s", type(exc).__name__)

    def _rebase(self, config: RolloutConfig | None) -> None:
        # A new revision (a person's change, another replica's action) starts
        # the evidence afresh: what V2 did under the old config is not held
        # against the new one.
        if config is not None and config.revision != self._revision:
            if self._revision != -1:
                self._since = self._clock()
            self._revision = config.revision

    def _concentrated(self) -> uuid.UUID | None:
        start = max(self._clock() - (self._config() or RolloutConfig()).guard.window_s, self._since)
        failed = Counter(s.event_id for s in self._pages if s.at >= start and s.failed)
        total = sum(failed.values())
        if not total:
            return None
        event, n = failed.most_common(1)[0]
        return event if n >= _CONCENTRATED * total else None

    async def _force_v1(self, event_id: uuid.UUID, reason: str) -> list[str]:
        def change(current: RolloutConfig) -> RolloutConfig | None:
            if current.event_overrides.get(event_id) is ReadModel.V1 or not current.guard.enabled:
                return None
            overrides = {**current.event_overrides, event_id: ReadModel.V1}
            return current.with_changes(event_overrides=overrides)

        return await self._write(change, reason)

    async def _kill(self, reason: str) -> list[str]:
        def change(current: RolloutConfig) -> RolloutConfig | None:
            if not current.v2_enabled or not current.guard.enabled:
                return None
            return current.with_changes(v2_enabled=False)

        return await self._write(change, reason)

    async def _write(
        self, change: Callable[[RolloutConfig], RolloutConfig | None], reason: str
    ) -> list[str]:
        new = await self._admin.apply(self.actor, change, reason)
        if new is None:
            return []
        log.warning("%s (revision %d, by %s)", reason, new.revision, self.actor)
        self._rebase(new)
        return [reason]
