"""The README's "Calling it with grpcurl" commands, run as written against the demo.

Every command in that section's sh blocks runs, unchanged but for the port,
in one bash session (so `TOKEN=$(…)` carries over), from a folder laid out
like the repository after `make run`: `.venv` (a link to ours) and the
`.guestfeed/` that `.venv/bin/guestfeed serve --demo` (the Makefile's `run`)
creates there, whose dev secret `guestfeed token` signs with. Each command's
output is then checked against the demo data (`guestfeed_server.cli.demo`),
and every command of the section must be one the tests know: a command added
to the README without a check here fails, and so does a check whose command
left the README.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest

from guestfeed_server.cli.demo import DEMO_GUEST_ID, EVENT_ID, seed_demo, uid
from guestfeed_server.rollout.bucketing import bucket
from guestfeed_server.storage.pgtypes import Conn

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin"
HEADING = "## Calling it with grpcurl"
# The address the README's commands use (`make run`'s); the test's server's replaces it.
README_ADDRESS = "127.0.0.1:50051"
_READY = re.compile(r"guestfeed serving on 127\.0\.0\.1:(\d+)")
_BANNER = re.compile(r"Demo event (\S+) \((seeded|already present)\)")


def readme_commands(text: str) -> list[str]:
    """The commands of the grpcurl section's sh blocks: continuation lines joined,
    comment-only and blank lines left out."""
    start = text.index(HEADING + "\n")
    end = text.find("\n## ", start + len(HEADING))
    section = text[start : end if end != -1 else len(text)]
    blocks = re.findall(r"^```sh\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
    commands: list[str] = []
    for block in blocks:
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending += line + "\n"
            if not line.endswith("\\"):
                commands.append(pending.rstrip("\n"))
                pending = ""
        assert not pending, f"a command ends in a continuation: {pending!r}"
    return commands


@dataclass(frozen=True)
class Ran:
    """One README command and what it did."""

    command: str
    rc: int
    stdout: str
    stderr: str

    def one_json(self) -> dict[str, Any]:
        """The one JSON object grpcurl printed."""
        (only,) = self.all_json()
        return only

    def all_json(self) -> list[dict[str, Any]]:
        """Every JSON object grpcurl printed (one per streamed response)."""
        decoder = json.JSONDecoder()
        out: list[dict[str, Any]] = []
        text, pos = self.stdout, 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text):
                return out
            value, pos = decoder.raw_decode(text, pos)
            out.append(value)

    def ok(self) -> Ran:
        """Itself, after checking the command succeeded."""
        assert self.rc == 0, f"{self.command}\nexit {self.rc}\n{self.stderr}"
        return self


# Which README command each check reads. Every command must match exactly one.
IS: dict[str, Callable[[str], bool]] = {
    "guest_token": lambda c: c.startswith("TOKEN=$(.venv/bin/guestfeed token "),
    "admin_token": lambda c: c.startswith("ADMIN=$(.venv/bin/guestfeed token "),
    "list": lambda c: c.split()[0] == "grpcurl" and c.split()[-1] == "list",
    "describe": lambda c: c.split()[0] == "grpcurl" and "describe" in c.split(),
    "list_messages": lambda c: (
        c.endswith("GuestFeedService/ListMessages")
        and "Bearer $TOKEN" in c
        and "not-a-uuid" not in c
    ),
    "stream_messages": lambda c: c.endswith("GuestFeedService/StreamMessages"),
    "get_read_model": lambda c: c.endswith("RolloutService/GetReadModel"),
    "get_rollout_config": lambda c: (
        c.endswith("RolloutService/GetRolloutConfig") and "Bearer $ADMIN" in c
    ),
    "health": lambda c: c.endswith("grpc.health.v1.Health/Check"),
    "no_token": lambda c: c.endswith("GuestFeedService/ListMessages") and "Bearer" not in c,
    "bad_event_id": lambda c: (
        c.endswith("GuestFeedService/ListMessages") and '"event_id": "not-a-uuid"' in c
    ),
}


class Session:
    """The README's commands, run, found by check name."""

    def __init__(self, results: list[Ran]) -> None:
        self.results = results

    def __getitem__(self, name: str) -> Ran:
        matches = [r for r in self.results if IS[name](r.command)]
        assert len(matches) == 1, f"{name}: {len(matches)} README commands match"
        return matches[0]


