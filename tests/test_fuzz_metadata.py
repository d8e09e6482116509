"""Call metadata fuzzed against a real server: missing, repeated, oversized, binary, reserved.

Every example is one call with generated metadata and an exact expectation:
gRPC's own size limit (RESOURCE_EXHAUSTED) only past its 8 KiB soft limit,
otherwise the service's answer as `auth/verify.py: _bearer` defines it (no
`authorization` entry: TOKEN_MISSING; two or more: refused, never one picked;
one: accepted only when it is `Bearer <a valid token>`, in any case of the
scheme). Then, for every example: never INTERNAL or UNKNOWN, a success shows
exactly the authenticated guest's feed (never the other guest's direct
message), and the server still answers a valid call.

The server is traced on the SDK provider, so a garbage `traceparent` goes
through the real propagator and a recording span.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc._cython import cygrpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from guestfeed.v1 import feed_pb2
from guestfeed_server.auth import mint

from .conftest import SECRET, Client
from .factory import World
from .helpers import error_info
from .telemetry_helpers import traced_server
from .tracing import Tracing

# The aio client raises this (no public name) for metadata it refuses to send:
# upper-case or spaced keys, pseudo-headers, values outside printable ASCII.
CLIENT_REFUSED = cygrpc.ExecuteBatchError
# gRPC's default soft limit on received metadata (GRPC_ARG_MAX_METADATA_SIZE);
# each entry counts its key, its value and 32 bytes (HPACK's accounting).
SOFT_LIMIT = 8192
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@dataclass(frozen=True)
class Pair:
    """Two guests of one event, each with a direct message only they may read."""

    event: uuid.UUID
    a: uuid.UUID
    b: uuid.UUID
    dm_a: str
    dm_b: str
    feeds: dict[uuid.UUID, frozenset[str]]
    tokens: dict[uuid.UUID, str]


@pytest.fixture(scope="module")
async def server(admin_dsn: str, tracing: Tracing) -> AsyncIterator[Client]:
    """A replica with telemetry on the SDK tracer, for this module only."""
    async with traced_server(admin_dsn, tracing) as traced:
        yield traced.client


@pytest.fixture
async def pair(server: Client, world: World) -> Pair:
    """Guests A and B: a direct message to each, one announcement to both."""
    event = await world.event()
    a, guest_a = await world.member(event)
    b, guest_b = await world.member(event)
    dm_a = await world.message(event, "direct")
    await world.deliver(dm_a, guest_id=guest_a, user_id=a)
    dm_b = await world.message(event, "direct")
    await world.deliver(dm_b, guest_id=guest_b, user_id=b)
    shared = await world.message(event, "announcement")
    for guest, user in ((guest_a, a), (guest_b, b)):
        await world.deliver(shared, guest_id=guest, user_id=user)
    found = Pair(
        event,
        a,
        b,
        str(dm_a),
        str(dm_b),
        feeds={a: frozenset({str(dm_a), str(shared)}), b: frozenset({str(dm_b), str(shared)})},
        tokens={a: Client.token(a), b: Client.token(b)},
    )
    # The oracle's premise: each guest's feed is exactly what `feeds` says.
    for user in (a, b):
        metadata = [("authorization", f"Bearer {found.tokens[user]}")]
        assert await read(server, found, metadata) == found.feeds[user]
    return found


async def read(
    client: Client, pair: Pair, metadata: list[tuple[str, Any]], stream: bool = False
) -> frozenset[str]:
    """The message ids one ListMessages (or a whole StreamMessages) call returns."""
    if not stream:
        response = await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(event_id=str(pair.event)), metadata=metadata, timeout=10
        )
        return frozenset(m.message_id for m in response.messages)
    call = client.feed.StreamMessages(
        feed_pb2.StreamMessagesRequest(event_id=str(pair.event)), metadata=metadata, timeout=10
    )
    return frozenset([m.message_id async for page in call for m in page.messages])


def metadata_size(metadata: list[tuple[str, Any]]) -> int:
    """An upper bound of what gRPC counts against its limit (binary values go as base64)."""
    return sum(
        len(k) + 32 + (len(v) * 4 // 3 + 4 if isinstance(v, bytes) else len(v)) for k, v in metadata
    )


def client_refuses(key: str, value: Any) -> bool:
    """True for an entry the gRPC client library will not send."""
    if not key or any(c not in KEY_CHARS for c in key):
        return True
    return isinstance(value, str) and any(not 0x20 <= ord(c) <= 0x7E for c in value)


def who(pair: Pair, value: str) -> uuid.UUID | None:
    """The guest an `authorization` value authenticates, as `_bearer` reads it."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return next((u for u, t in pair.tokens.items() if t == token.strip()), None)


