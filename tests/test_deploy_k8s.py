"""deploy/k8s: the kustomize base, the example overlay and the ServiceMonitor component.

No cluster runs here, so this checks what can be checked without one:

- `kubectl kustomize` renders each of them, and every object is valid against
  the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields are
  errors) for the versions in K8S_VERSIONS, offline;
- what the manifests promise: 3 replicas, maxUnavailable 0, a hardened pod,
  probes on the right health names, terminationGracePeriodSeconds above
  drain + grace, the Services, PDB, HPA, migrate Job and metrics scraping;
- that they agree with the service: every GUESTFEED_* variable they set is one
  the settings read, the pod's environment is valid Settings, the health names
  they probe are served; and, against a real database, the migrate Job's
  environment migrates it and the Deployment's serves its probes, its metrics,
  the maximum connection age, and exits within the grace period on SIGTERM.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guestfeed_server.api.health import LIVE_HEALTH_NAME, READY_HEALTH_NAME, DatabaseHealth
from guestfeed_server.api.server import connection_options
from guestfeed_server.settings import Settings
from guestfeed_server.settings.values import SECRET_SETTINGS
from guestfeed_server.testing.procs import spawn_server

from .cli_helpers import clean_env, run_cli
from .conftest import SECRET, scratch_database

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
SETTINGS_DIR = ROOT / "service" / "guestfeed_server" / "settings"
KUBECTL = shutil.which("kubectl")
# The oldest Kubernetes the manifests are for (native gRPC probes are GA
# since 1.27), the kubectl here, and the newest schema kubernetes-validate has.
K8S_VERSIONS = ("1.29.0", "1.32.0", "1.37.0")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVER_LABELS = {"app.kubernetes.io/name": "guestfeed", "app.kubernetes.io/component": "server"}

Obj = dict[str, Any]


# --- rendering --------------------------------------------------------------


@functools.cache
def kustomize_too_old(kubectl: str) -> str | None:
    """Why this kubectl's kustomize cannot render the manifests, or None: the
    ServiceMonitor component needs a kustomize of kubectl 1.21 or later (v4)."""
    proc = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
    )
    version = (
        json.loads(proc.stdout or "{}").get("kustomizeVersion", "") if proc.returncode == 0 else ""
    )
    m = re.match(r"v(\d+)\.", version)
    if m is None or int(m[1]) < 4:
        return f"{kubectl}'s kustomize ({version or 'unknown version'}) is older than v4"
    return None


def kustomize(path: Path) -> list[Obj]:
    """`kubectl kustomize path`, parsed."""
    if KUBECTL is None:
        pytest.skip(
            "kubectl is not installed: it renders the kustomizations (`kubectl kustomize`); "
            "Debian's kubernetes-client is 1.20, whose kustomize predates components"
        )
    too_old = kustomize_too_old(KUBECTL)
    if too_old:
        pytest.skip(too_old)
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize {path}:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    """The base, the example overlay, and the overlay with the ServiceMonitor component."""
    with_monitor = tmp_path_factory.mktemp("with-servicemonitor")
    # kustomize takes no absolute paths: point at the repository relatively.
    rel = Path(os.path.relpath(K8S, with_monitor))
    (with_monitor / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel / 'overlays' / 'example'}\n"
        f"components:\n  - {rel / 'components' / 'servicemonitor'}\n"
    )
    return {
        "base": kustomize(K8S / "base"),
        "example": kustomize(K8S / "overlays" / "example"),
        "servicemonitor": kustomize(with_monitor),
    }


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and (name is None or o_name(o) == name)]
    assert len(found) == 1, f"want one {kind} {name or ''}, found {[o_name(o) for o in found]}"
    return found[0]


def o_name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def container(obj: Obj) -> Obj:
    containers = pod_spec(obj)["containers"]
    assert len(containers) == 1
    c: Obj = containers[0]
    return c


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("Deployment", "Job")]


def pod_env(objs: list[Obj], workload: Obj) -> dict[str, str]:
    """The container's environment as the kubelet would set it: ConfigMaps
    (envFrom), then `env`; a fieldRef to metadata.name gives a pod name."""
    c = container(workload)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"unexpected envFrom {source}"
        env.update(one(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, var
            env[var["name"]] = f"{o_name(workload)}-7c9d8b6f5-x2k4q"
    return env


def seconds_env(env: dict[str, str], name: str) -> float:
    return float(env[name])


# --- what the service reads -------------------------------------------------


def service_env_names() -> set[str]:
    """Every GUESTFEED_* variable the settings modules read: the names they
    spell out, and the _FILE variant of each secret setting."""
    names: set[str] = set()
    for path in SETTINGS_DIR.glob("*.py"):
        names |= set(re.findall(r"\"(GUESTFEED_[A-Z0-9_]+)\"", path.read_text()))
    return names | {f"{name}_FILE" for name in SECRET_SETTINGS}


def test_the_names_read_are_found() -> None:
    """The scan finds what it should (so an empty scan cannot pass the checks below)."""
    names = service_env_names()
    for name in (
        "GUESTFEED_LISTEN",
        "GUESTFEED_SHUTDOWN_DRAIN_S",
        "GUESTFEED_PROMETHEUS_ADDR",
        "GUESTFEED_MAX_CONNECTION_AGE_S",
        "GUESTFEED_DATABASE_URL_FILE",
        "GUESTFEED_TLS_CERT",
    ):
        assert name in names
    assert "GUESTFEED_NOT_A_SETTING" not in names


# --- schemas ----------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", ["base", "example", "servicemonitor"])
def test_every_object_is_valid_for_kubernetes(
    rendered: dict[str, list[Obj]], target: str, version: str
) -> None:
    """Strict schema validation of each rendered object (CRDs excepted: the
    ServiceMonitor is checked by hand below)."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (a dev dependency) is not installed"
    )
    checked = 0
    for obj in rendered[target]:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{o_name(obj)} invalid for {version}: {exc.message}")
        checked += 1
    assert checked >= 8


