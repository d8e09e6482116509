"""The Go client (clients/go/guestfeed/) against a real `guestfeed serve --demo`.

`go test ./clients/go/...` runs in GOPATH mode against Debian's
/usr/share/gocode (grpc-go 1.33, golang/protobuf 1.3.5; no module proxy),
with the repository linked into a temporary GOPATH at its import path,
github.com/guestfeed/guestfeed. The demo server is started as
tests/test_readme_grpcurl.py starts it, tokens are minted with `guestfeed
token` in its folder, and the Go tests get the address, the tokens and what
to expect (the demo guest's whole V1 feed, computed from the rows the demo
seeds) through GUESTFEED_TEST_* variables. Skips where Go or the Debian
packages are missing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from guestfeed_server.cli.demo import DEMO_GUEST_ID, EVENT_ID
from guestfeed_server.rollout.bucketing import bucket

from .test_readme_grpcurl import DemoServer, command_env, demo_v1_feed

ROOT = Path(__file__).resolve().parent.parent
GUESTFEED = ROOT / ".venv" / "bin" / "guestfeed"
GOCODE = Path(os.environ.get("GUESTFEED_GOCODE", "/usr/share/gocode"))
IMPORT_PATH = "github.com/guestfeed/guestfeed"
# Every Go test that needs the server: each must pass, none may skip.
LIVE_TESTS = (
    "TestListMessagesLive",
    "TestIteratorReadsEveryPageLive",
    "TestForEachWithATokenFuncAndAnOwnedConnectionLive",
    "TestGetReadModelLive",
    "TestErrorsCarryCodeMessageAndReasonLive",
    "TestDefaultDeadlineLive",
)


def go_missing() -> str | None:
    """Why the Go client cannot be built here, or None."""
    if shutil.which("go") is None:
        return "go not found (Debian: golang-go)"
    for rel, package in (
        ("google.golang.org/grpc", "golang-google-grpc-dev"),
        ("github.com/golang/protobuf/proto", "golang-github-golang-protobuf-1-3-dev"),
        ("google.golang.org/genproto/googleapis/rpc/status", "golang-google-genproto-dev"),
    ):
        if not (GOCODE / "src" / rel).is_dir():
            return f"no {rel} in {GOCODE} (Debian: {package})"
    if not (ROOT / "generated" / "go" / "guestfeed" / "v1").is_dir():
        return "generated/go/ is missing (make proto)"
    return None


def gopath_tree(tmp: Path) -> Path:
    """A GOPATH whose src/github.com/guestfeed/guestfeed is this repository; the link."""
    link = tmp / "src" / IMPORT_PATH
    link.parent.mkdir(parents=True)
    link.symlink_to(ROOT, target_is_directory=True)
    return link


def mint(folder: Path, user: str) -> str:
    """A token signed with the dev secret of the demo server in `folder`."""
    done = subprocess.run(
        [str(GUESTFEED), "token", "--user", user],
        cwd=folder,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def expected_feed() -> list[str]:
    # Its own loop, not set as current: pytest-asyncio's session loop stays as it is.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(demo_v1_feed(DEMO_GUEST_ID))
    finally:
        loop.close()


@pytest.mark.timeout(900)  # the first run compiles grpc-go; later ones take seconds
def test_go_client_against_the_demo_server(tmp_path: Path) -> None:
    """`go test ./clients/go/...` passes, its live tests included, against `serve --demo`."""
    if why := go_missing():
        pytest.skip(f"the Go client cannot be built here: {why}")
    if not os.access(GUESTFEED, os.X_OK):
        pytest.skip(".venv/bin/guestfeed is not installed (make run installs it)")
    ids = expected_feed()
    assert len(ids) == 16, "the demo guest's feed is 16 messages (README)"

    gopath = tmp_path / "gopath"
    repo = gopath_tree(gopath)
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    server = DemoServer.start(folder)
    try:
        env = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": f"{gopath}{os.pathsep}{GOCODE}",
            "GOFLAGS": "",
            # go resolves the import path from the working directory as
            # given, through the link, when PWD names it.
            "PWD": str(repo),
            "GUESTFEED_TEST_ADDR": f"127.0.0.1:{server.port}",
            "GUESTFEED_TEST_TOKEN": mint(folder, str(DEMO_GUEST_ID)),
            "GUESTFEED_TEST_EVENT": str(EVENT_ID),
            "GUESTFEED_TEST_USER": str(DEMO_GUEST_ID),
            "GUESTFEED_TEST_FEED_IDS": ",".join(ids),
            # A new database has the stored kill switch on (README, Rollout).
            "GUESTFEED_TEST_READ_MODEL": "READ_MODEL_V1",
            "GUESTFEED_TEST_BUCKET": str(bucket(str(EVENT_ID), str(DEMO_GUEST_ID))),
            "GUESTFEED_TEST_REASON": "DECISION_REASON_KILL_SWITCH",
        }
        if not any(env.get(k) for k in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):
            env["GOCACHE"] = str(tmp_path / "gocache")  # go needs a build cache somewhere
        result = subprocess.run(
            ["go", "test", "-count=1", "-v", "./clients/go/..."],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=840,
            check=False,
        )
    finally:
        server.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = set(re.findall(r"^--- PASS: (\w+)", output, re.MULTILINE))
    skipped = set(re.findall(r"^--- SKIP: (\w+)", output, re.MULTILINE))
    assert not skipped, f"Go tests skipped:\n{output}"
    missing = [name for name in LIVE_TESTS if name not in passed]
    assert not missing, f"live Go tests that did not pass: {missing}\n{output}"
    assert f"ok  \t{IMPORT_PATH}/clients/go/guestfeed" in output
