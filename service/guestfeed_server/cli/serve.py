"""`guestfeed serve`: run a replica until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex

from ..app import App, graceful_exit, running
from ..auth import mint
from ..settings import Settings, TlsSettings
from ..storage.connect import connect
from .demo import seed_demo

log = logging.getLogger("guestfeed")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `serve`."""
    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="migrate, seed a demo event if the database is empty, print a grpcurl command",
    )
    serve.set_defaults(func=run)


def run(settings: Settings, ns: argparse.Namespace) -> int:
    """Serves until a signal; a second signal exits at once."""
    # asyncio's own loop: uvloop was measured here and did not help
    # (docs/performance.md), so it is not a dependency.
    return asyncio.run(_serve(settings, demo=ns.demo))


async def _serve(settings: Settings, *, demo: bool) -> int:
    # The embedded database is ours to migrate; a real one is migrated by
    # `guestfeed migrate` with a role that may, never by serve (--demo aside).
    async with running(settings, migrate_first=settings.embedded or demo) as app:
        log.info(
            "guestfeed serving on %s (database: %s)",
            app.address,
            "embedded" if settings.embedded else "GUESTFEED_DATABASE_URL",
        )
        if demo:
            await _demo(app)
        stop = asyncio.Event()
        with graceful_exit(stop):
            await stop.wait()
    return 0


async def _demo(app: App) -> None:
    conn = await connect(app.dsn, "GUESTFEED_DATABASE_URL", timeout=10)
    try:
        info = await seed_demo(conn)
    finally:
        await conn.close()
    if app.keys.jwt_secret is None:
        return
    token = mint(
        app.keys.jwt_secret, info.guest_user_id, ttl_s=24 * 3600, issuer=app.settings.jwt_issuer
    )
    banner = _banner(
        app.address,
        str(info.event_id),
        token,
        seeded=info.seeded,
        flags=grpcurl_flags(app.settings.tls),
    )
    print(banner, flush=True)


def grpcurl_flags(tls: TlsSettings) -> str:
    """grpcurl's transport flags for this server: -plaintext, or the TLS files to use."""
    if not tls.enabled:
        return "-plaintext"
    # GUESTFEED_TLS_CA when set; else the server's own certificate, which
    # grpcurl (Go) accepts as a trust anchor for exactly that certificate.
    flags = [f"-cacert {shlex.quote(str(tls.ca or tls.cert))}"]
    if tls.mutual:
        flags.append(f"-cert {shlex.quote(str(tls.client_cert or 'CLIENT.crt'))}")
        flags.append(f"-key {shlex.quote(str(tls.client_key or 'CLIENT.key'))}")
    if tls.server_name:
        flags.append(f"-servername {shlex.quote(tls.server_name)}")
    return " ".join(flags)


def _banner(address: str, event_id: str, token: str, *, seeded: bool, flags: str) -> str:
    state = "seeded" if seeded else "already present"
    return f"""
Demo event {event_id} ({state}). A demo guest's token (valid 24h) is in TOKEN below.

  TOKEN='{token}'
  .venv/bin/grpcurl {flags} {address} list
  .venv/bin/grpcurl {flags} {address} describe guestfeed.v1.GuestFeedService
  .venv/bin/grpcurl {flags} -H "authorization: Bearer $TOKEN" \\
      -d '{{"event_id": "{event_id}", "page_size": 5}}' \\
      {address} guestfeed.v1.GuestFeedService/ListMessages

Stop with Ctrl-C.
"""
