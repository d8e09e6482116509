"""Regenerate generated/ from protos/: Python, TypeScript, Go.

Run with `make proto`. `--check` generates into a temporary folder and fails
when generated/ differs, so stale code cannot land.

Python comes from grpcio-tools' protoc in this interpreter's environment
(buf.gen.yaml says why not from buf); TypeScript and Go from `buf generate`
with buf.gen.yaml, whose plugins are grouped by their `out`: generated/ts/ is
TypeScript, generated/go/ is Go. buf and protoc-gen-es come from package.json
(node_modules/, installed with `npm ci` when missing); Go's tools from the
system. A group whose tools are missing is skipped with the reason on stderr
(its part of generated/ is left as it is, and not checked), so a machine with
only Python still checks Python.

Exit status: 0 written or fresh, 1 stale, 2 generation failed.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "generated"
TEMPLATE = ROOT / "buf.gen.yaml"
NODE_BIN = ROOT / "node_modules" / ".bin"

# The Go tools generated/go/ was made with (buf.gen.yaml): other versions write
# other code, so they are treated as absent rather than reported as stale.
GOCODE = Path(os.environ.get("GUESTFEED_GOCODE", "/usr/share/gocode"))
GO_PROTOBUF_DEB = "golang-github-golang-protobuf-1-3-dev"
GO_PROTOBUF_VERSION = "1.3.5"
GO_GRPC_VERSION = "protoc-gen-go-grpc 1.0"

GROUPS = ("python", "ts", "go")
PLACES = {"python": "generated/ (but ts/ and go/)", "ts": "generated/ts/", "go": "generated/go/"}
EXIT_STALE, EXIT_FAILED = 1, 2
PROTOS = ROOT / "protos"


def group_of(out: str) -> str:
    """The language of a buf.gen.yaml `out` (or of a path under generated/)."""
    parts = Path(out).parts
    if parts[:1] == ("generated",):
        parts = parts[1:]
    return parts[0] if parts and parts[0] in ("ts", "go") else "python"


def ensure_node_tools() -> str | None:
    """buf and protoc-gen-es from node_modules/, `npm ci` first if need be; else why not."""
    if shutil.which("node") is None:
        return "node not found: buf and protoc-gen-es are npm packages (package.json)"
    tools = [NODE_BIN / "buf", NODE_BIN / "protoc-gen-es"]
    if all(t.exists() for t in tools):
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm not found: buf and protoc-gen-es are npm packages (package.json)"
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not all(t.exists() for t in tools):
        return f"`npm ci` failed: {(done.stderr or done.stdout).strip()[-500:]}"
    return None


def go_missing() -> str | None:
    """Why Go cannot be generated here as buf.gen.yaml says, or None."""
    if shutil.which("go") is None:
        return "go not found (Debian: golang-go)"
    source = GOCODE / "src" / "github.com" / "golang" / "protobuf" / "protoc-gen-go" / "main.go"
    if not source.exists():
        return f"no golang/protobuf protoc-gen-go source in {GOCODE} (Debian: {GO_PROTOBUF_DEB})"
    if shutil.which("dpkg-query") is not None:
        version = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", GO_PROTOBUF_DEB],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if version and not version.startswith(f"{GO_PROTOBUF_VERSION}-"):
            return f"{GO_PROTOBUF_DEB} is {version}; generated/go/ needs {GO_PROTOBUF_VERSION}"
    grpc = shutil.which("protoc-gen-go-grpc")
    if grpc is None:
        return "protoc-gen-go-grpc not found (Debian: protoc-gen-go-grpc)"
    version = subprocess.run(
        [grpc, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if version != GO_GRPC_VERSION:
        return f"{version or grpc} found; generated/go/ was made with {GO_GRPC_VERSION}"
    return None


def template(groups: set[str]) -> str:
    """buf.gen.yaml with only the plugins of `groups`, and .venv/bin/ as this interpreter's.

    Plugin entries are the `  - ` items after `plugins:` (the file's last key),
    each with an `out:` line; comments between them go with the next one.
    """
    lines = TEMPLATE.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("plugins:")) + 1
    items: list[list[str]] = [[]]
    for line in lines[start:]:
        starts = line.startswith(("  - ", "  #"))
        if starts and any(x.startswith("  - ") for x in items[-1]):
            items.append([])
        items[-1].append(line)
    kept = lines[:start]
    for item in items:
        outs = [m.group(1) for x in item if (m := re.match(r"\s+out:\s*(\S+)", x))]
        if not outs or group_of(outs[0]) in groups:
            kept += item
    venv_bin = f"{Path(sys.executable).parent}{os.sep}"
    return "".join(kept).replace(".venv/bin/", venv_bin)


def generate_python(out: Path) -> None:
    """grpcio-tools' protoc over protos/guestfeed/ into `out` (google.rpc's
    Python comes from googleapis-common-protos)."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    include = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "guestfeed").rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    # protoc finds the mypy-protobuf plugin on PATH: use this interpreter's bin.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if protoc.main(args) != 0:
        raise SystemExit(EXIT_FAILED)


