"""`serve` needs only SELECT: a server running as a read-only role answers every read."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guestfeed.v1 import feed_pb2
from guestfeed_server.storage.migrate import PRODUCTION_TABLES

from .conftest import Client, start_client
from .factory import World
from .helpers import MODELS, read_all
from .oracle import Expected, feed

_TYPES = {
    feed_pb2.MESSAGE_TYPE_DIRECT: "direct",
    feed_pb2.MESSAGE_TYPE_ANNOUNCEMENT: "announcement",
    feed_pb2.MESSAGE_TYPE_CHANNEL: "channel",
}


def _as_expected(m: feed_pb2.GuestMessage) -> Expected:
    return Expected(
        uuid.UUID(m.message_id),
        _TYPES[m.message_type],
        m.is_own_message,
        m.is_delivery_backed,
        m.delivery_status,
        m.sender_name,
    )


def _as_role(dsn: str, role: str, password: str) -> str:
    """`dsn` with its user swapped (host, port, database and ?host= socket kept)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(role)}:{quote(password)}@{host}"))


@dataclass
class ReadOnly:
    name: str
    dsn: str


@pytest.fixture
async def readonly_role(admin_dsn: str, admin_pool: asyncpg.Pool) -> AsyncIterator[ReadOnly]:
    """A LOGIN role with only USAGE on public/guestfeed and SELECT on their tables."""
    name = f"gf_ro_{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex
    await admin_pool.execute(
        f"CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}'"
    )
    try:
        await admin_pool.execute(
            f"GRANT USAGE ON SCHEMA public, guestfeed TO {name}; "
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public, guestfeed TO {name}"
        )
        yield ReadOnly(name, _as_role(admin_dsn, name, password))
    finally:
        # Revokes the grants in this database (the role owns nothing), then drops it.
        await admin_pool.execute(f"DROP OWNED BY {name}")
        await admin_pool.execute(f"DROP ROLE {name}")


@pytest.fixture
async def ro_client(readonly_role: ReadOnly) -> AsyncIterator[Client]:
    """A server whose pool connects as the read-only role."""
    c = await start_client(readonly_role.dsn)
    try:
        yield c
    finally:
        await c.stop()


async def _rich_event(world: World) -> tuple[uuid.UUID, uuid.UUID, dict[str, list[uuid.UUID]]]:
    """An event with every kind of message a guest may or may not see.

    Returns (event, the guest's user id, model -> the message ids they see, newest first).
    """
    event = await world.event()
    user, guest = await world.member(event, tags=["vip", "family"], full_name="Rita Reader")
    other, other_guest = await world.member(event, tags=["kids"])
    host = await world.user("Hal Host", "https://img.example/hal.png")
    a1 = await world.message(event, "announcement", sender=host)
    await world.deliver(a1, guest_id=guest, user_id=user)
    a2 = await world.message(event, "announcement")  # no delivery: v2 only
    c_vip = await world.channel(event, ["vip"], sender=host)
    await world.channel(event, ["kids"])  # not for this guest
    c_all = await world.channel(event, [])
    d1 = await world.message(event, "direct", sender=host)
    await world.deliver(d1, guest_id=guest, status="sent")  # guest_id only: v2 only
    await world.deliver(d1, user_id=user, status="delivered")
    d2 = await world.message(event, "direct")
    await world.deliver(d2, guest_id=other_guest, user_id=other)  # someone else's
    own = await world.message(event, "direct", sender=user)
    await world.deliver(own, guest_id=guest, user_id=user, status="failed")
    return event, user, {"v1": [own, d1, a1], "v2": [own, d1, c_all, c_vip, a2, a1]}


class TestReadOnlyRole:
    async def test_role_cannot_write_deliveries(
        self, readonly_role: ReadOnly, world: World
    ) -> None:
        """The role is refused INSERT, UPDATE and DELETE on message_deliveries."""
        event = await world.event()
        user, guest = await world.member(event)
        mid = await world.message(event, "announcement")
        did = await world.deliver(mid, guest_id=guest, user_id=user)
        conn = await asyncpg.connect(readonly_role.dsn)
        try:
            assert await conn.fetchval("SELECT current_user") == readonly_role.name
            assert (
                await conn.fetchval(
                    "SELECT sms_status FROM public.message_deliveries WHERE id = $1", did
                )
                == "delivered"
            )
            statements = [
                (
                    "INSERT INTO public.message_deliveries (message_id, guest_id, sms_status) "
                    "VALUES ($1, $2, 'sent')",
                    (mid, guest),
                ),
                (
                    "UPDATE public.message_deliveries SET sms_status = 'failed' WHERE id = $1",
                    (did,),
                ),
                ("DELETE FROM public.message_deliveries WHERE id = $1", (did,)),
            ]
            for sql, args in statements:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql, *args)
        finally:
            await conn.close()
        rows = await world.pool.fetch(
            "SELECT id, sms_status FROM public.message_deliveries WHERE message_id = $1", mid
        )
        assert [(r["id"], r["sms_status"]) for r in rows] == [(did, "delivered")]

    async def test_role_has_select_only_on_production_tables(
        self, readonly_role: ReadOnly, admin_pool: asyncpg.Pool
    ) -> None:
        """On every production table the role holds SELECT and no write privilege."""
        rows = await admin_pool.fetch(
            """
            SELECT t, p, has_table_privilege($1, 'public.' || t, p) AS granted
            FROM unnest($2::text[]) t,
                 unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p
            """,
            readonly_role.name,
            list(PRODUCTION_TABLES),
        )
        granted = {(r["t"], r["p"]) for r in rows if r["granted"]}
        assert granted == {(t, "SELECT") for t in PRODUCTION_TABLES}

    @pytest.mark.parametrize("model", ["v1", "v2"])
    async def test_list_messages_as_readonly_matches_oracle(
        self, ro_client: Client, world: World, model: str
    ) -> None:
        """A server running as the read-only role pages through the oracle's feed."""
        event, user, ids = await _rich_event(world)
        got = await read_all(ro_client, event, user, model, page_size=2)
        assert [_as_expected(m) for m in got] == feed(world, event, user, model)
        assert [uuid.UUID(m.message_id) for m in got] == ids[model]

    @pytest.mark.parametrize("model", ["v1", "v2"])
    async def test_stream_messages_as_readonly_matches_oracle(
        self, ro_client: Client, world: World, model: str
    ) -> None:
        """StreamMessages served by the read-only role yields the oracle's feed, page after page."""
        event, user, ids = await _rich_event(world)
        call = ro_client.feed.StreamMessages(
            feed_pb2.StreamMessagesRequest(
                event_id=str(event), page_size=3, read_model=MODELS[model]
            ),
            metadata=ro_client.pinning(user),
        )
        got = [m async for page in call for m in page.messages]
        assert [_as_expected(m) for m in got] == feed(world, event, user, model)
        assert [uuid.UUID(m.message_id) for m in got] == ids[model]

    async def test_server_connects_as_the_role_and_is_serving(
        self, ro_client: Client, readonly_role: ReadOnly
    ) -> None:
        """The server's pool runs as the read-only role, and its health probe reports SERVING."""
        assert await ro_client.app.db.pool.fetchval("SELECT current_user") == readonly_role.name
        resp = await health_pb2_grpc.HealthStub(ro_client.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
