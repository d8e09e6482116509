"""The client's own error type, with the server's rich details unpacked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class RPCError(Exception):
    """A failed call: the status code, the message, and AIP-193 details."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    field_violations: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_call(cls, err: grpc.RpcError) -> RPCError:
        """Builds an RPCError from a failed call (sync or asyncio)."""
        # Every RpcError raised by a call is also a grpc.Call.
        call = cast(grpc.Call, err)
        out = cls(code=call.code(), message=call.details() or "")
        status = rpc_status.from_call(call)
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                out.reason = info.reason
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                out.field_violations.update({v.field: v.description for v in bad.field_violations})
        return out
