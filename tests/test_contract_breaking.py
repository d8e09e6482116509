"""`make breaking` (scripts/buf_breaking.sh): buf breaking against the last commit on main.

Each test copies protos/ and buf.yaml into a temporary git repository with one
commit on main, changes the copy and runs the script there, as CI does: a
harmless change passes, a renumbered or removed field fails naming it. buf is
an npm package (package.json): without node these tests skip.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "buf_breaking.sh"
FEED = Path("protos") / "guestfeed" / "v1" / "feed.proto"


def _buf() -> Path:
    """The repository's pinned buf (node_modules/.bin/buf, `npm ci` first if need be)."""
    if shutil.which("node") is None:
        pytest.skip("node not found: buf is an npm package (package.json)")
    if shutil.which("git") is None:
        pytest.skip("git not found")
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen_protos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_protos)
    if (why := gen_protos.ensure_node_tools()) is not None:
        pytest.skip(f"buf is not available: {why}")
    return ROOT / "node_modules" / ".bin" / "buf"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


@pytest.fixture
def buf() -> Path:
    return _buf()


@pytest.fixture
def repo(tmp_path: Path, buf: Path) -> Path:
    """A copy of the contract, committed once on main."""
    repo = tmp_path / "contract"
    repo.mkdir()
    shutil.copytree(ROOT / "protos", repo / "protos")
    shutil.copy(ROOT / "buf.yaml", repo / "buf.yaml")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "the contract")
    return repo


def _breaking(repo: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUF": str(_buf())}
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(name, None)
    return subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _edit(repo: Path, old: str, new: str) -> None:
    """Replace `old`, which must occur once in feed.proto, by `new`."""
    path = repo / FEED
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


# ListMessagesRequest's fields, as feed.proto has them.
PAGE_SIZE = re.compile(r"(message ListMessagesRequest \{.*?)int32 page_size = 2;", re.S)
PAGE_TOKEN = re.compile(r"(message ListMessagesRequest \{.*?)\n[^\n]*string page_token = 3;", re.S)


def _sub_once(repo: Path, pattern: re.Pattern[str], replacement: str) -> None:
    path = repo / FEED
    text, n = pattern.subn(replacement, path.read_text(), count=1)
    assert n == 1, pattern.pattern
    path.write_text(text)


def test_the_first_commit_has_nothing_to_compare_against(repo: Path) -> None:
    result = _breaking(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "has no parent here (it is the first commit)" in result.stdout


def test_a_harmless_change_on_a_branch_passes_against_main(repo: Path) -> None:
    """A new field, a new comment, uncommitted on a branch: compared with main, nothing breaks."""
    _git(repo, "checkout", "-q", "-b", "feature")
    _edit(
        repo,
        "message ListMessagesRequest {\n",
        "message ListMessagesRequest {\n"
        "  // A field added later, with a number of its own.\n"
        "  string harmless_note = 99;\n",
    )
    _edit(repo, "// The guest message feed of the events app.", "// The guest message feed.")
    result = _breaking(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "buf breaking against main" in result.stdout


def test_a_renumbered_field_fails_naming_it(repo: Path) -> None:
    """page_size 2 -> 12, committed on main: compared with the previous commit, it breaks."""
    _sub_once(repo, PAGE_SIZE, r"\1int32 page_size = 12;")
    _git(repo, "commit", "-q", "-am", "renumber page_size")
    result = _breaking(repo)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "buf breaking against the previous commit" in result.stdout
    assert (
        'Previously present field "2" with name "page_size" on message "ListMessagesRequest"'
        in result.stdout
    )


def test_a_removed_field_fails_naming_it(repo: Path) -> None:
    """page_token deleted, uncommitted on a branch: compared with main, it breaks."""
    _git(repo, "checkout", "-q", "-b", "feature")
    _sub_once(repo, PAGE_TOKEN, r"\1")
    result = _breaking(repo)
    assert result.returncode != 0, result.stdout + result.stderr
    assert (
        'Previously present field "3" with name "page_token" on message "ListMessagesRequest" '
        "was deleted" in result.stdout
    )


def test_the_repository_passes_against_its_last_landed_commit(buf: Path) -> None:
    """`make breaking` on this checkout: the working tree's protos break nothing."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = _breaking(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