def command_env() -> dict[str, str]:
    """A new user's shell: no GUESTFEED_*, OTEL_* or GRPC_* settings, the venv first on PATH."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GUESTFEED_", "OTEL_", "GRPC_"))
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class DemoServer:
    """`.venv/bin/guestfeed serve --demo` running in `folder`."""

    proc: subprocess.Popen[bytes]
    port: int
    folder: Path

    @classmethod
    def start(cls, folder: Path, timeout_s: float = 90.0) -> DemoServer:
        """Starts it on a port the OS picks and waits for the demo banner."""
        out, err = folder / "serve.stdout", folder / "serve.stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [".venv/bin/guestfeed", "serve", "--demo"],
                cwd=folder,
                env={**command_env(), "GUESTFEED_LISTEN": "127.0.0.1:0"},
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            ready = _READY.search(err.read_text(errors="replace"))
            banner = _BANNER.search(out.read_text(errors="replace"))
            if ready and banner:
                assert banner.group(1) == str(EVENT_ID)
                assert banner.group(2) == "seeded", "the folder's database must be new"
                return cls(proc=proc, port=int(ready.group(1)), folder=folder)
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                raise AssertionError(
                    "guestfeed serve --demo did not become ready:\n" + err.read_text()
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, as Ctrl-C would; SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_commands(commands: list[str], folder: Path, address: str) -> list[Ran]:
    """Runs the commands in order in one bash, each with its own output files."""
    outputs = folder / "outputs"
    outputs.mkdir()
    script = []
    for n, command in enumerate(commands):
        local = command.replace(README_ADDRESS, address)
        script.append(
            f"{{\n{local}\n}} >{outputs}/{n}.out 2>{outputs}/{n}.err\necho $? >{outputs}/{n}.rc\n"
        )
    subprocess.run(
        ["bash", "-c", "".join(script)],
        cwd=folder,
        env=command_env(),
        stdin=subprocess.DEVNULL,
        check=True,
        timeout=240,
    )
    return [
        Ran(
            command=command,
            rc=int((outputs / f"{n}.rc").read_text()),
            stdout=(outputs / f"{n}.out").read_text(),
            stderr=(outputs / f"{n}.err").read_text(),
        )
        for n, command in enumerate(commands)
    ]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """The README's commands, run against a fresh `serve --demo`."""
    for tool in ("guestfeed", "grpcurl"):
        if not os.access(VENV_BIN / tool, os.X_OK):
            pytest.skip(f".venv/bin/{tool} is not installed (make run installs it)")
    commands = readme_commands(README.read_text())
    folder = tmp_path_factory.mktemp("readme-grpcurl")
    (folder / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    server = DemoServer.start(folder)
    try:
        results = run_commands(commands, folder, f"127.0.0.1:{server.port}")
    finally:
        server.stop()
    yield Session(results)


class _Recorder:
    """Stands in for a connection: keeps the rows seed_demo inserts."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = {}

    async def fetchval(self, query: str, *args: object) -> bool:
        return False  # no event yet: seed

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def execute(self, query: str, *args: object) -> str:
        return ""

    async def executemany(self, query: str, rows: list[tuple[Any, ...]]) -> None:
        table = re.search(r"INSERT INTO public\.(\w+)", query)
        assert table is not None
        self.rows.setdefault(table.group(1), []).extend(rows)


async def demo_v1_feed(user_id: uuid.UUID) -> list[str]:
    """The V1 feed of `user_id` in the demo, newest first, computed from the rows
    `serve --demo` seeds: messages with a delivery to the user, and their own."""
    rec = _Recorder()
    await seed_demo(cast(Conn, rec))
    delivered = {row[0] for row in rec.rows["message_deliveries"] if row[2] == user_id}
    feed: list[tuple[datetime, uuid.UUID]] = [
        (row[6], row[0])
        for row in rec.rows["messages"]
        if row[1] == EVENT_ID and (row[0] in delivered or row[2] == user_id)
    ]
    feed.sort(reverse=True)  # (created_at, id) descending, as the service pages
    return [str(mid) for _, mid in feed]


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["message_id"] for m in messages]


def test_the_makefile_serves_what_this_test_serves() -> None:
    """`make run` is `.venv/bin/guestfeed serve --demo`, which the session runs."""
    recipe = re.search(r"^run:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe is not None and recipe.group(1) == "$(BIN)/guestfeed serve --demo"


def test_every_readme_command_is_checked() -> None:
    """Each command of the section is one of the checks below, and each check has one."""
    commands = readme_commands(README.read_text())
    for command in commands:
        matched = [name for name, test in IS.items() if test(command)]
        assert len(matched) == 1, f"README command {command!r} matches {matched}"
        assert shlex.split(command), command
        if "grpcurl" in command:
            assert README_ADDRESS in command, f"{command!r} must dial {README_ADDRESS}"
    for name, test in IS.items():
        assert sum(map(test, commands)) == 1, f"no README command for the {name} check"


def test_tokens_are_minted(session: Session) -> None:
    for name in ("guest_token", "admin_token"):
        ran = session[name].ok()
        assert ran.stdout == "" and ran.stderr == "", ran


def test_list_names_every_service(session: Session) -> None:
    names = session["list"].ok().stdout.split()
    assert {
        "guestfeed.v1.GuestFeedService",
        "guestfeed.v1.RolloutService",
        "grpc.health.v1.Health",
    } <= set(names)
    assert any(n.startswith("grpc.reflection.") for n in names), names


def test_describe_shows_the_feed_rpcs(session: Session) -> None:
    out = session["describe"].ok().stdout
    assert "guestfeed.v1.GuestFeedService is a service:" in out
    assert "rpc ListMessages ( .guestfeed.v1.ListMessagesRequest )" in out
    assert "returns ( stream .guestfeed.v1.StreamMessagesResponse )" in out


async def test_list_messages_is_the_demo_guests_newest_page(session: Session) -> None:
    """Five messages, exactly the newest five of Mia's V1 feed, her reply first."""
    page = session["list_messages"].ok().one_json()
    expected = await demo_v1_feed(DEMO_GUEST_ID)
    assert ids(page["messages"]) == expected[:5]
    first = page["messages"][0]
    assert first["message_id"] == str(uid("msg:reply:0")) and first["is_own_message"] is True
    assert page["next_page_token"]
    assert page["read_model"] == "READ_MODEL_V1"


async def test_stream_messages_sends_the_whole_feed_in_pages(session: Session) -> None:
    """16 messages in pages of 5, 5, 5, 1: the demo guest's whole V1 feed."""
    pages = session["stream_messages"].ok().all_json()
    expected = await demo_v1_feed(DEMO_GUEST_ID)
    assert len(expected) == 16, "the README says 16"
    assert [len(p["messages"]) for p in pages] == [5, 5, 5, 1]
    assert [mid for p in pages for mid in ids(p["messages"])] == expected
    assert all(p["read_model"] == "READ_MODEL_V1" for p in pages)
    assert all(p.get("next_page_token") for p in pages[:-1])


def test_get_read_model_answers_for_the_guest(session: Session) -> None:
    answer = session["get_read_model"].ok().one_json()
    assert answer == {
        "read_model": "READ_MODEL_V1",
        "bucket": bucket(str(EVENT_ID), str(DEMO_GUEST_ID)),
        "reason": "DECISION_REASON_KILL_SWITCH",
        "config_revision": "1",
    }
    assert answer["bucket"] == 9, "the README says bucket 9"


def test_admin_reads_the_rollout_config(session: Session) -> None:
    answer = session["get_rollout_config"].ok().one_json()
    config = answer["config"]
    assert config["v2_enabled"] is False and config["v2_percentage"] == 0
    assert config["revision"] == "1"
    assert config["user_overrides"] == {} and config["event_overrides"] == {}
    assert answer["replica_v2_allowed"] is True and answer["replica_revision"] == "1"


def test_health_is_serving(session: Session) -> None:
    assert session["health"].ok().one_json() == {"status": "SERVING"}


def test_without_a_token_is_unauthenticated(session: Session) -> None:
    ran = session["no_token"]
    assert ran.rc == 64 + 16, ran
    assert ran.stdout == ""
    assert "Code: Unauthenticated" in ran.stderr
    assert '"reason":"TOKEN_MISSING"' in ran.stderr


def test_a_bad_event_id_is_invalid_argument(session: Session) -> None:
    ran = session["bad_event_id"]
    assert ran.rc == 64 + 3, ran
    assert "Code: InvalidArgument" in ran.stderr
    assert "Message: event_id: must be a UUID" in ran.stderr
    assert '"reason":"INVALID_UUID"' in ran.stderr
    assert '"field_violations":[{"field":"event_id"' in ran.stderr
