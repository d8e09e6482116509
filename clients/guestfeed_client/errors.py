"""The clients' one error type, with the server's rich details unpacked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(eq=False)  # exceptions stay hashable, as logging and tracebacks expect
class RPCError(Exception):
    """A failed call, from either client: the status and its AIP-193 details.

    Attributes:
        code: the canonical status code.
        message: the status message (what to fix, for the server's own errors).
        reason: `google.rpc.ErrorInfo.reason`, e.g. `NOT_EVENT_GUEST`; empty when
            the failure has no ErrorInfo (a transport failure, a local deadline).
        domain: `ErrorInfo.domain` (`guestfeed.v1` for the service's errors).
        metadata: `ErrorInfo.metadata`, e.g. `scope` and `limit` of STREAM_LIMIT.
        field_violations: field -> description, from `google.rpc.BadRequest`.
        violation_reasons: field -> machine-readable reason, from the same.
        attempts: how many attempts the call made (more than 1 after retries).
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: dict[str, str] = field(default_factory=dict)
    violation_reasons: dict[str, str] = field(default_factory=dict)
    attempts: int = 1

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_call(cls, err: grpc.RpcError) -> RPCError:
        """Builds an RPCError from a failed call (sync or asyncio)."""
        # Every RpcError raised by a call is also a grpc.Call.
        call = cast(grpc.Call, err)
        out = cls(code=call.code(), message=call.details() or "")
        try:
            status = rpc_status.from_call(call)
        except ValueError:
            # The details disagree with the call's code or message (a proxy
            # rewrote one of them); the code and message are still right.
            status = None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                out.reason, out.domain = info.reason, info.domain
                out.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                for v in bad.field_violations:
                    out.field_violations[v.field] = v.description
                    out.violation_reasons[v.field] = v.reason
        return out
