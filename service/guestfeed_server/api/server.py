"""The gRPC edge: the server, its interceptors, services, health and reflection.

`build_server` wires what the composition root (`app.py`) made into one
grpc.aio server; it owns nothing and starts nothing.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf.internal import api_implementation
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from guestfeed.v1 import feed_pb2, feed_pb2_grpc, rollout_pb2, rollout_pb2_grpc

from ..auth import Authenticator
from ..feed import FeedReader
from ..feed.watch import FeedWatcher
from ..rollout import RolloutPolicy
from ..rollout.admin import RolloutAdmin
from ..rollout.compare import ReadModelComparison
from ..rollout.guard import Guard
from ..telemetry import Telemetry
from .errors import ErrorMappingInterceptor
from .feed import GuestFeedServicer
from .health import DatabaseHealth
from .rollout import RolloutServicer
from .telemetry import TelemetryInterceptor

log = logging.getLogger(__name__)

# A health entry of its own: SERVING once the stored rollout config was read.
ROLLOUT_HEALTH_NAME = "guestfeed.rollout.config"
# SERVING while rollout changes arrive by NOTIFY; NOT_SERVING when they
# arrive by the periodic re-read only (a transaction pooler, no direct URL).
ROLLOUT_NOTIFY_HEALTH_NAME = "guestfeed.rollout.notify"
# SERVING while the last JWKS fetch succeeded (only with GUESTFEED_JWKS_URL).
JWKS_HEALTH_NAME = "guestfeed.auth.jwks"
# SERVING while live updates know every open transaction (exact mode);
# NOT_SERVING in their safe mode, when the role lacks pg_read_all_stats.
WATCH_EXACT_HEALTH_NAME = "guestfeed.watch.exact"

SERVICE_NAMES = (
    feed_pb2.DESCRIPTOR.services_by_name["GuestFeedService"].full_name,
    rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name,
)


def protobuf_backend() -> str:
    """Which protobuf implementation runs: "upb" (C, the default), "cpp" or "python"."""
    return str(api_implementation.Type())


def connection_options(
    max_age_s: float | None, grace_s: float | None = None
) -> list[tuple[str, int]]:
    """gRPC core's server options for GUESTFEED_MAX_CONNECTION_AGE_S and _GRACE_S.

    A client keeps one HTTP/2 connection, so behind a Kubernetes Service it
    stays on the replica it first reached. With a maximum age the server
    sends GOAWAY once a connection is that old (core adds +-10% jitter), the
    client reconnects and lands anywhere, new replicas included; calls in
    flight then get the grace to finish before the connection is closed.
    """
    if max_age_s is None:
        return []
    options = [("grpc.max_connection_age_ms", round(max_age_s * 1000))]
    if grace_s is not None:
        options.append(("grpc.max_connection_age_grace_ms", round(grace_s * 1000)))
    return options


def build_server(
    *,
    auth: Authenticator,
    reader: FeedReader,
    policy: RolloutPolicy,
    admin: RolloutAdmin,
    comparison: ReadModelComparison,
    guard: Guard,
    health: DatabaseHealth,
    telemetry: Telemetry,
    identify_clients: bool = False,
    watcher: FeedWatcher | None = None,
    max_connection_age_s: float | None = None,
    max_connection_age_grace_s: float | None = None,
    reuse_port: bool = False,
) -> grpc.aio.Server:
    """The server with every service registered; not yet bound or started."""
    if protobuf_backend() != "upb":
        # Building a page's messages is the costliest Python step of an RPC;
        # the pure-Python backend (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python)
        # is many times slower than upb, the default of the pinned protobuf.
        log.warning("protobuf's %r backend is in use: pages build slowly", protobuf_backend())
    # The telemetry interceptor is outermost, so it sees the final status.
    server = grpc.aio.server(
        interceptors=[
            TelemetryInterceptor(
                telemetry.tracer,
                telemetry.metrics,
                trace_health=telemetry.trace_health,
                identify_clients=identify_clients,
            ),
            ErrorMappingInterceptor(),
        ],
        # gRPC's core sets SO_REUSEPORT unless told not to: then a second server
        # on a taken port would silently share it. Only GUESTFEED_WORKERS'
        # workers, which bind one port on purpose, keep it.
        options=[
            *connection_options(max_connection_age_s, max_connection_age_grace_s),
            ("grpc.so_reuseport", int(reuse_port)),
        ],
    )
    feed_pb2_grpc.add_GuestFeedServiceServicer_to_server(
        GuestFeedServicer(auth, reader, watcher), server
    )
    rollout_pb2_grpc.add_RolloutServiceServicer_to_server(
        RolloutServicer(auth, policy, admin, comparison, guard), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, "grpc.health.v1.Health", reflection.SERVICE_NAME), server
    )
    return server