def test_the_renders_hold_the_objects(rendered: dict[str, list[Obj]]) -> None:
    """Deployment, both Services, PDB, HPA, migrate Job, ServiceAccount, ConfigMap."""
    for target, objs in rendered.items():
        kinds = {
            (o["kind"], o_name(o).rsplit("-", 1)[0] if o["kind"] == "ConfigMap" else o_name(o))
            for o in objs
        }
        assert {
            ("Deployment", "guestfeed"),
            ("Service", "guestfeed"),
            ("Service", "guestfeed-headless"),
            ("PodDisruptionBudget", "guestfeed"),
            ("HorizontalPodAutoscaler", "guestfeed"),
            ("Job", "guestfeed-migrate"),
            ("ServiceAccount", "guestfeed"),
            ("ConfigMap", "guestfeed-config"),
        } <= kinds, target
        # The Secret is made out of band (docs/deploy.md), never committed.
        assert not [o for o in objs if o["kind"] == "Secret"]


# --- the Deployment -----------------------------------------------------------


@pytest.mark.parametrize("target", ["base", "example"])
def test_rollout_keeps_three_serving(rendered: dict[str, list[Obj]], target: str) -> None:
    objs = rendered[target]
    deployment = one(objs, "Deployment", "guestfeed")
    assert deployment["spec"]["replicas"] == 3
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "guestfeed",
    }
    # A re-apply of replicas: 3 never takes the HPA below its own floor.
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"


