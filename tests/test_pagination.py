"""Keyset pagination: page sizes, page tokens, ties and concurrent inserts.

The feed is ordered by (created_at, message_id) descending, and a page token
resumes strictly below the last message served. Tied timestamps are the
norm (a bulk send writes many rows at once), so every test here has them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import uuid
from datetime import UTC
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from guestfeed.v1 import feed_pb2

from .conftest import SECRET, Client
from .factory import World
from .helpers import MODELS, field_violations
from .oracle import Expected, feed
from .scenarios import EventSpec, build_event, event_specs

UNSPECIFIED = feed_pb2.READ_MODEL_UNSPECIFIED
# No feed here has more than 250 messages, so no walk needs more pages than that.
MAX_PAGES = 260
STREAM_DEADLINE_S = 20.0


async def list_page(
    client: Client,
    event: uuid.UUID,
    user: uuid.UUID,
    *,
    model: int,
    size: int = 0,
    token: str = "",
) -> feed_pb2.ListMessagesResponse:
    """One ListMessages call."""
    return await client.feed.ListMessages(
        feed_pb2.ListMessagesRequest(
            event_id=str(event), page_size=size, page_token=token, read_model=model
        ),
        metadata=client.pinning(user),
    )


async def stream_pages(
    client: Client,
    event: uuid.UUID,
    user: uuid.UUID,
    *,
    model: int,
    size: int = 0,
    token: str = "",
    max_messages: int = 0,
    max_pages: int = MAX_PAGES,
) -> list[feed_pb2.StreamMessagesResponse]:
    """Every response of one StreamMessages call (failing past `max_pages`)."""
    call = client.feed.StreamMessages(
        feed_pb2.StreamMessagesRequest(
            event_id=str(event),
            page_size=size,
            page_token=token,
            read_model=model,
            max_messages=max_messages,
        ),
        metadata=client.pinning(user),
        # A cursor that never advances would stream forever: fail fast instead.
        timeout=STREAM_DEADLINE_S,
    )
    out = []
    try:
        async for resp in call:
            out.append(resp)
            assert len(out) <= max_pages, "the stream did not end"
    finally:
        call.cancel()  # a no-op once the stream has ended
    return out


async def list_all_pages(
    client: Client,
    event: uuid.UUID,
    user: uuid.UUID,
    *,
    model: int,
    size: int,
    max_pages: int = MAX_PAGES,
) -> list[feed_pb2.ListMessagesResponse]:
    """Every page of the feed through ListMessages, following the tokens."""
    pages = [await list_page(client, event, user, model=model, size=size)]
    while pages[-1].next_page_token:
        assert len(pages) < max_pages, "pagination did not end"
        token = pages[-1].next_page_token
        pages.append(await list_page(client, event, user, model=model, size=size, token=token))
    return pages


def ids(messages: Any) -> list[str]:
    """The message ids of a sequence of GuestMessage."""
    return [m.message_id for m in messages]


TYPE_NAMES = {
    feed_pb2.MESSAGE_TYPE_DIRECT: "direct",
    feed_pb2.MESSAGE_TYPE_ANNOUNCEMENT: "announcement",
    feed_pb2.MESSAGE_TYPE_CHANNEL: "channel",
}


def summary(m: feed_pb2.GuestMessage) -> Expected:
    """A served message in the oracle's terms."""
    return Expected(
        uuid.UUID(m.message_id),
        TYPE_NAMES[m.message_type],
        m.is_own_message,
        m.is_delivery_backed,
        m.delivery_status,
        m.sender_name,
    )


def oracle_ids(world: World, event: uuid.UUID, user: uuid.UUID, model: str) -> list[str]:
    """The oracle's feed as id strings, newest first."""
    return [str(e.message_id) for e in feed(world, event, user, model)]


def assert_well_paged(pages: list[Any], size: int, want: list[str]) -> None:
    """Pages concatenate to `want`; all but the last are full; only an empty feed has an
    empty page; only the last page has no token."""
    effective = size or 50
    got = [mid for p in pages for mid in ids(p.messages)]
    assert got == want
    assert len(set(got)) == len(got)
    assert all(p.next_page_token for p in pages[:-1])
    assert pages[-1].next_page_token == ""
    assert all(len(p.messages) == effective for p in pages[:-1])
    if want:
        assert 1 <= len(pages[-1].messages) <= effective
    else:
        assert len(pages) == 1 and not pages[0].messages


