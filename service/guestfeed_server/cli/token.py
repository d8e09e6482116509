"""`guestfeed token`: a development JWT signed with the HS256 secret."""

from __future__ import annotations

import argparse
import uuid

from ..auth import Role, mint
from ..auth.keyring import embedded_secret
from ..settings import ConfigError, Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `token`."""
    tok = sub.add_parser("token", help="mint a development JWT signed with the configured secret")
    tok.add_argument("--user", required=True, type=uuid.UUID, help="users.id, the token's sub")
    tok.add_argument("--role", choices=[r.value for r in Role], default=Role.AUTHENTICATED.value)
    tok.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    tok.set_defaults(func=run)


def run(settings: Settings, ns: argparse.Namespace) -> int:
    """Prints the token."""
    if ns.ttl <= 0:
        raise ConfigError("--ttl must be a positive number of seconds")
    secret = settings.jwt_secret
    if secret is None and settings.embedded:
        secret = embedded_secret(settings.data_dir)
    if secret is None:
        raise ConfigError(
            "`guestfeed token` is a development tool that signs HS256 tokens with "
            "GUESTFEED_JWT_SECRET, and none is set; with only GUESTFEED_JWKS_URL, tokens come "
            "from the project's sign-in (Supabase Auth)"
        )
    print(mint(secret, ns.user, role=Role(ns.role), ttl_s=ns.ttl, issuer=settings.jwt_issuer))
    return 0
