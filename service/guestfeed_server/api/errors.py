"""The one place where errors become gRPC statuses (AIP-193).

`ErrorMappingInterceptor` wraps every handler of the server. A `GuestFeedError`
becomes its canonical code with `google.rpc.ErrorInfo` (and `BadRequest` for
INVALID_ARGUMENT) in `grpc-status-details-bin`. Only domain errors are mapped
here: storage has already turned database outages into Unavailable and a spent
deadline into DeadlineExceeded (`storage/errors.py`). Anything else is a bug:
the caller sees a generic INTERNAL and the traceback goes to the server log only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ..domain import errors
from .interceptors import BehaviorInterceptor

log = logging.getLogger(__name__)

# AIP-193: ErrorInfo.domain names the service that produced the error.
ERROR_DOMAIN = "guestfeed.v1"

_CODES: dict[type[errors.GuestFeedError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def to_status(err: errors.GuestFeedError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """Builds the rich google.rpc.Status for a domain error."""
    code = _CODES.get(type(err))
    if code is None:  # a subclass of a mapped error
        code = next(c for t, c in _CODES.items() if isinstance(err, t))
    info = error_details_pb2.ErrorInfo(
        reason=err.reason, domain=ERROR_DOMAIN, metadata=dict(err.metadata)
    )
    details = [_pack(info)]
    if isinstance(err, errors.InvalidArgument) and err.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=v.reason
                )
                for v in err.violations
            ]
        )
        details.append(_pack(bad))
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=err.message, details=details
    )
    return code, status


def _pack(msg: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """Ends the RPC with the status that `exc` maps to."""
    err = exc if isinstance(exc, errors.GuestFeedError) else None
    if err is None:
        log.error("unhandled error in RPC", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: abort raises")  # pragma: no cover
    code, status = to_status(err)
    await context.abort(
        code,
        status.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Stream = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


def _wrap_unary(behavior: Unary) -> Unary:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await abort_with(context, exc)

    return handler


def _wrap_stream(behavior: Stream) -> Stream:
    async def handler(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await abort_with(context, exc)

    return handler


class ErrorMappingInterceptor(BehaviorInterceptor):
    """Wraps unary-unary and unary-stream handlers with the error map."""

    def wrap_unary(self, method: str, behavior: Any) -> Any:
        """See BehaviorInterceptor."""
        return _wrap_unary(behavior)

    def wrap_stream(self, method: str, behavior: Any) -> Any:
        """See BehaviorInterceptor."""
        return _wrap_stream(behavior)