def _no_tally(_: str) -> None:
    pass


async def check(
    client: Client,
    pair: Pair,
    metadata: list[tuple[str, Any]],
    stream: bool = False,
    tally: Callable[[str], None] = _no_tally,
) -> None:
    """The properties every example must hold (see the module docstring); `tally`
    counts outcomes (hypothesis.event, which only works inside @given)."""
    auth = [v for k, v in metadata if k == "authorization"]
    unsendable = any(client_refuses(k, v) for k, v in metadata)
    try:
        got = await read(client, pair, metadata, stream)
    except CLIENT_REFUSED:
        # Never sent, so nothing of the server's is tested; not counted.
        assert unsendable, metadata
        tally("refused by the client library")
        return
    except grpc.aio.AioRpcError as err:
        code, details = err.code(), err.details() or ""
        if unsendable and (code, details) == (grpc.StatusCode.INTERNAL, "Invalid metadata"):
            # A stream reports the same client-side refusal as a status of its own.
            tally("refused by the client library")
            return
        assert code not in NEVER, (code, details)
        tally(f"status {code.name}")
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            # gRPC's own limit, before any of our code runs.
            assert metadata_size(metadata) > SOFT_LIMIT, details
            return
        assert code is grpc.StatusCode.UNAUTHENTICATED, (code, details)
        info = error_info(err)
        assert info is not None and info.domain == "guestfeed.v1", details
        if not auth:
            assert info.reason == "TOKEN_MISSING", details
        elif len(auth) > 1:
            assert "exactly one 'authorization'" in details
        else:
            assert who(pair, auth[0]) is None, details
        return
    tally("served")
    assert len(auth) == 1, "a call without exactly one authorization entry was served"
    viewer = who(pair, auth[0])
    assert viewer is not None, f"served for an authorization value no guest owns: {auth[0]!r}"
    assert not got & ({pair.dm_a, pair.dm_b} - pair.feeds[viewer]), "another guest's message"
    assert got == pair.feeds[viewer]


async def still_serving(client: Client, pair: Pair) -> None:
    """A valid call after the example is served as usual."""
    metadata = [("authorization", f"Bearer {pair.tokens[pair.a]}")]
    assert await read(client, pair, metadata) == pair.feeds[pair.a]


KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_."
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120)
plain_key = st.text(KEY_CHARS, min_size=1, max_size=30).filter(
    lambda k: not k.endswith("-bin") and k != "authorization"
)
hex_digits = st.text("0123456789abcdef", min_size=0, max_size=34)
# Headers gRPC keeps for itself; the client drops or rewrites them. Not
# grpc-status: sent by a grpcio client (any value but "0"), that client ends
# its own call OK with no message, although the server answers it correctly
# (checked with curl over h2c): a client library quirk, not the server's.
reserved = st.sampled_from(
    [
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-message",
        "grpc-previous-rpc-attempts",
        "te",
        "content-type",
        "content-length",
        "user-agent",
        "host",
        "connection",
    ]
)
traceparent = (
    printable
    | st.builds(
        lambda v, t, s, f: f"{v}-{t}-{s}-{f}",
        st.sampled_from(["00", "ff", "01", "zz", ""]),
        hex_digits,
        hex_digits,
        st.sampled_from(["01", "00", "ff", "x", ""]),
    )
    | st.just("00-" + "0" * 32 + "-" + "0" * 16 + "-01")
)
# What the client library refuses to send (caught, and not counted).
forbidden = st.one_of(
    st.tuples(
        st.sampled_from(["Authorization", "X-Upper", "bad key", ":path", ":authority"]), printable
    ),
    st.tuples(st.just("authorization"), st.sampled_from(["Bearer é", "Bearer \x01", "Bearer\tx"])),
)
oversized = st.sampled_from([4096, 8000, 8192, 8300, 12_000, 16_384, 16_400, 40_000])


