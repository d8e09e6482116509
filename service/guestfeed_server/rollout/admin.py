"""Reading and changing the rollout config: the use cases behind RolloutService."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable

from ..auth import Principal
from ..domain.budget import Budget
from ..domain.errors import Aborted, FieldViolation, InvalidArgument, PermissionDenied
from ..storage import Database
from . import store
from .config import Proposal, RolloutConfig
from .preview import Impact, preview

_TOKEN = struct.Struct(">Bq")  # version, revision to continue below


def require_service(who: Principal, action: str) -> None:
    """Admin actions need a service_role token."""
    if not who.is_service:
        raise PermissionDenied(
            f"{action} needs a service_role token", "SERVICE_ROLE_REQUIRED", {"action": action}
        )


def actor(who: Principal) -> str:
    """How the audit log names a caller."""
    return who.actor


class RolloutAdmin:
    """Stored-config operations; applies its own writes to this replica at once."""

    def __init__(
        self,
        db: Database,
        *,
        deploy_v2_allowed: bool,
        query_timeout_s: float,
        applied: Callable[[RolloutConfig], object] | None = None,
    ) -> None:
        self._db = db
        self._deploy = deploy_v2_allowed
        self._timeout = query_timeout_s
        self._applied = applied

    async def get(self, who: Principal) -> RolloutConfig:
        """The stored configuration."""
        require_service(who, "GetRolloutConfig")
        async with self._db.acquire(Budget(self._timeout)) as conn:
            return await store.load(conn, timeout=self._timeout)

    async def update(
        self,
        who: Principal,
        proposal: Proposal,
        *,
        expected_revision: int,
        reason: str,
    ) -> RolloutConfig:
        """Replaces the config if `expected_revision` is current (else Aborted)."""
        require_service(who, "UpdateRolloutConfig")
        async with self._db.acquire(Budget(self._timeout)) as conn:
            current = await store.load(conn, timeout=self._timeout)
            new = await store.update(
                conn,
                proposal.over(current),
                expected_revision=expected_revision,
                actor=actor(who),
                reason=reason,
                timeout=self._timeout,
            )
        self._adopt(new)
        return new

    async def apply(
        self,
        actor_name: str,
        change: Callable[[RolloutConfig], RolloutConfig | None],
        reason: str,
        *,
        attempts: int = 3,
    ) -> RolloutConfig | None:
        """Read-modify-write through the same audited, optimistic path as a
        person's change (the guard's way in): `change` says what the current
        config should become, or None when nothing needs changing. A writer
        who came first makes it re-read and ask again, so replicas racing on
        one breach produce one change. Returns the new config, or None."""
        for _ in range(attempts):
            async with self._db.acquire(Budget(self._timeout)) as conn:
                current = await store.load(conn, timeout=self._timeout)
                proposed = change(current)
                if proposed is None:
                    return None
                try:
                    new = await store.update(
                        conn,
                        proposed,
                        expected_revision=current.revision,
                        actor=actor_name,
                        reason=reason,
                        timeout=self._timeout,
                    )
                except Aborted:
                    continue
            self._adopt(new)
            return new
        return None

    def _adopt(self, new: RolloutConfig) -> None:
        if self._applied is not None:
            self._applied(new)

    async def changes(
        self, who: Principal, *, page_size: int, page_token: str
    ) -> tuple[list[store.Change], str]:
        """A page of the audit log, newest first, and the next page's token."""
        require_service(who, "ListRolloutChanges")
        below = _decode(page_token) if page_token else None
        async with self._db.acquire(Budget(self._timeout)) as conn:
            rows = await store.changes(
                conn, below_revision=below, limit=page_size + 1, timeout=self._timeout
            )
        page = rows[:page_size]
        token = _encode(page[-1].revision) if len(rows) > page_size and page else ""
        return page, token

    async def last_change_by(self, prefix: str) -> store.Change | None:
        """The newest audit entry by an author starting with `prefix`."""
        async with self._db.acquire(Budget(self._timeout)) as conn:
            return await store.last_change_by(conn, prefix, timeout=self._timeout)

    async def preview(self, who: Principal, proposal: Proposal, *, max_events: int) -> Impact:
        """The impact of a proposal against the stored config; writes nothing."""
        require_service(who, "PreviewRolloutChange")
        async with self._db.acquire(Budget(self._timeout)) as conn:
            current = await store.load(conn, timeout=self._timeout)
            return await preview(
                conn,
                current,
                proposal.over(current),
                deploy_v2_allowed=self._deploy,
                max_events=max_events,
            )


def _encode(revision: int) -> str:
    return base64.urlsafe_b64encode(_TOKEN.pack(1, revision)).rstrip(b"=").decode()


def _decode(token: str) -> int:
    try:
        version, revision = _TOKEN.unpack(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, struct.error):
        version, revision = 0, 0
    if version != 1 or revision <= 0:
        raise InvalidArgument.of(
            FieldViolation(
                "page_token",
                "is not a token this service issued; pass next_page_token unchanged",
                "PAGE_TOKEN_MALFORMED",
            )
        )
    return int(revision)