async def expect_invalid(call: Any) -> grpc.aio.AioRpcError:
    """Awaits `call` (a coroutine) and returns its INVALID_ARGUMENT error."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return err.value


async def bulk_send(
    world: World, event: uuid.UUID, n: int, *, deliver_to: tuple[uuid.UUID, uuid.UUID] | None
) -> list[uuid.UUID]:
    """`n` announcements written at one instant, as a bulk send does."""
    at = world.tick()
    out = []
    for _ in range(n):
        mid = await world.message(event, "announcement", created_at=at)
        if deliver_to is not None:
            user, guest = deliver_to
            await world.deliver(mid, guest_id=guest, user_id=user)
        out.append(mid)
    return out


class TestPagesProperty:
    """Whatever the data and page size, pages tile the oracle's feed exactly."""

    @pytest.mark.parametrize("model", ["v1", "v2"])
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(spec=event_specs)
    async def test_pages_concatenate_to_the_oracle_feed(
        self, client: Client, world: World, model: str, spec: EventSpec
    ) -> None:
        """List pages (and the stream's pages) are exactly the oracle's feed, in order."""
        world.ordered_ids = True  # ties order by the drawn data (see factory.World)
        event, viewer = await build_event(world, spec)
        want = oracle_ids(world, event, viewer, model)
        # A correct walk needs at most one page per message (plus one when empty);
        # stopping there keeps a failing example (and its shrinking) quick.
        limit = len(want) + 1
        pages = await list_all_pages(
            client, event, viewer, model=MODELS[model], size=spec.page_size, max_pages=limit
        )
        assert_well_paged(pages, spec.page_size, want)
        assert all(p.read_model == MODELS[model] for p in pages)
        # Paging must not change what a message says either (status, sender, flags).
        served = [summary(m) for p in pages for m in p.messages]
        assert served == feed(world, event, viewer, model)
        streamed = await stream_pages(
            client, event, viewer, model=MODELS[model], size=spec.page_size, max_pages=limit
        )
        assert [ids(p.messages) for p in streamed] == [ids(p.messages) for p in pages]
        assert [p.next_page_token == "" for p in streamed] == [
            p.next_page_token == "" for p in pages
        ]