def others(pair: Pair) -> st.SearchStrategy[tuple[str, Any]]:
    """Small metadata entries other than text `authorization` ones."""
    token_bytes = st.sampled_from([f"Bearer {t}".encode() for t in pair.tokens.values()])
    return st.one_of(
        st.tuples(plain_key, printable),
        st.tuples(plain_key.map(lambda k: k + "-bin"), st.binary(max_size=300)),
        # A binary twin of the real header, even carrying a valid token, is
        # not the `authorization` entry and must never authenticate.
        st.tuples(st.just("authorization-bin"), token_bytes | st.binary(max_size=300)),
        st.tuples(st.just("traceparent"), traceparent),
        st.tuples(st.sampled_from(["tracestate", "baggage"]), printable),
        st.tuples(st.just("grpc-trace-bin"), st.binary(max_size=64)),
        st.tuples(reserved, printable),
    )


def big(pair: Pair) -> st.SearchStrategy[tuple[str, Any]]:
    """One entry of 4-40 KiB: padding, binary, or a valid token padded with spaces."""
    tokens = st.sampled_from(list(pair.tokens.values()))
    return st.one_of(
        st.tuples(plain_key, oversized.map(lambda n: "p" * n)),
        st.tuples(plain_key.map(lambda k: k + "-bin"), oversized.map(lambda n: b"\xff" * n)),
        st.tuples(
            st.just("authorization"),
            st.builds(lambda t, n: f"Bearer {t}" + " " * n, tokens, oversized)
            | oversized.map(lambda n: "Bearer " + "a" * n),
        ),
    )


def authorization(pair: Pair) -> st.SearchStrategy[str]:
    """`authorization` values: valid tokens in many spellings, and invalid ones."""
    valid = st.sampled_from(list(pair.tokens.values()))
    invalid = st.one_of(
        st.just(mint(SECRET, uuid.uuid4(), ttl_s=-60)),  # expired
        st.just(mint("another-secret-" + "y" * 40, pair.a)),  # forged
        st.just(mint(SECRET, pair.a)[:-3] + "AAA"),  # tampered
        printable,
    )
    spelled = st.builds(
        lambda lead, scheme, gap, t, tail: f"{lead}{scheme}{gap}{t}{tail}",
        st.sampled_from(["", " ", "  "]),
        st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
        st.sampled_from([" ", " ", "  "]),
        valid,
        st.sampled_from(["", " ", "   "]),
    )
    misspelled = st.builds(
        lambda scheme, gap, t: f"{scheme}{gap}{t}",
        st.sampled_from(["Basic", "Token", "JWT", "Bearer:", "Bearerr", "", "Bearer"]),
        st.sampled_from([" ", ""]),
        valid | invalid,
    )
    # Mostly valid ones, so that the served path is exercised as often as the refusals.
    return st.sampled_from([spelled, spelled, spelled, misspelled, printable]).flatmap(lambda x: x)


def metadata(pair: Pair) -> st.SearchStrategy[list[tuple[str, Any]]]:
    """0-3 authorization entries (mostly one), up to 6 others, now and then a big one."""

    @st.composite
    def draw(draw: st.DrawFn) -> list[tuple[str, Any]]:
        count = draw(st.sampled_from([1, 1, 1, 1, 0, 2, 3]))
        entries: list[tuple[str, Any]] = [
            ("authorization", draw(authorization(pair))) for _ in range(count)
        ]
        entries += draw(st.lists(others(pair), max_size=6))
        if draw(st.sampled_from([False, False, False, True])):
            entries.append(draw(big(pair)))
        return draw(st.permutations(entries))

    return draw()


