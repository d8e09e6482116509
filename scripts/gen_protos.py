"""Regenerate generated/ from protos/ (python, .pyi stubs, gRPC stubs).

Run with `make generate`. `--check` regenerates into a temporary folder and
fails when generated/ differs, so stale code cannot land.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED = ROOT / "generated"


def generate(out: Path) -> None:
    """Run protoc over every .proto under protos/ into `out`."""
    include = Path(protoc.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    # protoc finds the mypy-protobuf plugin on PATH: use this interpreter's bin.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Package markers, so `guestfeed.v1` imports as a regular package.
    for pkg in {p.parent for p in out.rglob("*_pb2.py")}:
        d = pkg
        while d != out:
            (d / "__init__.py").touch()
            d = d.parent


def _tree(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated/ is stale")
    parser.add_argument(
        "--generated",
        type=Path,
        default=GENERATED,
        metavar="DIR",
        help="the generated tree to write or check (default: generated/; tests point it at a copy)",
    )
    ns = parser.parse_args()
    target: Path = ns.generated
    if not ns.check:
        for child in target.glob("*"):
            if child.is_dir():
                shutil.rmtree(child)
        generate(target)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = _tree(fresh), _tree(target)
        stale = sorted(want ^ have) + sorted(
            f for f in want & have if not filecmp.cmp(fresh / f, target / f, shallow=False)
        )
        if stale:
            print("Protos changed: run `make generate` and commit. Stale:", *stale, sep="\n  ")
            return 1
    print("generated/ is fresh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
