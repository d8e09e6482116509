"""What the guard watches: outcomes the feed reports as it serves."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from .model import ReadModel


@dataclass(frozen=True, slots=True)
class PageOutcome:
    """One page read that ended well or failed on the server's side.

    Caller mistakes (not a guest, a bad token) and cancellations are not
    outcomes: they say nothing about the read model's health.
    """

    event_id: uuid.UUID
    read_model: ReadModel
    latency_ms: float
    failed: bool


class ShadowResult(enum.Enum):
    """What a shadow read found (or why there was none)."""

    MATCH = "match"
    V1_ONLY = "v1_only"
    V2_ONLY = "v2_only"
    DROPPED = "dropped"
    ERROR = "error"