class TestFuzzedMetadata:
    @FUZZ
    @given(data=st.data(), stream=st.booleans())
    async def test_any_metadata_is_answered_by_its_rules(
        self, server: Client, pair: Pair, data: st.DataObject, stream: bool
    ) -> None:
        """Any metadata mix gets its exact answer, never INTERNAL, never another guest's message."""
        drawn = data.draw(metadata(pair))
        await check(server, pair, drawn, stream, tally=event)
        await still_serving(server, pair)

    @settings(
        max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(data=st.data(), stream=st.booleans())
    async def test_metadata_the_client_cannot_send_leaves_the_server_unharmed(
        self, server: Client, pair: Pair, data: st.DataObject, stream: bool
    ) -> None:
        """Upper-case keys, pseudo-headers, non-ASCII values: refused by the client, not counted."""
        drawn = data.draw(st.lists(forbidden, min_size=1, max_size=2))
        drawn += data.draw(metadata(pair))
        await check(server, pair, data.draw(st.permutations(drawn)), stream, tally=event)
        await still_serving(server, pair)

    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(data=st.data())
    async def test_repeated_authorization_is_refused_even_when_all_are_valid(
        self, server: Client, pair: Pair, data: st.DataObject
    ) -> None:
        """Two or more authorization entries are refused, never one picked, valid or not."""
        tokens = st.sampled_from(list(pair.tokens.values()))
        values = data.draw(
            st.lists(tokens.map(lambda t: f"Bearer {t}"), min_size=2, max_size=4)
            | st.lists(authorization(pair), min_size=2, max_size=4)
        )
        extra = data.draw(st.lists(others(pair), max_size=3))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read(server, pair, [*(("authorization", v) for v in values), *extra])
        err = caught.value
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err.details()
        assert "exactly one 'authorization'" in (err.details() or "")
        await still_serving(server, pair)

    @settings(
        max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(key=plain_key, value=st.binary(max_size=2048))
    async def test_binary_headers_never_authenticate(
        self, server: Client, pair: Pair, key: str, value: bytes
    ) -> None:
        """`-bin` headers of any bytes, `authorization-bin` too, leave a call unauthenticated."""
        for name in (key + "-bin", "authorization-bin"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await read(server, pair, [(name, value)])
            info = error_info(caught.value)
            assert info is not None and info.reason == "TOKEN_MISSING", caught.value.details()
        await still_serving(server, pair)


class TestOversizedMetadata:
    @pytest.mark.parametrize("size", [4096, 8000, 8192, 12_000, 16_384, 16_400, 65_536])
    @pytest.mark.parametrize("where", ["authorization", "x-padding", "padding-bin"])
    async def test_oversized_values_are_refused_cleanly(
        self, server: Client, pair: Pair, size: int, where: str
    ) -> None:
        """A 4-64 KiB value is served, or refused past 8 KiB (RESOURCE_EXHAUSTED)."""
        if where == "authorization":
            # A valid token padded with spaces: the padding is trimmed if it gets through.
            entries: list[tuple[str, Any]] = [
                ("authorization", f"Bearer {pair.tokens[pair.b]}" + " " * size)
            ]
        elif where == "padding-bin":
            entries = [("authorization", f"Bearer {pair.tokens[pair.b]}"), (where, b"\0" * size)]
        else:
            entries = [("authorization", f"Bearer {pair.tokens[pair.b]}"), (where, "p" * size)]
        await check(server, pair, entries)
        await still_serving(server, pair)

    async def test_many_small_headers_are_refused_cleanly(self, server: Client, pair: Pair) -> None:
        """Hundreds of small headers past the limit are RESOURCE_EXHAUSTED, not INTERNAL."""
        entries: list[tuple[str, Any]] = [(f"x-h{i}", "v" * 100) for i in range(200)]
        entries.append(("authorization", f"Bearer {pair.tokens[pair.a]}"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read(server, pair, entries)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
        await still_serving(server, pair)
