"""RolloutService: which read model a pair gets, and the config behind it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from guestfeed.v1 import rollout_pb2, rollout_pb2_grpc

from ..auth import Authenticator
from ..domain.budget import Budget, Lane
from ..domain.errors import FieldViolation, InvalidArgument, PermissionDenied
from ..feed.query import coerce_page_size
from ..rollout import Reason, RolloutPolicy
from ..rollout.admin import RolloutAdmin, require_service
from ..rollout.compare import ReadModelComparison
from ..rollout.guard import Guard
from ..telemetry import record
from . import compare_convert, convert, rollout_convert

Context = grpc.aio.ServicerContext[Any, Any]
_MAX_PREVIEW_EVENTS = 1000
_ANY_ID = uuid.UUID(int=0)
_COMPARE_BATCH_S = 120.0


class RolloutServicer(rollout_pb2_grpc.RolloutServiceServicer):
    """Each RPC: authenticate, validate, authorize, call the domain, map."""

    def __init__(
        self,
        auth: Authenticator,
        policy: RolloutPolicy,
        admin: RolloutAdmin,
        comparison: ReadModelComparison,
        guard: Guard,
    ) -> None:
        self._auth = auth
        self._policy = policy
        self._admin = admin
        self._comparison = comparison
        self._guard = guard

    async def GetReadModel(  # noqa: N802 (gRPC method name)
        self, request: rollout_pb2.GetReadModelRequest, context: Context
    ) -> rollout_pb2.GetReadModelResponse:
        """A caller may ask about themselves; anyone else needs service_role."""
        who = convert.principal(self._auth, context)
        violations: list[FieldViolation] = []
        event = convert.uuid_field(request.event_id, "event_id", violations)
        user = convert.uuid_field(request.user_id, "user_id", violations)
        if event is None or user is None:
            raise InvalidArgument.of(*violations)
        if user != who.user_id and not who.is_service:
            raise PermissionDenied(
                "only service_role tokens may ask about another user", "NOT_SELF"
            )
        decision = self._policy.decide(event, user)
        record.note_decision(decision.read_model.value, decision.reason.value)
        return rollout_pb2.GetReadModelResponse(
            read_model=convert.read_model_pb(decision.read_model),
            bucket=decision.bucket,
            reason=rollout_convert.reason_pb(decision.reason),
            config_revision=decision.config_revision,
        )

    async def GetRolloutConfig(  # noqa: N802 (gRPC method name)
        self, request: rollout_pb2.GetRolloutConfigRequest, context: Context
    ) -> rollout_pb2.GetRolloutConfigResponse:
        """The stored configuration."""
        who = convert.principal(self._auth, context)
        config = await self._admin.get(who)
        # What this replica applies: any pair's decision carries the revision
        # in use and whether the deploy-level switch overrules everything.
        local = self._policy.decide(_ANY_ID, _ANY_ID)
        return rollout_pb2.GetRolloutConfigResponse(
            config=rollout_convert.config_pb(config),
            replica_v2_allowed=local.reason is not Reason.DEPLOY_KILL_SWITCH,
            replica_revision=local.config_revision,
        )

    async def UpdateRolloutConfig(  # noqa: N802 (gRPC method name)
        self, request: rollout_pb2.UpdateRolloutConfigRequest, context: Context
    ) -> rollout_pb2.UpdateRolloutConfigResponse:
        """Optimistic replace: a stale expected_revision is ABORTED."""
        who = convert.principal(self._auth, context)
        require_service(who, "UpdateRolloutConfig")
        violations: list[FieldViolation] = []
        proposal = rollout_convert.proposed_config(
            request.config, has_config=request.HasField("config"), violations=violations
        )
        reason = rollout_convert.update_reason(request.reason, violations)
        if request.expected_revision <= 0:
            violations.append(
                FieldViolation(
                    "expected_revision",
                    "is required: the revision your change is based on (GetRolloutConfig)",
                    "REVISION_REQUIRED",
                )
            )
        if violations:
            raise InvalidArgument.of(*violations)
        config = await self._admin.update(
            who, proposal, expected_revision=request.expected_revision, reason=reason
        )
        return rollout_pb2.UpdateRolloutConfigResponse(config=rollout_convert.config_pb(config))

    async def ListRolloutChanges(  # noqa: N802 (gRPC method name)
        self, request: rollout_pb2.ListRolloutChangesRequest, context: Context
    ) -> rollout_pb2.ListRolloutChangesResponse:
        """The audit log, newest first."""
        who = convert.principal(self._auth, context)
        require_service(who, "ListRolloutChanges")
        size = coerce_page_size(request.page_size)
        changes, token = await self._admin.changes(
            who, page_size=size, page_token=request.page_token
        )
        return rollout_pb2.ListRolloutChangesResponse(
            changes=[rollout_convert.change_pb(c) for c in changes], next_page_token=token
        )

    async def PreviewRolloutChange(  # noqa: N802 (gRPC method name)
        self, request: rollout_pb2.PreviewRolloutChangeRequest, context: Context
    ) -> rollout_pb2.PreviewRolloutChangeResponse:
        """How many guests and which events a proposal would move."""
        who = convert.principal(self._auth, context)
        require_service(who, "PreviewRolloutChange")
        violations: list[FieldViolation] = []
        proposal = rollout_convert.proposed_config(
            request.config, has_config=request.HasField("config"), violations=violations
        )
        if request.max_events < 0:
            violations.append(
                FieldViolation("max_events", f"must be >= 0, got {request.max_events}", "NEGATIVE")
            )
        if violations:
            raise InvalidArgument.of(*violations)
        impact = await self._admin.preview(
            who, proposal, max_events=min(request.max_events or 20, _MAX_PREVIEW_EVENTS)
        )
        return rollout_convert.impact_pb(impact)

    async def CompareReadModels(  # noqa: N802 (gRPC method name)
        self, request: rollout_pb2.CompareReadModelsRequest, context: Context
    ) -> AsyncIterator[rollout_pb2.CompareReadModelsResponse]:
        """V1 against V2 per guest, then a summary (service_role only)."""
        who = convert.principal(self._auth, context)
        violations: list[FieldViolation] = []
        event = convert.uuid_field(request.event_id, "event_id", violations)
        user = (
            convert.uuid_field(request.user_id, "user_id", violations) if request.user_id else None
        )
        if violations or event is None:
            raise InvalidArgument.of(*violations)
        # Each batch may take longer than a page; the caller's deadline bounds the whole.
        # A comparison holds its connection for seconds: bulk work, not a short call.
        budget = Budget.of(_COMPARE_BATCH_S, context.time_remaining(), Lane.BULK)
        async for item in self._comparison.compare(who, event, user, budget):
            yield compare_convert.comparison_pb(item)

    async def GetGuardStatus(  # noqa: N802 (gRPC method name)
        self, request: rollout_pb2.GetGuardStatusRequest, context: Context
    ) -> rollout_pb2.GetGuardStatusResponse:
        """This replica's guard: signals, thresholds, requests, the last action."""
        who = convert.principal(self._auth, context)
        require_service(who, "GetGuardStatus")
        last = await self._admin.last_change_by(self._guard.actor.split("@")[0] + "@")
        return compare_convert.guard_status_pb(self._guard.status(), self._guard.replica, last)
