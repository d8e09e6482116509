"""Who is calling, once their token has verified."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from ..domain.errors import PermissionDenied


class Role(enum.Enum):
    """The `role` claim values the service serves."""

    AUTHENTICATED = "authenticated"
    SERVICE_ROLE = "service_role"


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller.

    `user_id` is the token's `sub` (= `users.id`). It is None for the
    project's legacy `service_role` API key, which names no user: `key_ref`
    then holds the project ref the key was issued for.
    """

    user_id: uuid.UUID | None
    role: Role
    key_ref: str | None = None
    # Supabase anonymous sign-ins (`is_anonymous: true`).
    anonymous: bool = False

    @property
    def is_service(self) -> bool:
        """True for internal services acting as admins."""
        return self.role is Role.SERVICE_ROLE

    @property
    def is_api_key(self) -> bool:
        """True for the project's service_role API key (no user behind it)."""
        return self.user_id is None

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        if self.user_id is None:
            return f"service_role key (ref {self.key_ref or 'unknown'})"
        return f"{self.role.value}:{self.user_id}"

    def reader(self) -> uuid.UUID:
        """The user whose guest feed this caller may read.

        Raises:
            PermissionDenied: the caller is an API key, which names no user.
        """
        if self.user_id is None:
            raise PermissionDenied(
                "a service key names no user, so it cannot read a guest feed; "
                "call with the guest's own access token",
                "USER_REQUIRED",
            )
        return self.user_id
