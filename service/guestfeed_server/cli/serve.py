"""`guestfeed serve`: run a replica until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex

from ..app import graceful_exit, running
from ..auth import mint
from ..auth.keyring import Keys
from ..settings import Settings, TlsSettings
from ..settings.workers import WorkerRole, WorkerSettings
from ..storage.connect import connect
from . import workers
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
    """Serves until a signal; a second signal exits at once.

    With GUESTFEED_WORKERS > 1 this process is the parent of that many
    workers (cli/workers.py); each worker runs the rest of this module.
    """
    role = WorkerSettings.from_env()
    if role.supervise:
        return workers.run_parent(settings, role.count, demo=_demo if ns.demo else None)
    if role.role is not None:
        settings = workers.as_worker(settings, role.role)
    # asyncio's own loop: uvloop was measured here and did not help
    # (docs/performance.md), so it is not a dependency.
    return asyncio.run(_serve(settings, demo=ns.demo, role=role.role))


async def _serve(settings: Settings, *, demo: bool, role: WorkerRole | None = None) -> int:
    # The embedded database is ours to migrate; a real one is migrated by
    # `guestfeed migrate` with a role that may, never by serve (--demo aside).
    stop = asyncio.Event()
    async with running(settings, migrate_first=settings.embedded or demo) as app:
        # The handlers go in before "serving on" is logged: a SIGTERM sent as
        # soon as that line appears still drains. The shutdown itself runs
        # after this block, with the signals back at their defaults.
        with graceful_exit(stop), workers.lifeline(role, stop):
            if role is not None:
                workers.announce(role, app)
            else:
                log.info(
                    "guestfeed serving on %s (database: %s)",
                    app.address,
                    "embedded" if settings.embedded else "GUESTFEED_DATABASE_URL",
                )
            if demo:
                await _demo(app.dsn, app.keys, app.settings, app.address)
            await stop.wait()
    return 0


async def _demo(dsn: str, keys: Keys, settings: Settings, address: str) -> None:
    conn = await connect(dsn, "GUESTFEED_DATABASE_URL", timeout=10)
    try:
        info = await seed_demo(conn)
    finally:
        await conn.close()
    if keys.jwt_secret is None:
        return
    token = mint(keys.jwt_secret, info.guest_user_id, ttl_s=24 * 3600, issuer=settings.jwt_issuer)
    banner = _banner(
        address,
        str(info.event_id),
        token,
        seeded=info.seeded,
        flags=grpcurl_flags(settings.tls),
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
