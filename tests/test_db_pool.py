"""The service's connection pool: what a released connection keeps and loses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestfeed_server.domain.budget import Budget, Lane
from guestfeed_server.domain.errors import DeadlineExceeded, Unavailable
from guestfeed_server.storage.database import Database, FairGate, create_pool

from . import conftest
from .conftest import scratch_database


@pytest.fixture
async def pool_and_dsn(server_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    async with scratch_database(server_dsn, "guestfeed_pool") as (_, dsn):
        # One connection, so every acquire gets the same session back.
        pool = await create_pool(
            dsn, conftest.test_settings(GUESTFEED_DB_POOL_MIN="1", GUESTFEED_DB_POOL_MAX="1")
        )
        try:
            yield pool, dsn
        finally:
            await pool.close()


async def test_release_sends_no_reset_query_to_the_server(
    pool_and_dsn: tuple[asyncpg.Pool, str],
) -> None:
    pool, dsn = pool_and_dsn
    async with pool.acquire() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.fetchval("SELECT 'the last statement before release'")
    observer = await asyncpg.connect(dsn)
    try:
        # asyncpg's default release would have sent `... RESET ALL` after it.
        last = await observer.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await observer.close()
    assert last == "SELECT 'the last statement before release'"


async def test_a_transaction_left_open_is_rolled_back_on_release(
    pool_and_dsn: tuple[asyncpg.Pool, str],
) -> None:
    pool, _ = pool_and_dsn
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE written (n int)")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO written VALUES (1)")
        # Released without commit or rollback, as after a cancelled RPC.
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM written") == 0
        await conn.execute("INSERT INTO written VALUES (2)")
        assert await conn.fetchval("SELECT count(*) FROM written") == 1


class TestFairGate:
    async def test_waiters_are_admitted_in_arrival_order_and_newcomers_queue_behind_them(
        self,
    ) -> None:
        gate = FairGate(1)
        assert gate.try_enter()
        admitted: list[int] = []

        async def borrower(n: int) -> None:
            await gate.enter()
            admitted.append(n)
            await asyncio.sleep(0)
            gate.exit()

        tasks = []
        for n in range(5):
            tasks.append(asyncio.create_task(borrower(n)))
            await asyncio.sleep(0)  # each is queued before the next arrives
        # A slot comes free while five wait: a newcomer may not take it first.
        gate.exit()
        assert not gate.try_enter()
        await asyncio.gather(*tasks)
        assert admitted == [0, 1, 2, 3, 4]
        assert gate.try_enter()  # and the slot is free again at the end

    async def test_a_waiter_that_gives_up_leaves_its_place_to_the_next(self) -> None:
        gate = FairGate(1)
        assert gate.try_enter()
        quitter = asyncio.create_task(gate.enter())
        patient = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        quitter.cancel()
        await asyncio.sleep(0)
        gate.exit()
        await asyncio.wait_for(patient, 1)
        assert quitter.cancelled()
        assert not gate.try_enter()  # the patient waiter holds the only slot
        gate.exit()
        assert gate.try_enter()

    async def test_a_slot_handed_over_as_its_waiter_is_cancelled_is_passed_on(self) -> None:
        gate = FairGate(1)
        assert gate.try_enter()
        first = asyncio.create_task(gate.enter())
        second = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        gate.exit()  # hands the slot to `first`, which has not run yet...
        first.cancel()  # ...and is cancelled before it does
        await asyncio.wait_for(second, 1)
        with pytest.raises(asyncio.CancelledError):
            await first
        gate.exit()
        assert gate.try_enter()
        assert not gate.try_enter()  # never more holders than slots


async def test_a_borrower_that_times_out_takes_no_slot_with_it(
    pool_and_dsn: tuple[asyncpg.Pool, str],
) -> None:
    pool, _ = pool_and_dsn  # one connection
    tracked = Database(pool)
    async with tracked.acquire(Budget(1)):
        with pytest.raises(Unavailable) as waited:
            async with tracked.acquire(Budget(0.05)):
                pass  # pragma: no cover - never admitted
        assert waited.value.reason == "DATABASE_TIMEOUT"
        assert tracked.waiting == 0
    # The holder's connection goes back in a task; the next borrower gets it.
    async with tracked.acquire(Budget(1)) as conn:
        assert await conn.fetchval("SELECT 1") == 1


@dataclass
class _Borrower:
    n: int
    task: asyncio.Task[None]
    leave: asyncio.Event


async def _gate_scenario(size: int, ops: list[tuple[str, int]]) -> None:
    """Runs arrivals, departures and give-ups against a gate and checks it after each."""
    gate = FairGate(size)
    admitted: list[int] = []
    borrowers: list[_Borrower] = []

    async def borrow(n: int, leave: asyncio.Event) -> None:
        await gate.enter()
        admitted.append(n)
        await leave.wait()
        gate.exit()

    async def settle() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    def holding() -> list[_Borrower]:
        return [b for b in borrowers if b.n in admitted and not b.task.done()]

    def waiting() -> list[_Borrower]:
        return [b for b in borrowers if b.n not in admitted and not b.task.done()]

    for op, k in ops:
        if op == "arrive":
            leave = asyncio.Event()
            n = len(borrowers)
            borrowers.append(_Borrower(n, asyncio.create_task(borrow(n, leave)), leave))
        elif op == "leave" and holding():
            holding()[k % len(holding())].leave.set()
        elif op == "give up" and waiting():
            waiting()[k % len(waiting())].task.cancel()
        await settle()
        # Never more holders than slots, and nobody waits while a slot is free.
        assert len(holding()) <= size
        assert not waiting() or len(holding()) == size
    # Everyone left waiting gets in, in arrival order, once the holders leave.
    for _ in range(len(borrowers) + 1):
        for b in holding():
            b.leave.set()
        await settle()
    assert not holding() and not waiting()
    gave_up = [b.n for b in borrowers if b.task.cancelled()]
    assert admitted == sorted(admitted)
    assert sorted(admitted + gave_up) == list(range(len(borrowers)))
    # No slot lost or made up along the way.
    assert [gate.try_enter() for _ in range(size + 1)] == [True] * size + [False]


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=3),
    ops=st.lists(
        st.tuples(st.sampled_from(["arrive", "leave", "give up"]), st.integers(0, 7)),
        max_size=40,
    ),
)
def test_gate_admits_in_arrival_order_and_never_loses_a_slot(
    size: int, ops: list[tuple[str, int]]
) -> None:
    asyncio.run(_gate_scenario(size, ops))


class TestBulkLane:
    async def test_bulk_work_is_capped_while_short_calls_get_the_rest(
        self, server_dsn: str
    ) -> None:
        """With the bulk lane (1 of 3 connections) held, another bulk borrower waits out its
        budget while short calls are served at once from the rest of the pool."""
        async with scratch_database(server_dsn, "guestfeed_lane") as (_, dsn):
            settings = conftest.test_settings(
                GUESTFEED_DB_POOL_MIN="3", GUESTFEED_DB_POOL_MAX="3", GUESTFEED_DB_BULK_SHARE="1"
            )
            db = await Database.open(dsn, settings)
            try:
                assert db.bulk_share == 1
                async with db.acquire(Budget(5, lane=Lane.BULK)):
                    with pytest.raises(Unavailable):
                        async with db.acquire(Budget(0.1, lane=Lane.BULK)):
                            pass  # pragma: no cover - never admitted
                    async with (
                        db.acquire(Budget(1)) as a,
                        db.acquire(Budget(1)) as b,
                    ):
                        assert await a.fetchval("SELECT 1") == await b.fetchval("SELECT 1") == 1
                    assert db.waiting == 0
                # Released, the lane admits the next bulk borrower.
                async with db.acquire(Budget(1, lane=Lane.BULK)) as conn:
                    assert await conn.fetchval("SELECT 2") == 2
            finally:
                await db.close()

    async def test_bulk_work_queues_past_one_query_timeout_but_not_past_its_deadline(
        self, server_dsn: str
    ) -> None:
        """Queueing for the bulk share is throttling: a borrower waits longer than its query
        timeout for a slot that frees up, but never past the caller's own deadline."""
        async with scratch_database(server_dsn, "guestfeed_lane_queue") as (_, dsn):
            settings = conftest.test_settings(
                GUESTFEED_DB_POOL_MIN="2", GUESTFEED_DB_POOL_MAX="2", GUESTFEED_DB_BULK_SHARE="1"
            )
            db = await Database.open(dsn, settings)
            try:
                held = asyncio.Event()
                release = asyncio.Event()

                async def holder() -> None:
                    async with db.acquire(Budget(5, lane=Lane.BULK)):
                        held.set()
                        await release.wait()

                task = asyncio.create_task(holder())
                await held.wait()
                loop = asyncio.get_running_loop()
                loop.call_later(0.5, release.set)
                started = loop.time()
                async with db.acquire(Budget(0.2, lane=Lane.BULK)) as conn:
                    assert await conn.fetchval("SELECT 1") == 1
                assert loop.time() - started >= 0.45  # waited 2.5 query timeouts
                await task

                release.clear()
                held.clear()
                task = asyncio.create_task(holder())
                await held.wait()
                with pytest.raises(DeadlineExceeded):
                    async with db.acquire(Budget.of(0.2, 0.3, Lane.BULK)):
                        pass  # pragma: no cover - never admitted
                release.set()
                await task
            finally:
                await db.close()

    def test_the_default_share_is_a_third_of_the_pool(self) -> None:
        """GUESTFEED_DB_BULK_SHARE unset: a third of the pool, at least one connection."""
        limits = conftest.test_settings().limits
        assert [limits.db_bulk_share(n) for n in (1, 2, 3, 10, 30)] == [1, 1, 1, 3, 10]
