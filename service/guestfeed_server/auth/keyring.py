"""The secrets a server signs and verifies with, as the settings call for them."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..settings import ConfigError, Settings


@dataclass(frozen=True, slots=True)
class Keys:
    """The secrets a server signs and verifies with."""

    # The legacy HS256 project secret (None: JWKS only).
    jwt_secret: str | None
    # Page-token keys, the first signs.
    page_token_keys: tuple[str, ...]


def embedded_secret(data_dir: Path, name: str = "jwt_secret") -> str:
    """A dev secret kept beside the embedded data (made on first use, mode 0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def keys_for(settings: Settings) -> Keys:
    """The secrets the settings call for; in embedded mode, made and kept in
    the data folder. Without GUESTFEED_PAGE_TOKEN_SECRET, page tokens are
    keyed from the JWT secret as before that variable existed, so a rolling
    upgrade keeps every issued token valid."""
    jwt_secret = settings.jwt_secret
    if settings.embedded and jwt_secret is None:
        jwt_secret = embedded_secret(settings.data_dir)
    pages = settings.page_token_secrets
    if not pages and settings.embedded:
        pages = (embedded_secret(settings.data_dir, "page_token_secret"),)
    if not pages and jwt_secret is not None:
        pages = (jwt_secret,)
    if not pages:  # pragma: no cover - Settings.from_env refuses this
        raise ConfigError("GUESTFEED_PAGE_TOKEN_SECRET is required")
    return Keys(jwt_secret=jwt_secret, page_token_keys=pages)