class TestTiedTimestamps:
    """A bulk send (one timestamp for many messages) pages without loss or repeats."""

    @pytest.mark.parametrize("model", ["v1", "v2"])
    async def test_bulk_send_pages_at_every_size(
        self, client: Client, world: World, model: str
    ) -> None:
        """120 messages sharing one created_at, at page sizes 1, 7, 50 and 200."""
        event = await world.event()
        user, guest = await world.member(event)
        before = await world.message(event, "announcement")
        await world.deliver(before, guest_id=guest, user_id=user)
        sent = await bulk_send(world, event, 120, deliver_to=(user, guest))
        after = await world.message(event, "announcement")
        await world.deliver(after, guest_id=guest, user_id=user)
        want = oracle_ids(world, event, user, model)
        # By hand: newest first, the tie broken by id descending.
        assert want == [str(after), *sorted(map(str, sent), reverse=True), str(before)]
        for size in (1, 7, 50, 200):
            pages = await list_all_pages(
                client, event, user, model=MODELS[model], size=size, max_pages=len(want)
            )
            assert_well_paged(pages, size, want)
            assert len(pages) == -(-122 // size)


class TestPageSize:
    """AIP-158 page sizes: 0 is 50, too large is 200, negative is an error."""

    async def test_zero_means_fifty(self, client: Client, world: World) -> None:
        """page_size 0 serves 50 messages when more exist."""
        event = await world.event()
        user, _ = await world.member(event)
        sent = await bulk_send(world, event, 60, deliver_to=None)
        resp = await list_page(client, event, user, model=MODELS["v2"], size=0)
        assert len(resp.messages) == 50
        assert resp.next_page_token
        rest = await list_page(
            client, event, user, model=MODELS["v2"], size=0, token=resp.next_page_token
        )
        assert len(rest.messages) == 10 and rest.next_page_token == ""
        assert sorted(ids(resp.messages) + ids(rest.messages)) == sorted(map(str, sent))

    async def test_too_large_is_coerced_to_two_hundred(self, client: Client, world: World) -> None:
        """page_size 500 serves at most 200 messages, in both RPCs."""
        event = await world.event()
        user, _ = await world.member(event)
        await bulk_send(world, event, 205, deliver_to=None)
        want = oracle_ids(world, event, user, "v2")
        resp = await list_page(client, event, user, model=MODELS["v2"], size=500)
        assert ids(resp.messages) == want[:200]
        assert resp.next_page_token
        streamed = await stream_pages(client, event, user, model=MODELS["v2"], size=500)
        assert [len(p.messages) for p in streamed] == [200, 5]

    @pytest.mark.parametrize("size", [-1, -50, -(2**31)])
    async def test_negative_is_invalid_argument(
        self, client: Client, world: World, size: int
    ) -> None:
        """A negative page_size is INVALID_ARGUMENT naming page_size, in both RPCs."""
        event = await world.event()
        user, _ = await world.member(event)
        err = await expect_invalid(list_page(client, event, user, model=MODELS["v1"], size=size))
        assert "page_size" in field_violations(err)
        err = await expect_invalid(stream_pages(client, event, user, model=MODELS["v2"], size=size))
        assert "page_size" in field_violations(err)


def flip(token: str, at: int) -> str:
    """`token` with the character at `at` replaced by another base64url character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    new = alphabet[(alphabet.index(token[at]) + 1) % len(alphabet)]
    return token[:at] + new + token[at + 1 :]


def v1_token(
    event: uuid.UUID, user: uuid.UUID, *, read_model_code: int, micros: int, message_id: str
) -> str:
    """A page token in the version 1 format (HMAC-SHA256), frozen here as issued then."""
    key = hashlib.sha256(b"guestfeed page token v1\x00" + SECRET.encode()).digest()
    body = struct.pack(
        ">BB16s8sq16s",
        1,
        read_model_code,
        event.bytes,
        hashlib.sha256(user.bytes).digest()[:8],
        micros,
        uuid.UUID(message_id).bytes,
    )
    return (
        base64.urlsafe_b64encode(body + hmac.digest(key, body, "sha256")[:12]).rstrip(b"=").decode()
    )


class TestPageTokens:
    """Tokens are opaque, tamper-evident and bound to event, caller and read model."""

    async def first_token(
        self, client: Client, world: World, model: str = "v2"
    ) -> tuple[uuid.UUID, uuid.UUID, str]:
        """A fresh event with 5 announcements, a guest, and their first page's token."""
        event = await world.event()
        user, guest = await world.member(event)
        await bulk_send(world, event, 5, deliver_to=(user, guest))
        resp = await list_page(client, event, user, model=MODELS[model], size=2)
        assert resp.next_page_token
        return event, user, resp.next_page_token

    async def test_token_for_another_event_is_rejected(self, client: Client, world: World) -> None:
        """A token reused with another event_id (same caller, a guest there) is rejected."""
        _, user, token = await self.first_token(client, world)
        other_event = await world.event()
        await world.guest(other_event, user)
        await bulk_send(world, other_event, 5, deliver_to=None)
        err = await expect_invalid(
            list_page(client, other_event, user, model=MODELS["v2"], size=2, token=token)
        )
        assert "page_token" in field_violations(err)

    async def test_token_for_another_caller_is_rejected(self, client: Client, world: World) -> None:
        """A token reused by another guest of the same event is rejected."""
        event, _, token = await self.first_token(client, world)
        someone_else, _ = await world.member(event)
        err = await expect_invalid(
            list_page(client, event, someone_else, model=MODELS["v2"], size=2, token=token)
        )
        assert "page_token" in field_violations(err)
        err = await expect_invalid(
            stream_pages(client, event, someone_else, model=MODELS["v2"], size=2, token=token)
        )
        assert "page_token" in field_violations(err)

    @pytest.mark.parametrize(("issued", "used"), [("v1", "v2"), ("v2", "v1")])
    async def test_token_with_explicit_other_read_model_is_rejected(
        self, client: Client, world: World, issued: str, used: str
    ) -> None:
        """A token issued for one read model, sent with the other explicitly, is rejected."""
        event, user, token = await self.first_token(client, world, issued)
        err = await expect_invalid(
            list_page(client, event, user, model=MODELS[used], size=2, token=token)
        )
        assert "page_token" in field_violations(err)

    async def test_a_version_1_token_from_a_replica_not_yet_upgraded_still_resumes(
        self, client: Client, world: World
    ) -> None:
        """Tokens minted with the old HMAC-SHA256 scheme keep working during a rollout."""
        event, user, token = await self.first_token(client, world)
        first = await list_page(client, event, user, model=MODELS["v2"], size=2)
        last = first.messages[-1]
        micros = last.created_at.seconds * 1_000_000 + last.created_at.nanos // 1000
        old = v1_token(event, user, read_model_code=2, micros=micros, message_id=last.message_id)
        via_old = await list_page(client, event, user, model=MODELS["v2"], size=2, token=old)
        via_new = await list_page(client, event, user, model=MODELS["v2"], size=2, token=token)
        assert [m.message_id for m in via_old.messages] == [m.message_id for m in via_new.messages]
        assert via_old.messages
        # ...and an old token is bound to its caller like a new one.
        someone_else, _ = await world.member(event)
        err = await expect_invalid(
            list_page(client, event, someone_else, model=MODELS["v2"], size=2, token=old)
        )
        assert "page_token" in field_violations(err)

    async def test_damaged_tokens_are_rejected(self, client: Client, world: World) -> None:
        """Garbage, truncated and one-character-flipped tokens are INVALID_ARGUMENT."""
        event, user, token = await self.first_token(client, world)
        raw = base64.urlsafe_b64encode(b"\x01\x02" + uuid.uuid4().bytes).decode()
        damaged = {
            "garbage": "not-a-token",
            "not base64": "!!!!$$$$",
            "base64 of junk": raw,
            "truncated by 1": token[:-1],
            "truncated by 4": token[:-4],
            "half": token[: len(token) // 2],
            "extended": token + "AAAA",
            "flipped first": flip(token, 0),
            "flipped middle": flip(token, len(token) // 2),
            "flipped near end": flip(token, len(token) - 3),
            "too long": token * 20,
        }
        for what, bad in damaged.items():
            assert bad != token, what
            err = await expect_invalid(
                list_page(client, event, user, model=MODELS["v2"], size=2, token=bad)
            )
            assert "page_token" in field_violations(err), what
        # UNSPECIFIED must not read the model from a token it cannot trust either.
        err = await expect_invalid(
            list_page(client, event, user, model=UNSPECIFIED, size=2, token=flip(token, 10))
        )
        assert "page_token" in field_violations(err)

    @pytest.mark.parametrize("model", ["v1", "v2"])
    async def test_list_token_resumes_in_stream(
        self, client: Client, world: World, model: str
    ) -> None:
        """A ListMessages token continues in StreamMessages where the page ended."""
        event, user, token = await self.first_token(client, world, model)
        want = oracle_ids(world, event, user, model)
        first = await list_page(client, event, user, model=MODELS[model], size=2)
        streamed = await stream_pages(client, event, user, model=MODELS[model], size=2, token=token)
        assert ids(first.messages) + [m for p in streamed for m in ids(p.messages)] == want
        assert streamed[-1].next_page_token == ""

    @pytest.mark.parametrize("model", ["v1", "v2"])
    async def test_stream_token_resumes_in_list(
        self, client: Client, world: World, model: str
    ) -> None:
        """A StreamMessages token (stopped by max_messages) continues in ListMessages."""
        event, user, _ = await self.first_token(client, world, model)
        want = oracle_ids(world, event, user, model)
        streamed = await stream_pages(
            client, event, user, model=MODELS[model], size=2, max_messages=2
        )
        assert len(streamed) == 1 and streamed[0].next_page_token
        got = ids(streamed[0].messages)
        token = streamed[0].next_page_token
        while token:
            resp = await list_page(client, event, user, model=MODELS[model], size=2, token=token)
            got += ids(resp.messages)
            token = resp.next_page_token
        assert got == want

    async def test_unspecified_model_resumes_in_the_tokens_model(
        self, client: Client, world: World
    ) -> None:
        """With read_model UNSPECIFIED, a V2 token resumes the V2 feed (not the V1 default)."""
        event = await world.event()
        user, guest = await world.member(event)
        delivered = await bulk_send(world, event, 2, deliver_to=(user, guest))
        v2_only = await bulk_send(world, event, 3, deliver_to=None)
        assert len(oracle_ids(world, event, user, "v1")) == 2
        want = oracle_ids(world, event, user, "v2")
        assert set(want) == set(map(str, delivered + v2_only))
        first = await list_page(client, event, user, model=MODELS["v2"], size=2)
        rest = await list_page(
            client, event, user, model=UNSPECIFIED, size=10, token=first.next_page_token
        )
        assert rest.read_model == feed_pb2.READ_MODEL_V2
        assert ids(first.messages) + ids(rest.messages) == want
        streamed = await stream_pages(
            client, event, user, model=UNSPECIFIED, size=1, token=first.next_page_token
        )
        assert all(p.read_model == feed_pb2.READ_MODEL_V2 for p in streamed)
        assert ids(first.messages) + [m for p in streamed for m in ids(p.messages)] == want

    async def test_tokens_are_opaque(self, client: Client, world: World) -> None:
        """A token does not spell out the event, the caller or a message id."""
        event, user, token = await self.first_token(client, world)
        first = await list_page(client, event, user, model=MODELS["v2"], size=2)
        for visible in (str(event), str(user), first.messages[-1].message_id):
            assert visible not in token
            assert visible.replace("-", "") not in token


class TestKeysetStability:
    """Paging from a token is unaffected by messages that arrive meanwhile."""

    @pytest.mark.parametrize("model", ["v1", "v2"])
    async def test_new_messages_while_paging_cause_no_loss_or_repeat(
        self, client: Client, world: World, model: str
    ) -> None:
        """Messages newer than the first page (or tied above its cursor) do not disturb it."""
        event = await world.event()
        user, guest = await world.member(event)
        tied_at = world.tick()
        old = []
        for _ in range(4):
            old += await bulk_send(world, event, 3, deliver_to=(user, guest))
        for _ in range(3):
            mid = await world.message(event, "announcement", created_at=tied_at)
            await world.deliver(mid, guest_id=guest, user_id=user)
            old.append(mid)
        want = oracle_ids(world, event, user, model)
        assert sorted(want) == sorted(map(str, old))

        pages = [await list_page(client, event, user, model=MODELS[model], size=4)]
        last = pages[0].messages[-1]
        # Newer than everything, and tied with the cursor but above it in id order.
        newer = await bulk_send(world, event, 3, deliver_to=(user, guest))
        above = await world.message(
            event,
            "announcement",
            created_at=last.created_at.ToDatetime(tzinfo=UTC),
            id=uuid.UUID(int=uuid.UUID(last.message_id).int + 1),
        )
        await world.deliver(above, guest_id=guest, user_id=user)
        while pages[-1].next_page_token:
            token = pages[-1].next_page_token
            pages.append(
                await list_page(client, event, user, model=MODELS[model], size=4, token=token)
            )
            if len(pages) == 2:
                newer += await bulk_send(world, event, 2, deliver_to=(user, guest))
        got = [mid for p in pages for mid in ids(p.messages)]
        assert got == want
        # A fresh read sees the new messages too, each in its place.
        again = await list_all_pages(client, event, user, model=MODELS[model], size=3)
        fresh = [mid for p in again for mid in ids(p.messages)]
        assert fresh == oracle_ids(world, event, user, model)
        assert set(fresh) == set(want) | {str(m) for m in [*newer, above]}
