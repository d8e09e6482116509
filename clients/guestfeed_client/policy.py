"""What both clients share: bearer tokens, deadlines and the retry policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from guestfeed.v1 import feed_pb2

from .errors import RPCError

TokenSource = str | Callable[[], str]
"""A JWT, or a function that returns the current one (called for every attempt)."""

AsyncTokenSource = str | Callable[[], str | Awaitable[str]]
"""As `TokenSource`; the asyncio client also awaits a provider's awaitable."""

Metadata = tuple[tuple[str, str], ...]

# UNAVAILABLE is the one code that says "the request was not served, try
# again": the transport could not deliver it or the server's database is
# down. Everything else (a deadline, a refusal, RESOURCE_EXHAUSTED from the
# stream limit) would fail the same way again or needs the caller to decide.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


def bearer_metadata(token: TokenSource) -> Metadata:
    """Call metadata with the token (fetched afresh when it is a function)."""
    return bearer(token() if callable(token) else token)


def bearer(value: str) -> Metadata:
    """Call metadata carrying `value` as a bearer token."""
    return (("authorization", f"Bearer {value}"),)


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed idempotent call is retried.

    Only UNAVAILABLE is retried, after a pause drawn uniformly from
    [0, min(max_backoff, initial_backoff * multiplier**(n-1))) before retry n
    ("full jitter", so clients that failed together do not return together),
    and never past the call's deadline: each attempt gets the time that is
    left, and no retry starts when its pause would reach the deadline.
    `max_attempts` counts the first attempt, so 1 never retries.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")

    def backoff(self, retry: int, rng: Callable[[], float]) -> float:
        """The pause before retry number `retry` (1 for the first retry)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return cap * rng()


DEFAULT_RETRY = RetryPolicy()

NO_RETRY = RetryPolicy(max_attempts=1)
"""For calls that must not be repeated blindly (UpdateRolloutConfig)."""


def page_timeout(default: float | None, deadline: float | None, now: float) -> float | None:
    """One page's deadline: the client's default, cut short by the iteration's own."""
    if deadline is None:
        return default
    left = max(deadline - now, 1e-6)
    return left if default is None else min(default, left)


class Attempts:
    """The attempts of one logical call: the deadline they share and whether to retry.

    A stream that makes progress (receives a page) gets its whole budget
    again, as if it had just been opened: a long stream may resume more than
    `max_attempts` times in all, but never fails more than that in a row.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float | None,
        *,
        clock: Callable[[], float],
        rng: Callable[[], float],
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._deadline = None if timeout is None else clock() + timeout
        self.made = 0  # every attempt of the call
        self._run = 0  # attempts since the last progress, this one included

    def start(self) -> float | None:
        """Counts an attempt; returns its timeout: the time left, or None for no deadline."""
        self.made += 1
        self._run += 1
        if self._deadline is None:
            return None
        # A zero timeout would mean "no deadline" to some callables; a tiny
        # positive one fails as DEADLINE_EXCEEDED, which is the truth.
        return max(self._deadline - self._clock(), 1e-6)

    def progress(self) -> None:
        """The current attempt delivered something: a later failure starts a new run."""
        self._run = 1

    def pause_after(self, err: RPCError) -> float | None:
        """How long to wait before retrying after `err`, or None to give up and raise it."""
        err.attempts = self.made
        if err.code not in RETRYABLE or self._run >= self._policy.max_attempts:
            return None
        pause = self._policy.backoff(self._run, self._rng)
        if self._deadline is not None and self._clock() + pause >= self._deadline:
            return None
        return pause


@dataclass
class Resume:
    """Where an iteration over the feed stands, so a retry picks up after the last
    page received: its token, and how many messages are still wanted."""

    page_token: str
    max_messages: int  # 0: no limit
    finished: bool = False

    def __post_init__(self) -> None:
        # Paging never sends max_messages, so the server cannot refuse it there.
        if self.max_messages < 0:
            raise ValueError(f"max_messages must be >= 0, got {self.max_messages}")

    def stream_request(
        self, event_id: str, page_size: int, read_model: feed_pb2.ReadModel
    ) -> feed_pb2.StreamMessagesRequest:
        """The StreamMessages call that continues from here (both clients send it)."""
        return feed_pb2.StreamMessagesRequest(
            event_id=event_id,
            page_size=page_size,
            page_token=self.page_token,
            read_model=read_model,
            max_messages=self.max_messages,
        )

    def took(self, next_page_token: str, count: int) -> int:
        """Records a delivered page; returns how many of its messages to yield."""
        if self.max_messages:
            count = min(count, self.max_messages)
            self.max_messages -= count
            self.finished = self.max_messages == 0
        self.page_token = next_page_token
        self.finished = self.finished or not next_page_token
        return count
