"""The read-model rollout: config, precedence, storage and live propagation."""

from .config import GuardConfig, HashVersion, Proposal, Reason, RolloutConfig
from .policy import Decision, RolloutPolicy, StaticPolicy, decide

__all__ = [
    "Decision",
    "GuardConfig",
    "HashVersion",
    "Proposal",
    "Reason",
    "RolloutConfig",
    "RolloutPolicy",
    "StaticPolicy",
    "decide",
]
