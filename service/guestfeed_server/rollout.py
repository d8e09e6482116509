"""Which read model an (event, user) pair gets.

Phase 0 of the plan: v2 exists but is off, so every pair gets v1. The policy
sits behind `RolloutPolicy` so the stored, run-time configuration replaces it
without touching the feed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from .bucketing import bucket
from .model import ReadModel


@dataclass(frozen=True, slots=True)
class Decision:
    """The rollout's answer for one pair."""

    read_model: ReadModel
    bucket: int


class RolloutPolicy(Protocol):
    """Decides from the ids and the configuration alone (no guest row needed)."""

    def decide(self, event_id: uuid.UUID, user_id: uuid.UUID) -> Decision:
        """Returns the read model for the pair."""
        ...


class Phase0Policy:
    """Every pair on v1: the plan's starting point, flag off."""

    def decide(self, event_id: uuid.UUID, user_id: uuid.UUID) -> Decision:
        """Returns v1 with the pair's bucket (ids in their canonical lowercase form)."""
        return Decision(ReadModel.V1, bucket(str(event_id), str(user_id)))
