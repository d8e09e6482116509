"""What the server's interceptors share: rewrapping a method's behaviour.

grpc.aio hands an interceptor the method's handler; to act around the call,
an interceptor rebuilds the handler around a new behaviour. That rebuilding
(by handler kind, keeping the (de)serializers, once per method so a call
costs a dict lookup) lives here; subclasses say only how to wrap.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import grpc

# Handler kind -> (its builder, whether it answers with a stream).
_KINDS: dict[str, tuple[Callable[..., Any], bool]] = {
    "unary_unary": (grpc.unary_unary_rpc_method_handler, False),
    "unary_stream": (grpc.unary_stream_rpc_method_handler, True),
    "stream_unary": (grpc.stream_unary_rpc_method_handler, False),
    "stream_stream": (grpc.stream_stream_rpc_method_handler, True),
}


class BehaviorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps the behaviours of the handler kinds named in `kinds`."""

    kinds: ClassVar[tuple[str, ...]] = ("unary_unary", "unary_stream")

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def skip(self, method: str) -> bool:
        """True to leave a method's handler as it is."""
        return False

    def wrap_unary(self, method: str, behavior: Any) -> Any:
        """A coroutine function around a behaviour that returns one response."""
        raise NotImplementedError

    def wrap_stream(self, method: str, behavior: Any) -> Any:
        """An async generator function around a behaviour that streams responses."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # grpc-stubs type handlers for the sync API; on the aio server the
        # behaviours are coroutine and async-generator functions.
        handler: Any = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or self.skip(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = handler
        for kind in self.kinds:
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            build, streams = _KINDS[kind]
            wrap = self.wrap_stream if streams else self.wrap_unary
            wrapped = build(
                wrap(method, behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            break
        self._wrapped[method] = (handler, wrapped)
        return wrapped
