"""The live rollout config of one replica: LISTEN/NOTIFY plus a periodic re-read.

A change committed through any replica NOTIFYs `guestfeed_rollout`; every
replica's dedicated listening connection wakes its reload loop at once. The
loop also re-reads every `refresh_s` in case a notification was lost (a
reconnect, a restarted database). If the stored config cannot be read at
start-up the replica serves v1 to everyone (fail safe) and says so in health
and logs; if the database goes away later it keeps the last config it read.

LISTEN needs a real session. Behind a transaction pooler with no direct URL
there is none, so the replica only re-reads (`listening` is False, which
health reports), and changes arrive within `refresh_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from ..telemetry.background import start_background, stop_background
from . import store
from .config import RolloutConfig
from .policy import Decision, decide

log = logging.getLogger(__name__)


class RolloutState:
    """Implements `RolloutPolicy` from the freshest config this replica has read."""

    def __init__(
        self,
        dsn: str | None,
        *,
        deploy_v2_allowed: bool,
        refresh_s: float,
        connect_timeout_s: float = 5.0,
        on_change: Callable[[RolloutConfig], None] | None = None,
        poll: Callable[[], Awaitable[RolloutConfig]] | None = None,
    ) -> None:
        if dsn is None and poll is None:
            raise ValueError("RolloutState needs a dsn to LISTEN on, or a way to poll")
        self._dsn = dsn
        self._poll = poll
        self.deploy_v2_allowed = deploy_v2_allowed
        self._refresh_s = refresh_s
        self._connect_timeout = connect_timeout_s
        self._on_change = on_change
        # None until the first successful read: decisions are then fail-safe v1.
        self.config: RolloutConfig | None = None
        self._wake = asyncio.Event()
        self._loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        """False when changes arrive by the periodic re-read only."""
        return self._dsn is not None

    @property
    def fail_safe(self) -> bool:
        """True while no stored config has ever been read."""
        return self.config is None

    def decide(self, event_id: uuid.UUID, user_id: uuid.UUID) -> Decision:
        """See `policy.decide`; fail-safe v1 until a config was read."""
        config = self.config
        return decide(
            config or RolloutConfig(),
            event_id,
            user_id,
            deploy_v2_allowed=self.deploy_v2_allowed,
            fail_safe=config is None,
        )

    def apply(self, config: RolloutConfig) -> bool:
        """Adopts `config` unless it is older than what we have; True if it changed."""
        current = self.config
        if current is not None and config.revision <= current.revision:
            return False
        self.config = config
        log.info(
            "rollout config revision %d applied (v2_enabled=%s, v2_percentage=%d)",
            config.revision,
            config.v2_enabled,
            config.v2_percentage,
        )
        if self._on_change is not None:
            self._on_change(config)
        return True

    async def start(self, *, initial_wait_s: float = 5.0) -> None:
        """Starts the loop and waits (bounded) for the first read."""
        self._task = start_background(self._run(), "guestfeed-rollout")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(initial_wait_s):
                await self._loaded.wait()
        if self.fail_safe:
            log.error(
                "rollout config unreadable at start-up: serving v1 to everyone (fail safe) "
                "until the database answers"
            )

    async def stop(self) -> None:
        """Stops listening."""
        await stop_background(self._task)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _run(self) -> None:
        if self._dsn is None:
            await self._run_polling()
        else:
            await self._run_listening(self._dsn)

    async def _run_polling(self) -> None:
        assert self._poll is not None
        backoff = 0.1
        while True:
            try:
                self.apply(await self._poll())
                self._loaded.set()
                backoff = 0.1
                await asyncio.sleep(self._refresh_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "rollout config re-read failed (%s); %s",
                    type(exc).__name__,
                    "keeping the last config" if self.config else "fail-safe v1 until then",
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _run_listening(self, dsn: str) -> None:
        backoff = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    dsn,
                    timeout=self._connect_timeout,
                    server_settings={"application_name": "guestfeed-rollout-listener"},
                )
                await conn.add_listener(store.CHANNEL, self._notified)
                conn.add_termination_listener(self._notified)
                while not conn.is_closed():
                    # Clear before reading: a NOTIFY that lands during the read
                    # wakes the next round instead of being lost.
                    self._wake.clear()
                    self.apply(await store.load(conn, timeout=self._connect_timeout))
                    self._loaded.set()
                    # Only a successful read proves the database is usable again.
                    backoff = 0.1
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._refresh_s):
                            await self._wake.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kept = "keeping" if self.config else "fail-safe v1 until then;"
                log.warning(
                    "rollout config listener lost the database (%s); %s last config, retrying",
                    type(exc).__name__,
                    kept,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(2):
                            await conn.close()
