"""A feed request in the use case's terms, and AIP-158's page-size rule."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.model import ReadModel

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def page_size_violation(requested: int, field: str = "page_size") -> FieldViolation | None:
    """AIP-158: a negative page size is the caller's mistake."""
    if requested < 0:
        return FieldViolation(
            field,
            f"must be >= 0 (0 means {DEFAULT_PAGE_SIZE}), got {requested}",
            "PAGE_SIZE_NEGATIVE",
        )
    return None


def coerce_page_size(requested: int, field: str = "page_size") -> int:
    """AIP-158: 0 means the default, above the maximum is clamped, negative is an error."""
    violation = page_size_violation(requested, field)
    if violation is not None:
        raise InvalidArgument.of(violation)
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class FeedQuery:
    """A validated feed request: `page_size` already coerced (1..MAX_PAGE_SIZE)."""

    event_id: uuid.UUID
    page_size: int
    page_token: str
    # None: the caller left it to the token (when resuming) or the rollout.
    read_model: ReadModel | None
    # 0: no limit (StreamMessages only).
    max_messages: int = 0
