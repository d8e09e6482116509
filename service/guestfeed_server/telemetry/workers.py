"""One Prometheus endpoint for every worker of GUESTFEED_WORKERS.

Workers cannot share a port for /metrics as they share the gRPC port: a
scrape would reach one worker at random. So each worker serves its own
metrics on loopback (GUESTFEED_PROMETHEUS_PORT + 1 + its index), and the
parent serves GUESTFEED_PROMETHEUS_PORT: on each scrape it reads every
worker's page and answers with all their series, each with a `worker`
label. A scrape config (the pod annotation, a ServiceMonitor) stays one
port per pod whatever the worker count; sum without (worker) for the pod.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)

WORKER_LABEL = "worker"
# A worker that does not answer within this is left out of the scrape
# (guestfeed_worker_up 0) rather than holding up the others.
SCRAPE_TIMEOUT_S = 2.0


def worker_metrics_port(base: int, index: int) -> int:
    """The loopback port worker `index` serves its own /metrics on."""
    return base + 1 + index


class WorkersCollector(Collector):
    """Every worker's series, labelled with its index, and the parent's own:
    `guestfeed_worker_up` and `guestfeed_worker_restarts_total`."""

    def __init__(self, ports: list[int], restarts: Callable[[], dict[int, int]]) -> None:
        self.ports = ports
        self.restarts = restarts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        up = Metric("guestfeed_worker_up", "1 when the worker answered this scrape", "gauge")
        with ThreadPoolExecutor(max_workers=min(8, len(self.ports))) as pool:
            pages = list(pool.map(_fetch, self.ports))
        for index, page in enumerate(pages):
            up.add_sample(up.name, {WORKER_LABEL: str(index)}, 0.0 if page is None else 1.0)
            if page is not None:
                _merge(families, _families(page, index), index)
        restarts = Metric(
            "guestfeed_worker_restarts", "workers started again after they died", "counter"
        )
        for index, count in sorted(self.restarts().items()):
            restarts.add_sample(
                "guestfeed_worker_restarts_total", {WORKER_LABEL: str(index)}, float(count)
            )
        yield from families.values()
        yield up
        yield restarts


def serve_merged(
    port: int, addr: str, ports: list[int], restarts: Callable[[], dict[int, int]]
) -> Any:
    """Starts the parent's scrape endpoint (a daemon thread); returns its server."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkersCollector(ports, restarts))
    server, _ = start_http_server(port, addr=addr, registry=registry)
    log.info(
        "prometheus metrics on :%d/metrics (every worker's, labelled worker; workers on "
        "127.0.0.1:%d-%d)",
        port,
        ports[0],
        ports[-1],
    )
    return server


def _fetch(port: int) -> str | None:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S
        ) as resp:
            body: bytes = resp.read()
    except OSError:  # restarting, or not up yet
        return None
    return body.decode("utf-8", "replace")


def _families(page: str, index: int) -> Iterable[Metric]:
    try:
        return list(text_string_to_metric_families(page))
    except ValueError as exc:  # pragma: no cover - prometheus_client wrote it
        log.warning("worker %d's metrics cannot be parsed: %s", index, exc)
        return []


def _merge(into: dict[str, Metric], families: Iterable[Metric], index: int) -> None:
    for family in families:
        merged = into.get(family.name)
        if merged is None:
            merged = into[family.name] = Metric(family.name, family.documentation, family.type)
        for s in family.samples:
            merged.samples.append(
                Sample(s.name, {**s.labels, WORKER_LABEL: str(index)}, s.value, s.timestamp)
            )
