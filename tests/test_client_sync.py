"""The blocking client's retry, deadline and paging logic, against grpc_testing.

The test thread plays the server (take an RPC, answer it) while the client
runs in a worker thread. Backoff pauses and the clock are injected, so the
retry schedule is exact and the tests do not wait; one test keeps real time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import grpc_testing
import pytest

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_client import NO_RETRY, GuestFeedSyncClient, RetryPolicy, RPCError

_FEED = feed_pb2.DESCRIPTOR.services_by_name["GuestFeedService"]
_ROLLOUT = rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"]
_LIST = _FEED.methods_by_name["ListMessages"]
_STREAM = _FEED.methods_by_name["StreamMessages"]
_UPDATE = _ROLLOUT.methods_by_name["UpdateRolloutConfig"]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
OK = grpc.StatusCode.OK

T = TypeVar("T")


class FakeTime:
    """A clock that moves only when the client sleeps; records the pauses."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Recorder:
    """A grpc_testing channel that also records every call's timeout and token.

    grpc_testing accepts deadlines but ignores them, and grpc.intercept_channel
    cannot wrap it (it passes wait_for_ready, which grpc_testing refuses).
    """

    def __init__(self) -> None:
        self.channel = grpc_testing.channel([_FEED, _ROLLOUT], grpc_testing.strict_real_time())
        self.timeouts: list[float | None] = []

    def _wrap(self, inner: Callable[..., T]) -> Callable[..., T]:
        def call(request: Any, timeout: float | None = None, **kwargs: Any) -> T:
            self.timeouts.append(timeout)
            return inner(request, timeout=timeout, **kwargs)

        return call

    def unary_unary(self, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        return self._wrap(self.channel.unary_unary(*args, **kwargs))

    def unary_stream(self, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        return self._wrap(self.channel.unary_stream(*args, **kwargs))

    def answer(self, method: Any, response: Any, code: grpc.StatusCode = OK) -> Any:
        """Takes the next unary call of `method`, answers it, returns its request."""
        metadata, request, rpc = self.channel.take_unary_unary(method)
        rpc.terminate(response if code is OK else None, (), code, "" if code is OK else "down")
        self.last_metadata = metadata
        return request


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def _page(ids: str, token: str) -> feed_pb2.ListMessagesResponse:
    return feed_pb2.ListMessagesResponse(
        messages=[feed_pb2.GuestMessage(message_id=i) for i in ids], next_page_token=token
    )


def _spage(ids: str, token: str) -> feed_pb2.StreamMessagesResponse:
    return feed_pb2.StreamMessagesResponse(
        messages=[feed_pb2.GuestMessage(message_id=i) for i in ids], next_page_token=token
    )


def _client(rec: Recorder, fake: FakeTime, **kwargs: Any) -> GuestFeedSyncClient:
    kwargs.setdefault("token", "tok")
    kwargs.setdefault("rng", lambda: 0.5)
    return GuestFeedSyncClient(rec, sleep=fake.sleep, clock=fake.clock, **kwargs)  # type: ignore[arg-type]


def _ids(messages: Iterator[feed_pb2.GuestMessage]) -> str:
    return "".join(m.message_id for m in messages)


def _collect(messages: Iterator[feed_pb2.GuestMessage], got: list[str]) -> str:
    got.extend(m.message_id for m in messages)
    return "".join(got)


def _wait_until(condition: Callable[[], bool]) -> None:
    """Waits for the client thread; grpc_testing drops responses still queued when
    a call fails, so a page must be read before its stream is broken."""
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "the client did not get there"
        time.sleep(0.001)


def _error(future: Future[Any]) -> RPCError:
    with pytest.raises(RPCError) as caught:
        future.result(timeout=5)
    return caught.value


class TestRetries:
    def test_unavailable_is_retried_with_jittered_backoff(self, pool: ThreadPoolExecutor) -> None:
        """UNAVAILABLE twice, then OK: three attempts, each with a fresh token and the
        time left; pauses of rng * 0.1 * 2**n."""
        rec, fake = Recorder(), FakeTime()
        tokens = iter(["t1", "t2", "t3"])
        client = _client(rec, fake, token=lambda: next(tokens), timeout=10.0)
        future = pool.submit(client.list_messages, "e")
        seen = []
        for code in (UNAVAILABLE, UNAVAILABLE, OK):
            rec.answer(_LIST, _page("ab", ""), code)
            seen.append(dict(rec.last_metadata)["authorization"])
        assert _ids(future.result(timeout=5).messages) == "ab"
        assert seen == ["Bearer t1", "Bearer t2", "Bearer t3"]
        assert fake.sleeps == [0.05, 0.1]
        assert rec.timeouts == pytest.approx([10.0, 9.95, 9.85])

    def test_retries_stop_at_the_deadline(self, pool: ThreadPoolExecutor) -> None:
        """No retry starts when its pause would reach the deadline: the last
        UNAVAILABLE is raised, saying how many attempts were made."""
        rec, fake = Recorder(), FakeTime()
        policy = RetryPolicy(max_attempts=10, initial_backoff=0.2, max_backoff=10)
        client = _client(rec, fake, timeout=1.0, retry=policy, rng=lambda: 1.0)
        future = pool.submit(client.list_messages, "e")
        for _ in range(3):
            rec.answer(_LIST, None, UNAVAILABLE)
        err = _error(future)
        assert err.code is UNAVAILABLE and err.attempts == 3
        assert fake.sleeps == pytest.approx([0.2, 0.4])  # then 0.8 would pass t=1.0
        assert rec.timeouts == pytest.approx([1.0, 0.8, 0.4])

    def test_retries_stop_after_max_attempts(self, pool: ThreadPoolExecutor) -> None:
        """Without a deadline, max_attempts alone bounds the retries."""
        rec, fake = Recorder(), FakeTime()
        client = _client(rec, fake, timeout=None, retry=RetryPolicy(max_attempts=3))
        future = pool.submit(client.list_messages, "e")
        for _ in range(3):
            rec.answer(_LIST, None, UNAVAILABLE)
        assert _error(future).attempts == 3
        assert rec.timeouts == [None, None, None]
        assert len(fake.sleeps) == 2

    @pytest.mark.parametrize(
        "code",
        [
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INTERNAL,
        ],
    )
    def test_other_codes_are_not_retried(
        self, pool: ThreadPoolExecutor, code: grpc.StatusCode
    ) -> None:
        """Only UNAVAILABLE says "not served, try again"."""
        rec, fake = Recorder(), FakeTime()
        future = pool.submit(_client(rec, fake).list_messages, "e")
        rec.answer(_LIST, None, code)
        err = _error(future)
        assert err.code is code and err.attempts == 1
        assert fake.sleeps == []

    def test_update_rollout_config_is_never_retried(self, pool: ThreadPoolExecutor) -> None:
        """UNAVAILABLE from UpdateRolloutConfig is raised after one attempt: it may
        have been applied, so only the caller can decide (re-read first)."""
        rec, fake = Recorder(), FakeTime()
        client = _client(rec, fake)
        future = pool.submit(
            client.update_rollout_config,
            rollout_pb2.RolloutConfig(v2_percentage=5),
            expected_revision=3,
            reason="r",
        )
        request = rec.answer(_UPDATE, None, UNAVAILABLE)
        assert request.expected_revision == 3
        # Had the client retried, it would still be waiting for a second answer.
        err = _error(future)
        assert err.code is UNAVAILABLE and err.attempts == 1
        assert fake.sleeps == [] and len(rec.timeouts) == 1

    def test_no_retry_policy_turns_retries_off(self, pool: ThreadPoolExecutor) -> None:
        rec, fake = Recorder(), FakeTime()
        future = pool.submit(_client(rec, fake, retry=NO_RETRY).list_messages, "e")
        rec.answer(_LIST, None, UNAVAILABLE)
        assert _error(future).attempts == 1

    def test_real_time_retries_end_within_the_deadline(self) -> None:
        """Real sleep, clock and jitter: a server that stays down costs the caller
        its deadline, not more, and every attempt gets only the time left."""
        rec = Recorder()
        policy = RetryPolicy(max_attempts=1000, initial_backoff=0.02, max_backoff=0.1)
        client = GuestFeedSyncClient(rec, "tok", timeout=0.5, retry=policy)  # type: ignore[arg-type]

        def down_until_stopped() -> None:
            while True:
                _, request, rpc = rec.channel.take_unary_unary(_LIST)
                if request.event_id == "stop":
                    rpc.terminate(_page("", ""), (), OK, "")
                    return
                rpc.terminate(None, (), UNAVAILABLE, "down")

        server = threading.Thread(target=down_until_stopped, daemon=True)
        server.start()
        started = time.monotonic()
        with pytest.raises(RPCError) as caught:
            client.list_messages("e")
        elapsed = time.monotonic() - started
        GuestFeedSyncClient(rec, "tok").list_messages("stop")  # type: ignore[arg-type]
        server.join(timeout=5)
        assert caught.value.code is UNAVAILABLE
        assert caught.value.attempts >= 2
        # The last pause (at most 0.1 s) is skipped when it would reach the deadline.
        assert 0.35 <= elapsed < 0.5 + 1.0  # slack for a busy machine
        timeouts = [t for t in rec.timeouts[: caught.value.attempts] if t is not None]
        assert len(timeouts) == caught.value.attempts
        assert timeouts[0] == pytest.approx(0.5, abs=0.05)
        assert timeouts == sorted(timeouts, reverse=True)


class TestPolicy:
    def test_backoff_grows_to_its_cap(self) -> None:
        policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2)
        caps = [policy.backoff(n, lambda: 1.0) for n in range(1, 7)]
        assert caps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        assert policy.backoff(3, lambda: 0.25) == pytest.approx(0.1)

    @pytest.mark.parametrize(
        "kwargs", [{"max_attempts": 0}, {"initial_backoff": -1}, {"multiplier": 0.5}]
    )
    def test_nonsense_is_refused(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError):
            RetryPolicy(**kwargs)  # type: ignore[arg-type]


class TestPaging:
    def test_iter_messages_follows_page_tokens(self, pool: ThreadPoolExecutor) -> None:
        """Pages until the empty token; the token goes back as it came."""
        rec, fake = Recorder(), FakeTime()
        client = _client(rec, fake)
        future = pool.submit(lambda: _ids(client.iter_messages("e", page_size=2)))
        tokens = [
            rec.answer(_LIST, _page("ab", "t1")).page_token,
            rec.answer(_LIST, _page("cd", "t2")).page_token,
            rec.answer(_LIST, _page("e", "")).page_token,
        ]
        assert future.result(timeout=5) == "abcde"
        assert tokens == ["", "t1", "t2"]

    def test_iter_messages_resumes_from_the_last_token(self, pool: ThreadPoolExecutor) -> None:
        """UNAVAILABLE on the second page: the retry asks for that page again with
        the token of the first, so nothing is repeated or skipped."""
        rec, fake = Recorder(), FakeTime()
        client = _client(rec, fake)
        future = pool.submit(lambda: _ids(client.iter_messages("e", page_token="t0")))
        tokens = [
            rec.answer(_LIST, _page("ab", "t1")).page_token,
            rec.answer(_LIST, None, UNAVAILABLE).page_token,
            rec.answer(_LIST, _page("cd", "t2")).page_token,
            rec.answer(_LIST, _page("e", "")).page_token,
        ]
        assert future.result(timeout=5) == "abcde"
        assert tokens == ["t0", "t1", "t1", "t2"]
        assert fake.sleeps == [0.05]

    def test_max_messages_stops_mid_page(self, pool: ThreadPoolExecutor) -> None:
        """The first `max_messages` only, without asking for another page."""
        rec, fake = Recorder(), FakeTime()
        client = _client(rec, fake)
        future = pool.submit(lambda: _ids(client.iter_messages("e", max_messages=3)))
        rec.answer(_LIST, _page("ab", "t1"))
        rec.answer(_LIST, _page("cd", "t2"))
        assert future.result(timeout=5) == "abc"

    def test_iter_pages_follows_tokens(self, pool: ThreadPoolExecutor) -> None:
        rec, fake = Recorder(), FakeTime()
        client = _client(rec, fake)
        future = pool.submit(lambda: [_ids(p.messages) for p in client.iter_pages("e")])
        rec.answer(_LIST, _page("ab", "t1"))
        rec.answer(_LIST, _page("c", ""))
        assert future.result(timeout=5) == ["ab", "c"]


class TestStream:
    def test_stream_resumes_after_unavailable(self, pool: ThreadPoolExecutor) -> None:
        """A stream broken after two pages is reopened from the second page's token,
        with max_messages reduced by what was already delivered."""
        rec, fake = Recorder(), FakeTime()
        client = _client(rec, fake)
        got: list[str] = []
        messages = client.iter_messages("e", stream=True, page_size=2, max_messages=9)
        future = pool.submit(_collect, messages, got)
        _, first, rpc = rec.channel.take_unary_stream(_STREAM)
        rpc.send_response(_spage("ab", "t1"))
        rpc.send_response(_spage("cd", "t2"))
        _wait_until(lambda: len(got) == 4)
        rpc.terminate((), UNAVAILABLE, "connection reset")
        _, second, rpc = rec.channel.take_unary_stream(_STREAM)
        rpc.send_response(_spage("e", ""))
        rpc.terminate((), OK, "")
        assert future.result(timeout=5) == "abcde"
        assert (first.page_token, first.max_messages) == ("", 9)
        assert (second.page_token, second.max_messages) == ("t2", 5)
        assert second.page_size == 2 and fake.sleeps == [0.05]

    def test_stream_gives_up_after_max_attempts_without_progress(
        self, pool: ThreadPoolExecutor
    ) -> None:
        """A page gives the stream its whole retry budget again (two retries of
        three attempts here); failures in a row without a page are bounded."""
        rec, fake = Recorder(), FakeTime()
        client = _client(rec, fake, retry=RetryPolicy(max_attempts=3))
        got: list[str] = []
        future = pool.submit(_collect, client.iter_messages("e", stream=True), got)
        _, _, rpc = rec.channel.take_unary_stream(_STREAM)
        rpc.send_response(_spage("a", "t1"))
        _wait_until(lambda: got == ["a"])
        rpc.terminate((), UNAVAILABLE, "reset")
        for _ in range(2):
            _, request, rpc = rec.channel.take_unary_stream(_STREAM)
            assert request.page_token == "t1"
            rpc.terminate((), UNAVAILABLE, "reset")
        err = _error(future)
        assert err.code is UNAVAILABLE and err.attempts == 3
        assert fake.sleeps == [0.05, 0.1]

    def test_stopping_early_cancels_the_stream(self, pool: ThreadPoolExecutor) -> None:
        """A reader that stops iterating frees the server's stream slot at once."""
        rec, fake = Recorder(), FakeTime()
        messages = _client(rec, fake).iter_messages("e", stream=True)

        def serve_one_page() -> Any:
            _, _, rpc = rec.channel.take_unary_stream(_STREAM)
            rpc.send_response(_spage("ab", "t1"))
            return rpc

        server = pool.submit(serve_one_page)
        assert next(messages).message_id == "a"
        rpc = server.result(timeout=5)
        messages.close()
        # Returns once the client has cancelled (raises if the call ended otherwise).
        pool.submit(rpc.cancelled).result(timeout=5)
