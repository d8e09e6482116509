"""The use cases a replica serves, wired to its database, rollout and telemetry.

`app.running` calls `use_cases` once and owns what it returns: it starts and
stops each long-lived part (the shadow reads, the guard, the watch hub) in
its one exit stack. Nothing here starts a task or opens a connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .auth.keyring import Keys
from .domain.budget import Budget
from .domain.model import ReadModel
from .domain.signals import PageOutcome
from .feed import FeedReader, PageTokens
from .feed.limits import StreamLimits
from .feed.reader import WatchMarks
from .feed.readiness import ReadPathHealth
from .feed.shadow import ShadowReads
from .feed.watch import FeedWatcher
from .feed.watch_hub import WatchHub
from .feed.watch_tokens import WatchTokens
from .rollout import RolloutConfig, RolloutPolicy
from .rollout.admin import RolloutAdmin
from .rollout.compare import ReadModelComparison
from .rollout.guard import Guard
from .rollout.live import RolloutState
from .settings import Settings
from .storage import Database, FeedStore, make_store
from .storage.readiness import probe_feed_tables
from .storage.replicas import ReadRouter
from .storage.routed import RoutedFeedStore
from .storage.watch import SqlWatchStore
from .telemetry import Telemetry


@dataclass
class UseCases:
    """The use cases a replica serves, wired to its database and telemetry."""

    reader: FeedReader
    admin: RolloutAdmin
    comparison: ReadModelComparison
    shadow: ShadowReads
    guard: Guard
    read_path: ReadPathHealth
    hub: WatchHub
    watcher: FeedWatcher


def use_cases(
    db: Database,
    policy: RolloutPolicy,
    state: RolloutState | None,
    keys: Keys,
    telemetry: Telemetry,
    settings: Settings,
    router: ReadRouter | None = None,
) -> UseCases:
    telemetry.sources.pool_in_use = db.in_use
    telemetry.sources.pool_idle = db.idle
    telemetry.sources.pool_waiting = lambda: db.waiting
    loop = asyncio.get_running_loop()
    # Read from the exporter's thread: all_tasks(loop) copes with that.
    telemetry.sources.tasks = lambda: len(asyncio.all_tasks(loop))
    limits = StreamLimits(
        settings.limits.streams_per_caller,
        settings.limits.streams_per_caller_event,
        on_refused=lambda scope: telemetry.metrics.streams_refused.add(
            1, {"guestfeed.limit": scope}
        ),
    )
    telemetry.sources.streams_active = lambda: limits.active
    stores = {m: make_store(m, db) for m in ReadModel}
    # With read replicas, pages go through the router (storage/routed.py);
    # shadow reads, comparisons and everything else stay on the primary.
    pages: dict[ReadModel, FeedStore] = (
        dict(stores)
        if router is None
        else {m: RoutedFeedStore(m, router, make_store) for m in ReadModel}
    )
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
    probe_budget = health_budget(settings)
    read_path = ReadPathHealth(
        lambda: probe_feed_tables(db, probe_budget),
        window_s=settings.read_path.window_s,
        min_failures=settings.read_path.min_failures,
        probe_timeout_s=probe_budget.cap_s,
    )

    def observe(outcome: PageOutcome) -> None:
        # One signal, two listeners: the guard judges the read model, health the replica.
        guard.observe_page(outcome)
        read_path.observe(outcome)

    metrics = telemetry.metrics
    watch_store = SqlWatchStore(db)
    hub = WatchHub(
        watch_store,
        settings.watch,
        policy,
        query_timeout_s=settings.query_timeout_s,
        on_query=lambda kind: metrics.watch_queries.add(1, {"guestfeed.query": kind}),
    )
    telemetry.sources.watchers = lambda: hub.watchers
    telemetry.sources.horizon_lag = lambda: hub.horizon.lag_s if hub.horizon else None
    watch_tokens = WatchTokens(keys.page_token_keys)
    watcher = FeedWatcher(
        hub,
        watch_store,
        watch_tokens,
        policy,
        settings.watch,
        query_timeout_s=settings.query_timeout_s,
        limits=limits,
        on_delivered=lambda n, model: metrics.watch_delivered.add(
            n, {"guestfeed.read_model": model.value}
        ),
    )
    reader = FeedReader(
        pages,
        policy,
        PageTokens(keys.page_token_keys),
        query_timeout_s=settings.query_timeout_s,
        shadow=shadow,
        observe=observe,
        limits=limits,
        watch=WatchMarks(hub, watch_tokens),
    )
    comparison = ReadModelComparison(db)
    return UseCases(reader, admin, comparison, shadow, guard, read_path, hub, watcher)


def health_budget(settings: Settings) -> Budget:
    """The budget of a health probe."""
    # Probes are short: a health answer that takes a query timeout is no answer.
    return Budget(min(settings.query_timeout_s, 2.0))
