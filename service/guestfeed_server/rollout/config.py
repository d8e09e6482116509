"""The rollout configuration: what decides which read model a pair gets."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.model import ReadModel


class HashVersion(enum.Enum):
    """How a pair is put into a bucket. Stored with the config so a better
    hash can be added later without silently moving anyone."""

    JS_SIMPLE_HASH_V1 = "js_simple_hash_v1"


class Reason(enum.Enum):
    """Which rule decided, highest precedence first."""

    DEPLOY_KILL_SWITCH = "deploy_kill_switch"
    KILL_SWITCH = "kill_switch"
    USER_OVERRIDE = "user_override"
    EVENT_OVERRIDE = "event_override"
    PERCENTAGE = "percentage"
    # The replica could not read the stored config at start-up: v1 for all.
    FAIL_SAFE = "fail_safe"


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """One revision of the stored rollout configuration."""

    v2_enabled: bool = False
    v2_percentage: int = 0
    user_overrides: Mapping[uuid.UUID, ReadModel] = field(default_factory=dict)
    event_overrides: Mapping[uuid.UUID, ReadModel] = field(default_factory=dict)
    hash_version: HashVersion = HashVersion.JS_SIMPLE_HASH_V1
    revision: int = 0
    updated_at: datetime | None = None
    updated_by: str = ""

    def validate(self) -> RolloutConfig:
        """Returns self, or raises InvalidArgument naming every bad field."""
        violations: list[FieldViolation] = []
        if not 0 <= self.v2_percentage <= 100:
            violations.append(
                FieldViolation(
                    "config.v2_percentage",
                    f"must be 0-100, got {self.v2_percentage}",
                    "PERCENTAGE_OUT_OF_RANGE",
                )
            )
        if violations:
            raise InvalidArgument.of(*violations)
        return self

    def with_changes(self, **changes: Any) -> RolloutConfig:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The audit log's form of the config (jsonb)."""
        return {
            "v2_enabled": self.v2_enabled,
            "v2_percentage": self.v2_percentage,
            "user_overrides": {str(k): v.value for k, v in sorted(self.user_overrides.items())},
            "event_overrides": {str(k): v.value for k, v in sorted(self.event_overrides.items())},
            "hash_version": self.hash_version.value,
            "revision": self.revision,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutConfig:
        """Reads what `to_json` wrote."""
        updated_at = data.get("updated_at")
        return cls(
            v2_enabled=bool(data["v2_enabled"]),
            v2_percentage=int(data["v2_percentage"]),
            user_overrides={
                uuid.UUID(k): ReadModel(v) for k, v in data.get("user_overrides", {}).items()
            },
            event_overrides={
                uuid.UUID(k): ReadModel(v) for k, v in data.get("event_overrides", {}).items()
            },
            hash_version=HashVersion(data.get("hash_version", HashVersion.JS_SIMPLE_HASH_V1.value)),
            revision=int(data.get("revision", 0)),
            updated_at=datetime.fromisoformat(updated_at) if updated_at else None,
            updated_by=str(data.get("updated_by", "")),
        )
