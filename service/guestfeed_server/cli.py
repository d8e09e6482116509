"""The `guestfeed` command: serve, migrate, token."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid
from collections.abc import Sequence

from . import cli_bench, cli_rollout, db
from .auth import Role, mint
from .config import ConfigError, PoolMode, Settings, StartupError, parse_listen
from .migrate import MigrationError, migrate, missing_page_functions, missing_versions
from .telemetry import Telemetry, logs, untraced

log = logging.getLogger("guestfeed")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    ns = parser.parse_args(argv)
    # JSON lines by default (what log pipelines want); text for a terminal.
    logs.configure(json_logs=os.environ.get("GUESTFEED_LOG_FORMAT", "json") != "text")
    try:
        settings = Settings.from_env()
        result: int = ns.func(settings, ns)
        return result
    except StartupError as exc:
        print(f"guestfeed: cannot start: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"guestfeed: configuration error: {exc}", file=sys.stderr)
        return 2
    except MigrationError as exc:
        print(f"guestfeed: migration refused: {exc}", file=sys.stderr)
        return 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guestfeed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="migrate, seed a demo event if the database is empty, print a grpcurl command",
    )
    serve.set_defaults(func=_serve)
    mig = sub.add_parser("migrate", help="create or update what the service needs in the database")
    mig.set_defaults(func=_migrate)
    tok = sub.add_parser("token", help="mint a development JWT signed with the configured secret")
    tok.add_argument("--user", required=True, type=uuid.UUID, help="users.id, the token's sub")
    tok.add_argument("--role", choices=[r.value for r in Role], default=Role.AUTHENTICATED.value)
    tok.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    tok.set_defaults(func=_token)
    cli_bench.register(sub)
    cli_rollout.register(sub)
    return parser


def _migrate(settings: Settings, ns: argparse.Namespace) -> int:
    if settings.pool_mode is PoolMode.TRANSACTION and not settings.direct_database_url:
        raise ConfigError(
            "migrate needs a real session (an advisory lock, CREATE INDEX CONCURRENTLY), which "
            "a transaction pooler does not give: set GUESTFEED_DIRECT_DATABASE_URL to the "
            "database's direct or session-pooler URL"
        )
    database, _ = db.resolve(settings)
    dsn = settings.direct_database_url or database.dsn

    async def run() -> list[str]:
        conn = await db.connect(
            dsn, settings.session_url_variable, timeout=settings.connect_timeout_s
        )
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    print("applied: " + (", ".join(applied) if applied else "nothing (already up to date)"))
    return 0


def _token(settings: Settings, ns: argparse.Namespace) -> int:
    if ns.ttl <= 0:
        raise ConfigError("--ttl must be a positive number of seconds")
    secret = settings.jwt_secret
    if secret is None and settings.embedded:
        secret = db.embedded_secret(settings.data_dir)
    if secret is None:
        raise ConfigError(
            "`guestfeed token` is a development tool that signs HS256 tokens with "
            "GUESTFEED_JWT_SECRET, and none is set; with only GUESTFEED_JWKS_URL, tokens come "
            "from the project's sign-in (Supabase Auth)"
        )
    print(mint(secret, ns.user, role=Role(ns.role), ttl_s=ns.ttl, issuer=settings.jwt_issuer))
    return 0


def _serve(settings: Settings, ns: argparse.Namespace) -> int:
    telemetry = Telemetry.from_env()  # exporter settings fail before any database starts
    database, keys = db.resolve(settings)
    # asyncio's own loop: uvloop was measured here and did not help
    # (docs/performance.md), so it is not a dependency.
    return asyncio.run(_serve_async(settings, database, keys, demo=ns.demo, telemetry=telemetry))


async def _serve_async(
    settings: Settings, database: db.Database, keys: db.Keys, *, demo: bool, telemetry: Telemetry
) -> int:
    from . import server
    from .demo import seed_demo

    if settings.embedded or demo:
        # The embedded database is ours to migrate; a real one is migrated by
        # `guestfeed migrate` with a role that may, never by serve (--demo
        # aside). On a session of its own: migrate takes an advisory lock.
        session = await db.connect(
            settings.direct_database_url or database.dsn,
            settings.session_url_variable,
            timeout=settings.connect_timeout_s,
        )
        try:
            with untraced():
                await migrate(session)
        finally:
            await session.close()
    pool = await db.create_pool(database.dsn, settings)
    try:
        with untraced():
            async with pool.acquire() as conn:
                missing = await missing_versions(conn)
                if settings.pool_mode is PoolMode.TRANSACTION:
                    missing += await missing_page_functions(conn)
                info = await seed_demo(conn) if demo and not missing else None
        if missing:
            await pool.close()
            print(
                f"guestfeed: the database lacks migrations {', '.join(missing)}; "
                "run `guestfeed migrate` first",
                file=sys.stderr,
            )
            return 3
        app = await server.start(settings, pool, keys, dsn=database.dsn, telemetry=telemetry)
    except BaseException:
        await pool.close()
        raise
    host, _ = parse_listen(settings.listen)
    address = f"{host}:{app.port}"
    log.info(
        "guestfeed serving on %s (database: %s)",
        address,
        "embedded" if settings.embedded else "GUESTFEED_DATABASE_URL",
    )
    if info is not None and keys.jwt_secret is not None:
        token = mint(
            keys.jwt_secret, info.guest_user_id, ttl_s=24 * 3600, issuer=settings.jwt_issuer
        )
        print(_demo_banner(address, str(info.event_id), token, seeded=info.seeded), flush=True)
    try:
        await server.serve_forever(app)
    finally:
        # Last step of shutdown: export what the final RPCs recorded.
        telemetry.shutdown()
    return 0


def _demo_banner(address: str, event_id: str, token: str, *, seeded: bool) -> str:
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


if __name__ == "__main__":
    sys.exit(main())
