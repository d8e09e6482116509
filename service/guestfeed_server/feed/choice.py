"""Which read model serves a request, and why: the caller, their page token, or the rollout."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from ..domain.model import ReadModel
from ..rollout import Decision, RolloutPolicy
from .tokens import PageToken


class ChoiceSource(enum.Enum):
    """Who picked the read model."""

    EXPLICIT = "explicit"  # the request named one
    PAGE_TOKEN = "page_token"  # resuming: a paging session keeps its model
    ROLLOUT = "rollout"


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """The read model of a request, and the rule that chose it."""

    read_model: ReadModel
    source: ChoiceSource
    # The rollout's answer, when the rollout decided.
    decision: Decision | None = None

    @property
    def label(self) -> str:
        """For spans, logs and metrics: the source, or the rollout's reason."""
        if self.decision is not None:
            return self.decision.reason.value
        return self.source.value


def choose(
    requested: ReadModel | None,
    token: PageToken | None,
    rollout: RolloutPolicy,
    event_id: uuid.UUID,
    user_id: uuid.UUID,
) -> ModelChoice:
    """An explicit model first, then the token's (the rollout may move while
    someone pages), then the rollout."""
    if requested is not None:
        return ModelChoice(requested, ChoiceSource.EXPLICIT)
    if token is not None:
        return ModelChoice(token.read_model, ChoiceSource.PAGE_TOKEN)
    decision = rollout.decide(event_id, user_id)
    return ModelChoice(decision.read_model, ChoiceSource.ROLLOUT, decision)