def generate(base: Path, groups: set[str]) -> Path:
    """Generate `groups` under base/generated and return that tree."""
    fresh = base / "generated"
    fresh.mkdir(exist_ok=True)
    if "python" in groups:
        generate_python(fresh)
    if groups - {"python"}:
        _buf_generate(base, groups - {"python"})
    # Package markers: `guestfeed.v1` imports as a regular package, and Node
    # loads generated/ts/ as the ES modules protoc-gen-es writes.
    for pkg in {p.parent for p in fresh.rglob("*_pb2.py")}:
        d = pkg
        while d != fresh:
            (d / "__init__.py").touch()
            d = d.parent
    if (fresh / "ts").is_dir():
        (fresh / "ts" / "package.json").write_text('{\n  "type": "module"\n}\n')
    return fresh


def _buf_generate(base: Path, groups: set[str]) -> None:
    spec = base / "buf.gen.yaml"
    spec.write_text(template(groups))
    env = {
        **os.environ,
        # buf.gen.yaml's `go run github.com/golang/protobuf/protoc-gen-go`:
        # GOPATH mode on the system's Go sources.
        "GO111MODULE": "off",
        "GOPATH": str(GOCODE),
        "GOFLAGS": "",
    }
    done = subprocess.run(
        [str(NODE_BIN / "buf"), "generate", "--template", str(spec), "-o", str(base)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(EXIT_FAILED)


def files(root: Path, groups: set[str]) -> set[str]:
    """Files of `groups` under a generated/ tree, relative to it."""
    if not root.is_dir():
        return set()
    found = set()
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and "__pycache__" not in rel.parts and group_of(str(rel)) in groups:
            found.add(rel.as_posix())
    return found


def write(fresh: Path, target: Path, groups: set[str]) -> None:
    """Replace the parts of `target` that belong to `groups` with `fresh`'s."""
    target.mkdir(parents=True, exist_ok=True)
    for child in target.iterdir():
        if group_of(child.name) in groups:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for rel in sorted(files(fresh, groups)):
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fresh / rel, target / rel)


def stale(fresh: Path, target: Path, groups: set[str]) -> list[str]:
    want, have = files(fresh, groups), files(target, groups)
    changed = [f for f in want & have if not filecmp.cmp(fresh / f, target / f, shallow=False)]
    return sorted(want ^ have) + sorted(changed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated/ is stale")
    parser.add_argument(
        "--generated",
        type=Path,
        default=GENERATED,
        metavar="DIR",
        help="the generated tree to write or check (default: generated/; tests point it at a copy)",
    )
    parser.add_argument(
        "--without",
        action="append",
        choices=GROUPS,
        default=[],
        help="leave a language out, as if its tools were missing (repeatable)",
    )
    ns = parser.parse_args()
    target: Path = ns.generated
    skipped = {g: "--without" for g in ns.without}
    if {"ts", "go"} - set(skipped) and (why := ensure_node_tools()) is not None:
        for group in ("ts", "go"):
            skipped.setdefault(group, f"buf is not available: {why}")
    if "go" not in skipped and (why := go_missing()) is not None:
        skipped["go"] = why
    groups = set(GROUPS) - set(skipped)
    for group, why in skipped.items():
        doing = "not checked" if ns.check else "left as it is"
        print(f"skipped {group}: {why}; {PLACES[group]} {doing}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp), groups)
        if not ns.check:
            write(fresh, target, groups)
            return 0
        changed = stale(fresh, target, groups)
    if changed:
        print("Protos changed: run `make proto` and commit. Stale:", *changed, sep="\n  ")
        return EXIT_STALE
    print(f"generated/ is fresh ({', '.join(g for g in GROUPS if g in groups)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
