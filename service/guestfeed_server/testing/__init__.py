"""What tests and the benchmark share, public like `structlog.testing`.

* `scratch_database`, `embedded_server`, `with_database`: throw-away PostgreSQL
  databases on a given server or a temporary embedded one;
* `spawn_server`, `ServerProcess`: `guestfeed serve` as a child process;
* `running_pgbouncer`, `Bouncer`: a real PgBouncer in front of a server.

None of it is used by the service itself.
"""

from .pgbouncer import PGBOUNCER, Bouncer, running_pgbouncer
from .procs import ServerProcess, spawn_server
from .scratch import embedded_server, scratch_database, with_database

__all__ = [
    "PGBOUNCER",
    "Bouncer",
    "ServerProcess",
    "embedded_server",
    "running_pgbouncer",
    "scratch_database",
    "spawn_server",
    "with_database",
]
