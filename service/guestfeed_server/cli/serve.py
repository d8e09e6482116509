"""`guestfeed serve`: run a replica until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

from ..app import App, graceful_exit, running
from ..auth import mint
from ..settings import Settings
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
    print(_banner(app.address, str(info.event_id), token, seeded=info.seeded), flush=True)


def _banner(address: str, event_id: str, token: str, *, seeded: bool) -> str:
    state = "seeded" if seeded else "already present"
    return f"""
Demo event {event_id} ({state}). A demo guest's token (valid 24h) is in TOKEN below.

  TOKEN='{token}'
  .venv/bin/grpcurl -plaintext {address} list
  .venv/bin/grpcurl -plaintext {address} describe guestfeed.v1.GuestFeedService
  .venv/bin/grpcurl -plaintext -H "authorization: Bearer $TOKEN" \\
      -d '{{"event_id": "{event_id}", "page_size": 5}}' \\
      {address} guestfeed.v1.GuestFeedService/ListMessages

Stop with Ctrl-C.
"""
