"""generated/ is what scripts/gen_protos.py makes from protos/, and the check says so."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_protos.py"
GENERATED = ROOT / "generated"
PYTHON = ROOT / ".venv" / "bin" / "python"


def _check(*extra: str) -> subprocess.CompletedProcess[str]:
    python = str(PYTHON) if PYTHON.exists() else sys.executable
    return subprocess.run(
        [python, str(SCRIPT), "--check", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _alter(tree: Path) -> str:
    path = tree / "guestfeed" / "v1" / "feed_pb2.py"
    path.write_text(path.read_text() + "\n# edited by hand\n")
    return "guestfeed/v1/feed_pb2.py"


def _remove(tree: Path) -> str:
    (tree / "guestfeed" / "v1" / "rollout_pb2.pyi").unlink()
    return "guestfeed/v1/rollout_pb2.pyi"


def _add(tree: Path) -> str:
    (tree / "guestfeed" / "v1" / "old_pb2.py").write_text("# left over from a deleted proto\n")
    return "guestfeed/v1/old_pb2.py"


class TestGenProtosCheck:
    def test_committed_tree_is_fresh(self) -> None:
        """`gen_protos.py --check` exits 0 on the committed generated/ tree."""
        result = _check()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Protos changed" not in result.stdout

    def test_unchanged_copy_is_fresh(self, tmp_path: Path) -> None:
        """`--generated DIR` on an exact copy of generated/ exits 0."""
        copy = tmp_path / "generated"
        shutil.copytree(GENERATED, copy, ignore=shutil.ignore_patterns("__pycache__"))
        result = _check("--generated", str(copy))
        assert result.returncode == 0, result.stdout + result.stderr

    @pytest.mark.parametrize("spoil", [_alter, _remove, _add], ids=["altered", "removed", "extra"])
    def test_stale_copy_fails_naming_the_file(
        self, tmp_path: Path, spoil: Callable[[Path], str]
    ) -> None:
        """A copy with one file altered, missing or extra: exit 1, "Protos changed", the file."""
        copy = tmp_path / "generated"
        shutil.copytree(GENERATED, copy, ignore=shutil.ignore_patterns("__pycache__"))
        name = spoil(copy)
        result = _check("--generated", str(copy))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Protos changed" in result.stdout
        stale = [line.strip() for line in result.stdout.splitlines()[1:]]
        assert stale == [name]


def test_the_installed_protobuf_runs_on_upb() -> None:
    """The pinned protobuf builds messages in C; the pure-Python fallback is far slower."""
    from guestfeed_server.api.server import protobuf_backend

    assert protobuf_backend() == "upb"