@pytest.mark.parametrize("target", ["base", "example"])
def test_pods_are_hardened(rendered: dict[str, list[Obj]], target: str) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, no
    capabilities, RuntimeDefault seccomp, requests and limits: what the
    "restricted" Pod Security Standard asks, for the server and the Job."""
    for workload in workloads(rendered[target]):
        spec = pod_spec(workload)
        where = f"{target} {workload['kind']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] != 0, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(forbidden), where
        assert all("hostPath" not in v for v in spec.get("volumes", [])), where
        c = container(workload)
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc.get("privileged", False) is False, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where} {kind}"
        # The image pins a version: not latest, not untagged.
        image = c["image"]
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+", image), image


def test_the_overlay_names_namespace_and_image(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["example"]
    namespace = one(objs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == o_name(namespace), obj["kind"]
    images = {container(w)["image"] for w in workloads(objs)}
    assert images == {"registry.example.com/guestfeed:0.1.0"}


# --- probes, draining --------------------------------------------------------


@pytest.mark.parametrize("target", ["base", "example"])
def test_probes(rendered: dict[str, list[Obj]], target: str) -> None:
    """Readiness follows the database (guestfeed.ready), liveness does not
    (guestfeed.live, or TCP), a startupProbe guards the start; all on the gRPC port."""
    c = container(one(rendered[target], "Deployment", "guestfeed"))
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    assert c["readinessProbe"]["grpc"] == {"port": grpc_port, "service": READY_HEALTH_NAME}
    liveness = c["livenessProbe"]
    assert liveness.get("grpc") == {"port": grpc_port, "service": LIVE_HEALTH_NAME} or liveness.get(
        "tcpSocket"
    ) in ({"port": grpc_port}, {"port": "grpc"})
    startup = c["startupProbe"]
    assert startup["grpc"]["port"] == grpc_port
    assert startup["grpc"]["service"] in (LIVE_HEALTH_NAME, READY_HEALTH_NAME)
    # A pod gets at least half a minute to start before liveness takes over.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


@pytest.mark.parametrize("target", ["base", "example"])
def test_termination_covers_drain_and_grace(rendered: dict[str, list[Obj]], target: str) -> None:
    """SIGTERM: health NOT_SERVING and still serving for the drain, then the
    grace for calls in flight; the kubelet must not SIGKILL before both, and
    liveness (NOT_SERVING meanwhile, as every name) must not fire first."""
    objs = rendered[target]
    deployment = one(objs, "Deployment", "guestfeed")
    env = pod_env(objs, deployment)
    drain = seconds_env(env, "GUESTFEED_SHUTDOWN_DRAIN_S")
    grace = seconds_env(env, "GUESTFEED_SHUTDOWN_GRACE_S")
    assert drain >= 3, "the drain must outlast endpoint propagation (a few seconds)"
    period = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert period >= drain + grace + 5, (period, drain, grace)
    liveness = container(deployment)["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain + grace
    # Readiness notices a failing database within a few seconds.
    readiness = container(deployment)["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 10


async def test_the_probed_names_behave_as_the_probes_assume() -> None:
    """The service's health, driven by a database probe that answers or not:
    guestfeed.ready follows the database, guestfeed.live does not, and from
    the start of shutdown both say NOT_SERVING."""
    up = True

    async def ping() -> None:
        if not up:
            raise ConnectionRefusedError("database down")

    health = DatabaseHealth(ping, (), interval_s=60, timeout_s=1)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def status(name: str) -> int:
                request = health_pb2.HealthCheckRequest(service=name)
                return int((await stub.Check(request, timeout=2)).status)

            await health.probe()
            assert await status(READY_HEALTH_NAME) == SERVING
            assert await status(LIVE_HEALTH_NAME) == SERVING
            up = False
            await health.probe()
            assert await status(READY_HEALTH_NAME) == NOT_SERVING
            assert await status(LIVE_HEALTH_NAME) == SERVING  # no restart for an outage
            up = True
            await health.probe()
            assert await status(READY_HEALTH_NAME) == SERVING
            await health.enter_shutdown()
            assert await status(READY_HEALTH_NAME) == NOT_SERVING
            assert await status(LIVE_HEALTH_NAME) == NOT_SERVING
    finally:
        await server.stop(0)


# --- environment ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["base", "example", "servicemonitor"])
def test_every_variable_set_is_one_the_service_reads(
    rendered: dict[str, list[Obj]], target: str
) -> None:
    objs = rendered[target]
    known = service_env_names()
    for workload in workloads(objs):
        env = pod_env(objs, workload)
        unknown = sorted(n for n in env if n.startswith("GUESTFEED_") and n not in known)
        assert not unknown, f"{workload['kind']} sets variables the service never reads: {unknown}"
        assert {n for n in env if not n.startswith(("GUESTFEED_", "OTEL_"))} == set()


def secret_files(
    objs: list[Obj], workload: Obj, into: Path, contents: dict[str, str]
) -> dict[str, str]:
    """The workload's env with each *_FILE path moved under `into`, where the
    Secret volume's items are written from `contents` (by key). Checks the
    path is one the volume mounts."""
    env = pod_env(objs, workload)
    spec = pod_spec(workload)
    mounts = {m["name"]: m["mountPath"] for m in container(workload)["volumeMounts"]}
    items: dict[str, str] = {}  # path in the pod -> Secret key
    for volume in spec["volumes"]:
        if "secret" in volume:
            assert mounts[volume["name"]], volume
            for item in volume["secret"]["items"]:
                items[f"{mounts[volume['name']]}/{item['path']}"] = item["key"]
    for name, value in list(env.items()):
        if name.endswith("_FILE"):
            assert value in items, f"{name}={value} is not a file of the Secret volume"
            path = into / items[value]
            path.write_text(contents[items[value]] + "\n")
            env[name] = str(path)
    return env


PAGE_KEY = "k8s-page-token-key-" + "q" * 40


@pytest.mark.parametrize("target", ["base", "example"])
def test_the_pod_env_is_valid_settings(
    rendered: dict[str, list[Obj]], target: str, tmp_path: Path
) -> None:
    """The Deployment's environment, secrets in files, is what Settings accepts,
    and means what the manifests say."""
    objs = rendered[target]
    deployment = one(objs, "Deployment", "guestfeed")
    env = secret_files(
        objs,
        deployment,
        tmp_path,
        {
            "database-url": "postgresql://reader:pw@db.example:5432/app",
            "page-token-secret": PAGE_KEY,
        },
    )
    assert not [n for n in env if n in SECRET_SETTINGS], "secrets must come from files"
    if "GUESTFEED_JWKS_URL" not in env:
        # The base names no key source; every overlay must (the example: a JWKS).
        env["GUESTFEED_JWT_SECRET"] = SECRET
    settings = Settings.from_env(env)
    assert settings.database_url == "postgresql://reader:pw@db.example:5432/app"
    assert settings.page_token_secrets == (PAGE_KEY,)
    assert settings.listen == "0.0.0.0:50051"
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    assert settings.listen.endswith(f":{ports['grpc']}")
    # Reachable from Prometheus: every interface of the pod, on the metrics port.
    assert settings.telemetry.prometheus_addr == "0.0.0.0"
    assert settings.telemetry.prometheus_port == ports["metrics"]
    assert settings.shutdown_drain_s > 0
    assert settings.replica_name.startswith("guestfeed-")
    assert settings.max_connection_age_s is not None
    assert settings.max_connection_age_grace_s is not None
    assert connection_options(
        settings.max_connection_age_s, settings.max_connection_age_grace_s
    ) == [
        ("grpc.max_connection_age_ms", round(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", round(settings.max_connection_age_grace_s * 1000)),
    ]
    if target == "example":
        assert settings.jwks_url is not None and settings.jwt_issuer is not None


# --- Services, PDB, metrics, Job ------------------------------------------------


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("target", ["base", "example"])
def test_services_select_the_server_pods_only(rendered: dict[str, list[Obj]], target: str) -> None:
    objs = rendered[target]
    deployment = one(objs, "Deployment", "guestfeed")
    job = one(objs, "Job")
    server_labels = deployment["spec"]["template"]["metadata"]["labels"]
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in container(deployment)["ports"]}
    service = one(objs, "Service", "guestfeed")
    headless = one(objs, "Service", "guestfeed-headless")
    assert service["spec"]["type"] == "ClusterIP" and "clusterIP" not in service["spec"]
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"].get("publishNotReadyAddresses", False)
    for svc in (service, headless):
        assert matches(svc["spec"]["selector"], server_labels), o_name(svc)
        assert not matches(svc["spec"]["selector"], job_labels), o_name(svc)
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (o_name(svc), port)
        grpc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["port"] == 50051
    assert deployment["spec"]["selector"]["matchLabels"] == SERVER_LABELS
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == SERVER_LABELS
    assert pdb["spec"]["maxUnavailable"] == 1
    # An outage (every pod unready) must not block node drains.
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.parametrize("target", ["base", "example"])
def test_metrics_are_scraped_by_annotation(rendered: dict[str, list[Obj]], target: str) -> None:
    objs = rendered[target]
    deployment = one(objs, "Deployment", "guestfeed")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    env = pod_env(objs, deployment)
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == env["GUESTFEED_PROMETHEUS_PORT"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert env["GUESTFEED_PROMETHEUS_ADDR"] == "0.0.0.0"


def test_the_servicemonitor_component(rendered: dict[str, list[Obj]]) -> None:
    """The ServiceMonitor selects the Service with the metrics port (not the
    headless one), by its port name, and the annotations are switched off."""
    objs = rendered["servicemonitor"]
    monitor = one(objs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        o for o in objs if o["kind"] == "Service" and matches(selector, o["metadata"]["labels"])
    ]
    assert [o_name(s) for s in selected] == ["guestfeed"]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    annotations = one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false"


@pytest.mark.parametrize("target", ["base", "example"])
def test_the_migrate_job(rendered: dict[str, list[Obj]], target: str) -> None:
    objs = rendered[target]
    job = one(objs, "Job", "guestfeed-migrate")
    deployment = one(objs, "Deployment", "guestfeed")
    c = container(job)
    assert c["args"] == ["migrate"]
    assert container(deployment)["args"] == ["serve"]
    assert c["image"] == container(deployment)["image"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["activeDeadlineSeconds"] > 0
    env = pod_env(objs, job)
    # Its own role, through the Secret, as URL and as direct (session) URL.
    assert env["GUESTFEED_DATABASE_URL_FILE"].endswith("/migrate-database-url")
    assert env["GUESTFEED_DIRECT_DATABASE_URL_FILE"] == env["GUESTFEED_DATABASE_URL_FILE"]
    server_env = pod_env(objs, deployment)
    assert server_env["GUESTFEED_DATABASE_URL_FILE"].endswith("/database-url")
    secrets = {
        v["secret"]["secretName"]
        for w in (job, deployment)
        for v in pod_spec(w)["volumes"]
        if "secret" in v
    }
    assert secrets == {"guestfeed-secrets"}


# --- against a real database ---------------------------------------------------


@pytest.fixture
async def database(server_dsn: str) -> AsyncIterator[str]:
    async with scratch_database(server_dsn, "guestfeed_k8s") as (_, dsn):
        yield dsn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def without_outer_guestfeed_env(env: dict[str, str]) -> dict[str, str]:
    """spawn_server adds our own environment: blank any GUESTFEED_* of it."""
    return {**{k: "" for k in os.environ if k.startswith("GUESTFEED_")}, **env}


def fetch(url: str) -> bytes:
    """GET without any proxy of the environment (the server is on loopback)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        body: bytes = response.read()
        return body


