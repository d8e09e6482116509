"""Which read model serves a request, and why: the rollout, a page token, or the caller.

The rules, highest first:

  1. The kill switches win: with `GUESTFEED_READMODEL_V2=false` on the
     replica, the stored `v2_enabled=false`, or a replica on its fail-safe
     config, every request is served from V1: explicit requests and V2 page
     tokens included. A kill switch exists for the moment V2 is wrong or
     hurting the database; it has to hold for everyone.
  2. An explicit `read_model` is honoured for service callers (internal
     services and tools comparing the models). Guests get what the rollout
     says for them: at 0 % nobody opts into V2, and internal testers get V2
     by a user override, not by asking. The requested model is recorded.
  3. A page token keeps its read model while the percentage moves, so a
     paging session does not switch models halfway. When the rollout now
     sends the pair to V1 for any other reason (a user or event override, as
     the guard sets for an event), a V2 token continues in V1 from the same
     position: both models order by the same keyset.
  4. Otherwise the rollout decides.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Protocol

from ..domain.model import ReadModel
from ..rollout import Decision, Reason, RolloutPolicy


class ModelToken(Protocol):
    """A token that carries a read model: a page token or a watch token."""

    @property
    def read_model(self) -> ReadModel:
        """The read model the token was issued for."""
        ...


# Rollout answers that are rollbacks: they override explicit requests (service
# callers' too) and page tokens.
KILLS = frozenset({Reason.DEPLOY_KILL_SWITCH, Reason.KILL_SWITCH, Reason.FAIL_SAFE})


class ChoiceSource(enum.Enum):
    """Who picked the read model."""

    EXPLICIT = "explicit"  # a service caller named one
    PAGE_TOKEN = "page_token"  # resuming: a paging session keeps its model
    ROLLOUT = "rollout"


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """The read model of a request, and the rule that chose it."""

    read_model: ReadModel
    source: ChoiceSource
    # The rollout's answer, when the rollout decided.
    decision: Decision | None = None
    # What the request asked for, when it named a model.
    requested: ReadModel | None = None

    @property
    def label(self) -> str:
        """For spans, logs and metrics: the source, or the rollout's reason."""
        if self.decision is not None:
            return self.decision.reason.value
        return self.source.value

    def carries(self, token: ModelToken) -> bool:
        """Whether `token`'s position may continue in this choice's model: its own
        model always; another model only when a rollback moved the pair (a
        caller who names another model than their token's made a mistake)."""
        return token.read_model is self.read_model or self.source is ChoiceSource.ROLLOUT


def choose(
    requested: ReadModel | None,
    token: ModelToken | None,
    rollout: RolloutPolicy,
    event_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    may_pin: bool,
) -> ModelChoice:
    """Applies the module's rules; `may_pin` is True for service callers."""
    decision = rollout.decide(event_id, user_id)
    if decision.reason in KILLS:
        return ModelChoice(decision.read_model, ChoiceSource.ROLLOUT, decision, requested)
    if requested is not None and may_pin:
        return ModelChoice(requested, ChoiceSource.EXPLICIT, None, requested)
    if token is not None:
        moves_to_v1 = (
            token.read_model is ReadModel.V2
            and decision.read_model is ReadModel.V1
            and decision.reason is not Reason.PERCENTAGE
        )
        if not moves_to_v1:
            return ModelChoice(token.read_model, ChoiceSource.PAGE_TOKEN, None, requested)
    return ModelChoice(decision.read_model, ChoiceSource.ROLLOUT, decision, requested)
