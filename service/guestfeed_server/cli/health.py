"""`guestfeed health`: one grpc.health.v1 Check against a running server.

For a container HEALTHCHECK (docker/Dockerfile) or an exec probe where the
kubelet's own gRPC probe cannot be used (it speaks plaintext only, so not to
a server with GUESTFEED_TLS_CERT). It connects as `guestfeed rollout` does:
GUESTFEED_LISTEN with wildcards made local, TLS when this environment's
GUESTFEED_TLS_* say so. Exit 0 when the name is SERVING; 1 when it is not,
is unknown, or the server does not answer within --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..api.health import READY_HEALTH_NAME
from ..settings import Settings, TlsSettings
from .rollout import default_target, open_channel

SERVING = health_pb2.HealthCheckResponse.SERVING


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `health`."""
    p = sub.add_parser(
        "health",
        help="ask a running server's grpc.health.v1 for one name (exit 0: SERVING)",
        description=__doc__,
    )
    p.add_argument(
        "service",
        nargs="?",
        default=READY_HEALTH_NAME,
        help=f"the health name (default {READY_HEALTH_NAME}; guestfeed.live for liveness, "
        '"" for the whole server)',
    )
    p.add_argument(
        "--target", help="host:port of the server (default: GUESTFEED_LISTEN, wildcards local)"
    )
    p.add_argument(
        "--timeout", type=_seconds, default=5.0, help="seconds to wait for the answer (default 5)"
    )
    p.set_defaults(func=run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


def run(settings: Settings, ns: argparse.Namespace) -> int:
    """Prints `<name>: <status>` and returns 0 when SERVING, else 1."""
    target = ns.target or default_target(settings.listen)
    return asyncio.run(check(target, ns.service, settings.tls, ns.timeout))


async def check(target: str, service: str, tls: TlsSettings, timeout: float) -> int:
    """One Check call; the exit code for its answer."""
    label = service or '""'
    async with open_channel(target, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            # NOT_FOUND: the server does not know the name.
            print(
                f"guestfeed health: {label} at {target}: {exc.code().name}: {exc.details()}",
                file=sys.stderr,
            )
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{label}: {status}")
    return 0 if response.status == SERVING else 1
