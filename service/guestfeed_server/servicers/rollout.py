"""RolloutService: which read model an (event, user) pair gets."""

from __future__ import annotations

from typing import Any

import grpc
from guestfeed.v1 import rollout_pb2, rollout_pb2_grpc

from ..auth import Authenticator
from ..errors import FieldViolation, InvalidArgument, PermissionDenied
from ..rollout import RolloutPolicy
from . import convert


class RolloutServicer(rollout_pb2_grpc.RolloutServiceServicer):
    """Answers from the ids and the policy alone; no guest row is needed."""

    def __init__(self, auth: Authenticator, policy: RolloutPolicy) -> None:
        self._auth = auth
        self._policy = policy

    async def GetReadModel(  # noqa: N802 (gRPC method name)
        self, request: rollout_pb2.GetReadModelRequest, context: grpc.aio.ServicerContext[Any, Any]
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
        return rollout_pb2.GetReadModelResponse(
            read_model=convert.read_model_pb(decision.read_model), bucket=decision.bucket
        )
