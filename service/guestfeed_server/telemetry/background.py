"""Background jobs of a replica: started untraced, stopped without leaks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from . import untraced


def start_background(job: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Runs `job` as a task whose database calls make no spans (see `untraced`)."""
    with untraced():
        return asyncio.create_task(job, name=name)


async def stop_background(task: asyncio.Task[None] | None) -> None:
    """Cancels a job and waits until it has finished unwinding."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
