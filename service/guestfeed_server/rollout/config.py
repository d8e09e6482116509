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
class GuardConfig:
    """The auto-rollback guard's settings (the plan's alert conditions by default)."""

    enabled: bool = True
    window_s: int = 60
    min_requests: int = 20
    max_error_share: float = 0.01
    max_avg_latency_ms: float = 1000.0
    # 0: watched, never acted on.
    max_p95_latency_ms: float = 0.0
    act_on_shadow_v1_only: bool = True

    def violations(self, prefix: str = "config.guard") -> list[FieldViolation]:
        """What is out of range, one violation per field."""
        out: list[FieldViolation] = []

        def bad(name: str, text: str) -> None:
            out.append(FieldViolation(f"{prefix}.{name}", text, "GUARD_OUT_OF_RANGE"))

        if not 5 <= self.window_s <= 3600:
            bad("window_seconds", f"must be 5-3600 seconds, got {self.window_s}")
        if self.min_requests < 1:
            bad("min_requests", f"must be at least 1, got {self.min_requests}")
        if not 0 < self.max_error_share <= 1:
            bad("max_error_share", f"must be above 0 and at most 1, got {self.max_error_share}")
        if not self.max_avg_latency_ms > 0:
            bad("max_avg_latency_ms", f"must be above 0 ms, got {self.max_avg_latency_ms}")
        if not self.max_p95_latency_ms >= 0:
            bad(
                "max_p95_latency_ms",
                f"must be >= 0 ms (0: not acted on), got {self.max_p95_latency_ms}",
            )
        return out

    def to_json(self) -> dict[str, Any]:
        """The stored (jsonb) form."""
        return {
            "enabled": self.enabled,
            "window_s": self.window_s,
            "min_requests": self.min_requests,
            "max_error_share": self.max_error_share,
            "max_avg_latency_ms": self.max_avg_latency_ms,
            "max_p95_latency_ms": self.max_p95_latency_ms,
            "act_on_shadow_v1_only": self.act_on_shadow_v1_only,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> GuardConfig:
        """Reads `to_json`'s form; missing keys take the defaults."""
        base = cls()
        data = data or {}
        return cls(
            enabled=bool(data.get("enabled", base.enabled)),
            window_s=int(data.get("window_s", base.window_s)),
            min_requests=int(data.get("min_requests", base.min_requests)),
            max_error_share=float(data.get("max_error_share", base.max_error_share)),
            max_avg_latency_ms=float(data.get("max_avg_latency_ms", base.max_avg_latency_ms)),
            max_p95_latency_ms=float(data.get("max_p95_latency_ms", base.max_p95_latency_ms)),
            act_on_shadow_v1_only=bool(
                data.get("act_on_shadow_v1_only", base.act_on_shadow_v1_only)
            ),
        )


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
    # Share of V1 first pages also read from V2 and compared (shadow reads).
    shadow_sample_rate: float = 0.0
    guard: GuardConfig = field(default_factory=GuardConfig)

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
        if not 0.0 <= self.shadow_sample_rate <= 1.0:
            violations.append(
                FieldViolation(
                    "config.shadow_sample_rate",
                    f"must be a fraction from 0 to 1, got {self.shadow_sample_rate}",
                    "RATE_OUT_OF_RANGE",
                )
            )
        violations.extend(self.guard.violations())
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
            "shadow_sample_rate": self.shadow_sample_rate,
            "guard": self.guard.to_json(),
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
            shadow_sample_rate=float(data.get("shadow_sample_rate", 0.0)),
            guard=GuardConfig.from_json(data.get("guard")),
        )


@dataclass(frozen=True, slots=True)
class Proposal:
    """A config as a caller proposes it: what is left unset keeps the stored value."""

    v2_enabled: bool
    v2_percentage: int
    user_overrides: Mapping[uuid.UUID, ReadModel] = field(default_factory=dict)
    event_overrides: Mapping[uuid.UUID, ReadModel] = field(default_factory=dict)
    hash_version: HashVersion | None = None
    shadow_sample_rate: float | None = None
    guard: GuardConfig | None = None
    # Pausing the guard is its own field, so retuning never resumes it.
    guard_enabled: bool | None = None

    def over(self, current: RolloutConfig) -> RolloutConfig:
        """The config this proposal makes of `current`."""
        return current.with_changes(
            v2_enabled=self.v2_enabled,
            v2_percentage=self.v2_percentage,
            user_overrides=self.user_overrides,
            event_overrides=self.event_overrides,
            hash_version=self.hash_version or current.hash_version,
            shadow_sample_rate=(
                current.shadow_sample_rate
                if self.shadow_sample_rate is None
                else self.shadow_sample_rate
            ),
            guard=replace(
                current.guard if self.guard is None else self.guard,
                enabled=(
                    current.guard.enabled if self.guard_enabled is None else self.guard_enabled
                ),
            ),
        )