@pytest.mark.slow
async def test_the_manifests_env_migrates_serves_and_drains(
    rendered: dict[str, list[Obj]], database: str, tmp_path: Path
) -> None:
    """The migrate Job's environment (the example overlay's, secrets in files)
    migrates an empty database with the CLI; the Deployment's serves: its
    probes' names SERVING, metrics on the metrics port, GOAWAY at the maximum
    connection age; on SIGTERM readiness turns NOT_SERVING while calls are
    still answered, and the process exits 0 within terminationGracePeriodSeconds.

    Changed for a test machine only: listen addresses (loopback, free ports),
    a 1 s connection age, and for the base, which names no key source, a JWT secret."""
    objs = rendered["example"]
    secrets = {
        "database-url": database,
        "migrate-database-url": database,
        "page-token-secret": PAGE_KEY,
    }
    job_env = secret_files(objs, one(objs, "Job"), tmp_path, secrets)
    code, out, err = await run_cli({**clean_env(tmp_path), **job_env}, "migrate", timeout=120)
    assert code == 0, err
    assert out.startswith("applied: ")

    base = rendered["base"]
    deployment = one(base, "Deployment", "guestfeed")
    env = secret_files(base, deployment, tmp_path, secrets)
    metrics_port = free_port()
    env.update(
        GUESTFEED_LISTEN="127.0.0.1:0",
        GUESTFEED_PROMETHEUS_ADDR="127.0.0.1",
        GUESTFEED_PROMETHEUS_PORT=str(metrics_port),
        GUESTFEED_MAX_CONNECTION_AGE_S="1",
        GUESTFEED_JWT_SECRET=SECRET,
        GUESTFEED_DATA_DIR=str(tmp_path / "data"),
    )
    proc = await spawn_server(without_outer_guestfeed_env(env))
    try:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def status(name: str) -> int:
                request = health_pb2.HealthCheckRequest(service=name)
                return int((await stub.Check(request, timeout=5)).status)

            c = container(deployment)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "grpc" in c[probe]:
                    assert await status(c[probe]["grpc"]["service"]) == SERVING, probe

            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            url = f"http://127.0.0.1:{metrics_port}{annotations['prometheus.io/path']}"
            body = await asyncio.to_thread(fetch, url)
            assert b"# TYPE" in body

            # The maximum connection age: the server ends the connection, the
            # client reconnects for its next call. On a connection of its own,
            # opened now (the one above may be a second old already).
            async with grpc.aio.insecure_channel(proc.target) as fresh:
                request = health_pb2.HealthCheckRequest(service=READY_HEALTH_NAME)
                await health_pb2_grpc.HealthStub(fresh).Check(request, timeout=5)
                async with asyncio.timeout(5):
                    while fresh.get_state() == grpc.ChannelConnectivity.READY:
                        await fresh.wait_for_state_change(grpc.ChannelConnectivity.READY)
                reply = await health_pb2_grpc.HealthStub(fresh).Check(request, timeout=5)
                assert reply.status == SERVING

            started = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            while await status(READY_HEALTH_NAME) != NOT_SERVING:
                assert time.monotonic() - started < 3, "readiness still SERVING after SIGTERM"
                await asyncio.sleep(0.05)
            # Draining: still answering (NOT_SERVING, not UNAVAILABLE).
            drain = float(env["GUESTFEED_SHUTDOWN_DRAIN_S"])
            if time.monotonic() - started < drain - 1:
                assert await status(LIVE_HEALTH_NAME) == NOT_SERVING
            period = pod_spec(deployment)["terminationGracePeriodSeconds"]
            code = await asyncio.wait_for(proc.proc.wait(), period)
            assert code == 0, b"".join(proc.log).decode()
            assert time.monotonic() - started >= drain
    finally:
        await proc.stop()


def test_the_first_deploy_step_selects_what_the_job_needs(rendered: dict[str, list[Obj]]) -> None:
    """docs/deploy.md applies `-l 'app.kubernetes.io/component notin
    (server,server-headless)'` first: the Job, its ConfigMap and ServiceAccount,
    not the server."""
    objs = rendered["example"]

    def selected(obj: Obj) -> bool:
        labels = obj["metadata"].get("labels", {})
        return labels.get("app.kubernetes.io/component") not in ("server", "server-headless")

    first = {(o["kind"], o_name(o)) for o in objs if selected(o)}
    job = one(objs, "Job")
    assert ("Job", "guestfeed-migrate") in first
    assert ("ServiceAccount", pod_spec(job)["serviceAccountName"]) in first
    for source in container(job)["envFrom"]:
        assert ("ConfigMap", source["configMapRef"]["name"]) in first
    assert ("Namespace", "guestfeed") in first
    assert not [kind for kind, _ in first if kind in ("Deployment", "Service")]
