"""Type names for asyncpg connections, pooled or not."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Code that runs on "a connection" accepts both a plain one (migrate, tests)
# and one borrowed from the pool (the server).
Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy
