"""Domain errors: what went wrong in the caller's terms, with no gRPC in sight.

Expected failures are raised as subclasses of `GuestFeedError`; `grpc_errors`
turns them into statuses in one place. Anything else is a bug and becomes a
generic INTERNAL (grpclib keeps the same line between GRPCError and bugs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field, as in google.rpc.BadRequest."""

    field: str
    description: str
    # A machine-readable code for clients, e.g. "INVALID_UUID".
    reason: str = ""


@dataclass
class GuestFeedError(Exception):
    """Base of every expected error. `reason` is the AIP-193 ErrorInfo reason."""

    message: str
    reason: str = "ERROR"
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


@dataclass
class InvalidArgument(GuestFeedError):
    """The request is malformed; `violations` says which fields and why."""

    violations: tuple[FieldViolation, ...] = ()

    @classmethod
    def of(cls, *violations: FieldViolation) -> InvalidArgument:
        """Builds one error from the violations, its message from theirs."""
        text = "; ".join(f"{v.field}: {v.description}" for v in violations)
        reason = violations[0].reason if len(violations) == 1 and violations[0].reason else ""
        return cls(message=text, reason=reason or "INVALID_ARGUMENT", violations=violations)


class Unauthenticated(GuestFeedError):
    """No usable credentials."""


class PermissionDenied(GuestFeedError):
    """The caller is known but may not do this."""


class NotFound(GuestFeedError):
    """The named resource does not exist."""


class FailedPrecondition(GuestFeedError):
    """The system is not in a state that allows this."""


class Aborted(GuestFeedError):
    """A concurrent change won; retry from a fresh read."""


class Unavailable(GuestFeedError):
    """A dependency (the database) cannot be reached; safe to retry."""


class DeadlineExceeded(GuestFeedError):
    """The work did not finish within the caller's deadline."""


class ResourceExhausted(GuestFeedError):
    """The caller is at a limit (concurrent streams); retry once under it."""
