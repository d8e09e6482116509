"""The parent of GUESTFEED_WORKERS: starts N worker processes, restarts the ones that die,
and stops them all on SIGTERM.

It knows processes, not gRPC: each worker is a command line (`guestfeed serve`
with a marker in its environment) that writes one byte to a pipe once it
serves. The parent keeps the other end of a second pipe, the lifeline: when
the parent is gone, even killed by SIGKILL, every worker reads end of file
there and shuts down as on SIGTERM, so no worker outlives it.

Workers run in a session of their own: Ctrl-C in a terminal then reaches the
parent only, which forwards one SIGTERM. Were they in the terminal's process
group, each would get SIGINT from the terminal and SIGTERM from the parent,
and take the second as "exit at once", skipping the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..settings.workers import WORKER_INDEX, WORKER_LIFELINE_FD, WORKER_READY_FD

log = logging.getLogger(__name__)

# A worker that dies is started again after BACKOFF_START_S, doubling with
# each death in a row up to BACKOFF_MAX_S, so a crash loop (a database that
# refuses every connection) costs one start every 30 s, not a busy spin.
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
# A worker that lived this long before it died starts the backoff over.
STABLE_S = 60.0
# Exit statuses that mean "stopped as asked": drained and exited 0, or killed
# by our SIGTERM before it had installed its handlers (it was not serving yet).
_STOPPED = (0, -signal.SIGTERM)


@dataclass(frozen=True)
class WorkerPlan:
    """What to run: `count` copies of `argv`, each with `env(index)` on top of ours."""

    count: int
    argv: Sequence[str]
    env: Callable[[int], Mapping[str, str]]
    # How long the workers get from SIGTERM to exit before SIGKILL: the
    # drain, the grace, and time to close the pool and flush telemetry.
    stop_timeout_s: float


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    # Deaths in a row (reset by a life longer than STABLE_S): the backoff.
    crashes: int = 0
    restarts: int = 0
    lifeline: int | None = None
    code: int | None = None
    killed: bool = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    """Runs a `WorkerPlan` until SIGTERM/SIGINT; `run` returns the exit code."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.workers = [_Worker(i) for i in range(plan.count)]
        self._stop = asyncio.Event()
        self._failed: asyncio.Future[int] | None = None
        self._started = False

    def restarts(self) -> dict[int, int]:
        """Restarts so far, by worker index (the parent's /metrics)."""
        return {w.index: w.restarts for w in self.workers}

    def pids(self) -> dict[int, int]:
        """The pid of each live worker, by index."""
        return {w.index: w.proc.pid for w in self.workers if w.alive and w.proc is not None}

    async def run(self, on_ready: Callable[[], Awaitable[None]]) -> int:
        """Starts every worker; once all serve, awaits `on_ready`; then keeps them running
        until a signal. Returns 0 when every worker stopped as asked, the exit code of a
        worker that failed its first start (2: settings, 3: migrations), else 1."""
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        keepers = [asyncio.create_task(self._keep(w)) for w in self.workers]
        try:
            failed = await self._start_up()
            if failed is None:
                self._started = True
                try:
                    await on_ready()
                except BaseException:
                    # The demo seed failed, say: the workers still drain.
                    self._begin_stop()
                    await self._shut_down(keepers)
                    raise
                await self._stop.wait()
            else:
                self._begin_stop()
            clean = await self._shut_down(keepers)
            if failed is not None:
                return failed
            return 0 if clean else 1
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            # Only on an error of our own: never leave a worker behind.
            for w in self.workers:
                if w.alive and w.proc is not None:
                    w.proc.kill()
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)

    async def _start_up(self) -> int | None:
        """None once every worker serves; a worker's exit code if one failed its first
        start; None too on a signal meanwhile (the shutdown follows)."""
        assert self._failed is not None
        waits: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(asyncio.gather(*(w.ready.wait() for w in self.workers))),
            asyncio.ensure_future(self._stop.wait()),
        ]
        all_ready, stopped = waits
        try:
            await asyncio.wait([*waits, self._failed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            all_ready.cancel()
            stopped.cancel()
        if self._failed.done() and not self._stop.is_set():
            return self._failed.result()
        return None

    async def _keep(self, w: _Worker) -> None:
        """Runs worker `w`, and again after each death, until the shutdown."""
        while not self._stop.is_set():
            try:
                await self._spawn(w)
            except OSError as exc:  # no fork, no pipe: the machine is out of something
                log.error("cannot start worker %d: %s", w.index, exc)
                code, pid = 1, 0
            else:
                assert w.proc is not None
                pid = w.proc.pid
                code = await w.proc.wait()
                self._close_lifeline(w)
            w.code = code
            if self._stop.is_set():
                return
            lived = time.monotonic() - w.started_at
            if not self._started and not w.ready.is_set():
                # A worker that cannot start at all (settings, database,
                # migrations) would fail the same way every time: give up,
                # as a single process does, with its exit code.
                log.error("worker %d (pid %d) failed to start (%s)", w.index, pid, _status(code))
                assert self._failed is not None
                if not self._failed.done():
                    self._failed.set_result(code if code > 0 else 1)
                return
            w.crashes = 1 if lived >= STABLE_S else w.crashes + 1
            w.restarts += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** (w.crashes - 1))
            log.error(
                "worker %d (pid %d) exited (%s) after %.1f s; restarting it in %g s (%d in a row)",
                w.index,
                pid,
                _status(code),
                lived,
                delay,
                w.crashes,
                extra={"worker": w.index, "exit_code": code, "restart_in_s": delay},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _spawn(self, w: _Worker) -> None:
        loop = asyncio.get_running_loop()
        ready_r, ready_w = os.pipe()
        life_r, life_w = os.pipe()
        env = {
            **os.environ,
            **self.plan.env(w.index),
            WORKER_INDEX: str(w.index),
            WORKER_READY_FD: str(ready_w),
            WORKER_LIFELINE_FD: str(life_r),
        }
        try:
            w.proc = await asyncio.create_subprocess_exec(
                *self.plan.argv,
                env=env,
                pass_fds=(ready_w, life_r),
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            for fd in (ready_r, life_w):
                os.close(fd)
            raise
        finally:
            # The worker's ends are the worker's: ours closed, end of file on
            # the ready pipe then means the worker is gone.
            os.close(ready_w)
            os.close(life_r)
        w.started_at = time.monotonic()
        w.lifeline = life_w
        w.killed = False
        if self._stop.is_set():  # the signal came while it was being started
            w.proc.send_signal(signal.SIGTERM)

        def on_ready() -> None:
            try:
                data = os.read(ready_r, 1)
            except OSError:
                data = b""
            loop.remove_reader(ready_r)
            os.close(ready_r)
            if data:
                w.ready.set()

        loop.add_reader(ready_r, on_ready)
        log.info(
            "worker %d started (pid %d)", w.index, w.proc.pid, extra={"worker_pid": w.proc.pid}
        )

    def _close_lifeline(self, w: _Worker) -> None:
        if w.lifeline is not None:
            os.close(w.lifeline)
            w.lifeline = None

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            # As a single process does: a second signal ends everything at once.
            log.warning("%s again: killing every worker", sig.name)
            for w in self.workers:
                if w.alive and w.proc is not None:
                    w.proc.kill()
            asyncio.get_running_loop().remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        log.info("shutting down: SIGTERM to every worker (signal again to exit at once)")
        self._begin_stop()

    def _begin_stop(self) -> None:
        self._stop.set()
        for w in self.workers:
            if w.alive and w.proc is not None:
                w.proc.send_signal(signal.SIGTERM)

    async def _shut_down(self, keepers: list[asyncio.Task[None]]) -> bool:
        """Waits for every worker to exit; SIGKILL for one still there after
        `stop_timeout_s`. True when all stopped as asked."""
        _, pending = await asyncio.wait(keepers, timeout=self.plan.stop_timeout_s)
        if pending:
            for w in self.workers:
                if w.alive and w.proc is not None:
                    log.error(
                        "worker %d (pid %d) still running %g s after SIGTERM: killing it",
                        w.index,
                        w.proc.pid,
                        self.plan.stop_timeout_s,
                    )
                    w.killed = True
                    w.proc.kill()
            await asyncio.gather(*pending, return_exceptions=True)
        clean = True
        for w in self.workers:
            if w.killed or (w.code is not None and w.code not in _STOPPED):
                clean = False
                log.error("worker %d stopped badly (%s)", w.index, _status(w.code))
        log.info("every worker has stopped")
        return clean


def _status(code: int | None) -> str:
    """An exit status as words: "exit code 1", "killed by SIGKILL"."""
    if code is None:
        return "unknown status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
