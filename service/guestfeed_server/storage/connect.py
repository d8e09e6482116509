"""Opening connections, and saying in one line why one could not be opened."""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, urlsplit

import asyncpg

from ..settings import StartupError

# What asyncpg raises for a connection that cannot be made (or a URL it cannot read).
CONNECT_ERRORS = (OSError, asyncpg.PostgresError, ValueError, asyncpg.InterfaceError)


def where(dsn: str) -> str:
    """host:port/database of a URL, for messages: never its password."""
    try:
        parts = urlsplit(dsn)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        host = parts.hostname or socket_dir or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "(a malformed URL)"
    return f"{host}:{port}{parts.path or ''}"


def connect_failure(variable: str, dsn: str, exc: BaseException) -> StartupError:
    """One line naming the variable and the cause of a failed connection."""
    if isinstance(exc, socket.gaierror):
        cause = f"unknown host ({exc.strerror or exc})"
    elif isinstance(exc, ConnectionRefusedError):
        cause = "connection refused"
    elif isinstance(exc, TimeoutError):
        cause = "no answer in time (GUESTFEED_CONNECT_TIMEOUT_S)"
    elif isinstance(exc, asyncpg.PostgresError):
        cause = f"the server said: {exc}"
    elif isinstance(exc, OSError):
        cause = exc.strerror or type(exc).__name__
    elif isinstance(exc, ValueError | asyncpg.ClientConfigurationError):
        # Parser messages may quote the URL: drop anything after a colon.
        cause = "malformed URL (" + str(exc).split(":")[0][:80] + ")"
    else:
        cause = type(exc).__name__
    return StartupError(f"{variable}: cannot connect to {where(dsn)}: {cause}")


async def connect(
    dsn: str, variable: str, *, timeout: float, application_name: str = "guestfeed"
) -> asyncpg.Connection:
    """A single connection (migrate, the rollout listener), or a StartupError."""
    try:
        return await asyncpg.connect(
            dsn, timeout=timeout, server_settings={"application_name": application_name}
        )
    except CONNECT_ERRORS as exc:
        raise connect_failure(variable, dsn, exc) from None
