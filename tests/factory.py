"""Test data: writes rows to the production tables and remembers them for the oracle.

The service never writes these tables; tests arrange data as the host app and
the SMS pipeline would, through a superuser pool.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

BASE = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Guest:
    id: uuid.UUID
    event_id: uuid.UUID
    user_id: uuid.UUID | None
    guest_name: str | None
    tags: list[str]
    role: str
    removed: bool = False


@dataclass
class Scheduled:
    id: uuid.UUID
    event_id: uuid.UUID
    tags: list[str] | None


@dataclass
class Message:
    id: uuid.UUID
    event_id: uuid.UUID
    sender: uuid.UUID | None
    type: str
    scheduled_id: uuid.UUID | None
    created_at: datetime
    content: str


@dataclass
class Delivery:
    id: uuid.UUID
    message_id: uuid.UUID
    guest_id: uuid.UUID | None
    user_id: uuid.UUID | None
    status: str
    created_at: datetime


@dataclass
class World:
    """Builds rows in PostgreSQL and keeps an in-memory copy of them."""

    pool: asyncpg.Pool
    users: dict[uuid.UUID, tuple[str | None, str | None]] = field(default_factory=dict)
    guests: list[Guest] = field(default_factory=list)
    scheduled: dict[uuid.UUID, Scheduled] = field(default_factory=dict)
    messages: dict[uuid.UUID, Message] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    _clock: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Ordered ids: each new id is greater than the last (a counter in the high
    # bits, this World's random salt in the low ones). Property tests use them:
    # rows that tie on created_at are then ordered by the drawn data, not by
    # chance, so a replayed example orders exactly as the first run did, and a
    # real failure is never reported as "flaky".
    ordered_ids: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _salt: int = field(default_factory=lambda: uuid.uuid4().int & ((1 << 64) - 1))

    def new_id(self) -> uuid.UUID:
        """A fresh id: random, or increasing when `ordered_ids` is set."""
        if self.ordered_ids:
            return uuid.UUID(int=(next(self._ids) << 64) | self._salt)
        return uuid.uuid4()

    def tick(self) -> datetime:
        """A fresh, strictly later timestamp."""
        return BASE + timedelta(seconds=next(self._clock))

    async def user(
        self, full_name: str | None = "Some User", avatar_url: str | None = None
    ) -> uuid.UUID:
        uid = self.new_id()
        await self.pool.execute(
            "INSERT INTO public.users (id, full_name, avatar_url) VALUES ($1, $2, $3)",
            uid,
            full_name,
            avatar_url,
        )
        self.users[uid] = (full_name, avatar_url)
        return uid

    async def event(self, host: uuid.UUID | None = None) -> uuid.UUID:
        host = host or await self.user("Host Person")
        eid = self.new_id()
        await self.pool.execute(
            "INSERT INTO public.events (id, title, host_user_id) VALUES ($1, 'Test event', $2)",
            eid,
            host,
        )
        return eid

    async def guest(
        self,
        event_id: uuid.UUID,
        user_id: uuid.UUID | None = None,
        *,
        tags: Sequence[str] = (),
        name: str | None = "Guest Name",
        role: str = "guest",
        removed: bool = False,
    ) -> uuid.UUID:
        gid = self.new_id()
        await self.pool.execute(
            "INSERT INTO public.event_guests "
            "(id, event_id, user_id, guest_name, guest_tags, role, removed_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $7 THEN now() END)",
            gid,
            event_id,
            user_id,
            name,
            list(tags),
            role,
            removed,
        )
        self.guests.append(Guest(gid, event_id, user_id, name, list(tags), role, removed))
        return gid

    async def member(
        self, event_id: uuid.UUID, *, tags: Sequence[str] = (), full_name: str | None = "Member"
    ) -> tuple[uuid.UUID, uuid.UUID]:
        """A user with an active guest row: returns (user_id, guest_id)."""
        uid = await self.user(full_name)
        gid = await self.guest(event_id, uid, tags=tags, name=full_name)
        return uid, gid

    async def remove(self, guest_id: uuid.UUID) -> None:
        await self.pool.execute(
            "UPDATE public.event_guests SET removed_at = now() WHERE id = $1", guest_id
        )
        for g in self.guests:
            if g.id == guest_id:
                g.removed = True

    async def schedule(self, event_id: uuid.UUID, tags: Sequence[str] | None) -> uuid.UUID:
        sid = self.new_id()
        await self.pool.execute(
            "INSERT INTO public.scheduled_messages "
            "(id, event_id, content, message_type, target_guest_tags, send_at) "
            "VALUES ($1, $2, 'scheduled', 'channel', $3, now())",
            sid,
            event_id,
            None if tags is None else list(tags),
        )
        self.scheduled[sid] = Scheduled(sid, event_id, None if tags is None else list(tags))
        return sid

    async def message(
        self,
        event_id: uuid.UUID,
        type: str,
        *,
        sender: uuid.UUID | None = None,
        scheduled_id: uuid.UUID | None = None,
        created_at: datetime | None = None,
        content: str | None = None,
        id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        mid = id or self.new_id()
        at = created_at or self.tick()
        text = content or f"{type} message {mid.hex[:6]}"
        await self.pool.execute(
            "INSERT INTO public.messages (id, event_id, sender_user_id, content, message_type, "
            "scheduled_message_id, created_at) "
            "VALUES ($1, $2, $3, $4, $5::public.message_type_enum, $6, $7)",
            mid,
            event_id,
            sender,
            text,
            type,
            scheduled_id,
            at,
        )
        self.messages[mid] = Message(mid, event_id, sender, type, scheduled_id, at, text)
        return mid

    async def channel(
        self, event_id: uuid.UUID, tags: Sequence[str] | None, **kw: object
    ) -> uuid.UUID:
        """A channel message with its own scheduled message targeting `tags`."""
        sid = await self.schedule(event_id, tags)
        return await self.message(event_id, "channel", scheduled_id=sid, **kw)  # type: ignore[arg-type]

    async def deliver(
        self,
        message_id: uuid.UUID,
        *,
        guest_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        status: str = "delivered",
        created_at: datetime | None = None,
    ) -> uuid.UUID:
        did = self.new_id()
        at = created_at or self.tick()
        await self.pool.execute(
            "INSERT INTO public.message_deliveries "
            "(id, message_id, guest_id, user_id, phone_number, sms_status, created_at) "
            "VALUES ($1, $2, $3, $4, '+15550001111', $5, $6)",
            did,
            message_id,
            guest_id,
            user_id,
            status,
            at,
        )
        self.deliveries.append(Delivery(did, message_id, guest_id, user_id, status, at))
        return did
