"""PgBouncer for tests: the runner the benchmark uses too, and a skip where it is absent."""

from __future__ import annotations

import pytest

from guestfeed_server.testing.pgbouncer import MISSING, PGBOUNCER, Bouncer, running_pgbouncer

__all__ = ["MISSING", "PGBOUNCER", "Bouncer", "needs_pgbouncer", "running_pgbouncer"]

needs_pgbouncer = pytest.mark.skipif(PGBOUNCER is None, reason=MISSING)
