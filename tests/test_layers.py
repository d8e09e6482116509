"""The tree's layers, checked from the imports: only the gRPC edge knows gRPC.

api/ (servicers, conversions, the error map, interceptors, health, TLS) and
cli/ (a gRPC client of the service) may import grpc and the generated code;
the use cases (feed/, rollout/), storage/, auth/, domain/, settings/ and
telemetry/ may not, so they can be read, tested and reused without it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "service" / "guestfeed_server"
EDGE = ("api", "cli")
GRPC_ROOTS = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "guestfeed")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _below_the_edge() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if p.relative_to(PACKAGE).parts[0] not in EDGE and p.name != "app.py"
    )


def test_the_layer_list_covers_the_package() -> None:
    """The check sees the modules it means to (a moved package would silently pass)."""
    names = {p.relative_to(PACKAGE).parts[0] for p in _below_the_edge()}
    assert {"feed", "storage", "domain", "rollout", "auth", "settings", "telemetry"} <= names


@pytest.mark.parametrize("path", _below_the_edge(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_below_the_edge_imports_grpc(path: Path) -> None:
    grpc_imports = {name for name in _imports(path) if name.split(".")[0] in GRPC_ROOTS}
    assert not grpc_imports, f"{path.relative_to(PACKAGE)} imports {sorted(grpc_imports)}"
