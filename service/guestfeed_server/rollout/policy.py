"""Which read model an (event, user) pair gets, by the plan's precedence.

  1. the deploy-level hard kill switch (`GUESTFEED_READMODEL_V2=false`);
  2. the stored kill switch (`v2_enabled = false`);
  3. per-user overrides (internal testers);
  4. per-event overrides;
  5. the percentage: `bucket < v2_percentage`.

The answer depends on the ids and the config alone, like the plan's
function, so it needs no guest row. Raising the percentage never moves a
pair from v2 back to v1: a pair's bucket is fixed, and `b < p` stays true as
`p` grows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from ..domain.model import ReadModel
from .bucketing import bucket
from .config import HashVersion, Reason, RolloutConfig


@dataclass(frozen=True, slots=True)
class Decision:
    """The rollout's answer for one pair."""

    read_model: ReadModel
    bucket: int
    reason: Reason
    config_revision: int


class RolloutPolicy(Protocol):
    """Decides from the ids and the current configuration."""

    def decide(self, event_id: uuid.UUID, user_id: uuid.UUID) -> Decision:
        """Returns the read model for the pair."""
        ...


def pair_bucket(version: HashVersion, event_id: uuid.UUID, user_id: uuid.UUID) -> int:
    """The pair's bucket under a hash version (ids in canonical lowercase form,
    as the web app has them from Supabase)."""
    if version is HashVersion.JS_SIMPLE_HASH_V1:
        return bucket(str(event_id), str(user_id))
    raise ValueError(f"unknown hash version {version!r}")  # pragma: no cover


def decide(
    config: RolloutConfig,
    event_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    deploy_v2_allowed: bool = True,
    fail_safe: bool = False,
) -> Decision:
    """Applies the precedence to one pair."""
    b = pair_bucket(config.hash_version, event_id, user_id)
    rev = config.revision

    def answer(model: ReadModel, reason: Reason) -> Decision:
        return Decision(model, b, reason, rev)

    if not deploy_v2_allowed:
        return answer(ReadModel.V1, Reason.DEPLOY_KILL_SWITCH)
    if fail_safe:
        return answer(ReadModel.V1, Reason.FAIL_SAFE)
    if not config.v2_enabled:
        return answer(ReadModel.V1, Reason.KILL_SWITCH)
    forced = config.user_overrides.get(user_id)
    if forced is not None:
        return answer(forced, Reason.USER_OVERRIDE)
    forced = config.event_overrides.get(event_id)
    if forced is not None:
        return answer(forced, Reason.EVENT_OVERRIDE)
    return answer(ReadModel.V2 if b < config.v2_percentage else ReadModel.V1, Reason.PERCENTAGE)


class StaticPolicy:
    """A fixed config (tests, tools); the server uses the live `RolloutState`."""

    def __init__(
        self, config: RolloutConfig | None = None, *, deploy_v2_allowed: bool = True
    ) -> None:
        self.config = config or RolloutConfig()
        self._deploy = deploy_v2_allowed

    def decide(self, event_id: uuid.UUID, user_id: uuid.UUID) -> Decision:
        """See `decide`."""
        return decide(self.config, event_id, user_id, deploy_v2_allowed=self._deploy)
