"""The TypeScript client (clients/typescript/) against a real server, by Node's test runner.

`tsc` (pinned in package.json) type-checks clients/typescript/src/ and compiles
it to dist/; `node --test` then runs dist/client.test.js, which starts
`.venv/bin/guestfeed serve --demo` itself, mints tokens with `guestfeed token`
and reads the demo guest's feed through the client. `make ts-test` runs the
same two commands. Without Node 20+ or npm this skips, saying why; `npm ci`
runs first when node_modules/ lacks a package at the version package.json pins.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "typescript"
TEST_FILE = CLIENT / "dist" / "client.test.js"
TSC = ROOT / "node_modules" / ".bin" / "tsc"


def _pins() -> dict[str, str]:
    manifest = json.loads((ROOT / "package.json").read_text())
    return {**manifest.get("dependencies", {}), **manifest.get("devDependencies", {})}


def _stale() -> list[str]:
    """The pinned packages node_modules/ lacks, or holds at another version."""
    out = []
    for name, version in _pins().items():
        installed = ROOT / "node_modules" / name / "package.json"
        if not installed.exists() or json.loads(installed.read_text())["version"] != version:
            out.append(f"{name}@{version}")
    return out


def _node() -> str:
    """node, with the pinned npm packages installed; skips when that cannot be."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: the TypeScript client test needs Node 20+ and npm")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < 20:
        pytest.skip(f"node {version}: the TypeScript client test needs Node 20+")
    if not os.access(ROOT / ".venv" / "bin" / "guestfeed", os.X_OK):
        pytest.skip(".venv/bin/guestfeed is not installed (make run installs it)")
    if _stale():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm not found: the TypeScript client's npm packages are not installed")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0 or _stale():
            pytest.skip(f"`npm ci` failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return node


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_typescript_client_against_the_demo_server() -> None:
    """tsc compiles the client and its test cleanly; every node test passes, none skipped."""
    node = _node()
    built = subprocess.run(
        [node, str(TSC), "-p", str(CLIENT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    ran = subprocess.run(
        [node, "--test", "--test-reporter=tap", str(TEST_FILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    report = ran.stdout + ran.stderr
    assert ran.returncode == 0, report
    counts = dict(re.findall(r"^# (pass|fail|skipped|cancelled|todo) (\d+)$", ran.stdout, re.M))
    assert int(counts.get("pass", 0)) >= 10, report
    assert {k: counts.get(k) for k in ("fail", "skipped", "cancelled")} == {
        "fail": "0",
        "skipped": "0",
        "cancelled": "0",
    }, report
