"""The read-model rollout: config, precedence, storage and live propagation."""

from .config import HashVersion, Reason, RolloutConfig
from .policy import Decision, RolloutPolicy, StaticPolicy, decide

__all__ = [
    "Decision",
    "HashVersion",
    "Reason",
    "RolloutConfig",
    "RolloutPolicy",
    "StaticPolicy",
    "decide",
]
