"""Runs `guestfeed serve` as a child process and finds the port it bound.

Used by the multi-replica tests and benchmarks: two real processes on one
database are the only honest way to show that a change made through one
replica reaches another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_READY = re.compile(rb"guestfeed serving on (\S+):(\d+)")


@dataclass
class ServerProcess:
    """A running `guestfeed serve` child."""

    proc: asyncio.subprocess.Process
    port: int
    log: list[bytes] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.port}"

    async def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM (graceful shutdown), then SIGKILL if it lingers; returns the exit code."""
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        assert self.proc.returncode is not None
        return self.proc.returncode


async def spawn_server(
    env: Mapping[str, str], *, ready_timeout_s: float = 60.0, log_file: Path | None = None
) -> ServerProcess:
    """Starts `python -m guestfeed_server.cli serve` with `env` on top of ours.

    Pass GUESTFEED_LISTEN=127.0.0.1:0 to let the OS pick the port; the child
    logs the bound address and this returns once it has. With `log_file`, the
    child's log goes there instead of a pipe: a benchmark's client then never
    spends its own time reading the server's one-line-per-RPC log.
    """
    full_env = {**os.environ, **env}
    if log_file is not None:
        return await _spawn_to_file(full_env, ready_timeout_s, log_file)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guestfeed_server.cli",
        "serve",
        env=full_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    log: list[bytes] = []

    async def wait_ready() -> int:
        assert proc.stderr is not None
        while True:
            line = await proc.stderr.readline()
            if not line:
                raise RuntimeError(
                    "guestfeed serve exited before it was ready:\n" + b"".join(log).decode()
                )
            log.append(line)
            match = _READY.search(line)
            if match:
                return int(match.group(2))

    try:
        port = await asyncio.wait_for(wait_ready(), ready_timeout_s)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    server = ServerProcess(proc=proc, port=port, log=log)

    async def drain() -> None:
        # Keep reading so a chatty child never blocks on a full pipe.
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            log.append(line)

    server._drain = asyncio.create_task(drain())
    return server


async def _spawn_to_file(
    env: dict[str, str], ready_timeout_s: float, log_file: Path
) -> ServerProcess:
    with log_file.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "guestfeed_server.cli",
            "serve",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=sink,
        )
    deadline = asyncio.get_running_loop().time() + ready_timeout_s
    while True:
        text = await asyncio.to_thread(log_file.read_bytes)
        match = _READY.search(text)
        if match:
            return ServerProcess(proc=proc, port=int(match.group(2)), log=[text])
        if proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise RuntimeError("guestfeed serve did not become ready:\n" + text.decode())
        await asyncio.sleep(0.05)
