"""`guestfeed rollout ...`: the operator's CLI over RolloutService, run as a real process.

Every test gets a server on a database of its own, so the rollout config the
shared `client` fixture serves is never changed here. The CLI runs with
`asyncio.create_subprocess_exec` because the server lives in this event loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from guestfeed.v1 import feed_pb2, rollout_pb2
from guestfeed_client import GuestFeedClient
from guestfeed_server import cli
from guestfeed_server.auth import Role
from guestfeed_server.cli import rollout as cli_rollout
from guestfeed_server.cli import rollout_format as cli_rollout_format
from guestfeed_server.storage.migrate import migrate

from .conftest import SECRET, Client, scratch_database, start_client
from .factory import World
from .jwks_server import PROJECT_REF

REVISION_RE = re.compile(r"^revision\s+(\d+)$", re.M)


@dataclass
class Result:
    """A finished CLI run."""

    code: int
    out: str
    err: str

    def json(self) -> object:
        """Stdout parsed as JSON (fails the test if it is not)."""
        return json.loads(self.out)


@dataclass
class Rig:
    """A server on its own database, its data builder, and a way to run the CLI at it."""

    client: Client
    world: World
    tmp: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.client.app.port}"

    async def cli(self, *args: str, target: str | None = None, **env: str | None) -> Result:
        """Runs `guestfeed rollout <args> --target <this server>` in a subprocess."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GUESTFEED_")}
        full_env.update(
            GUESTFEED_JWT_SECRET=SECRET,
            GUESTFEED_DATABASE_URL="postgresql://nowhere.invalid/unused",
            GUESTFEED_DATA_DIR=str(self.tmp / "data"),
        )
        for key, value in env.items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "guestfeed_server.cli",
            "rollout",
            *args,
            "--target",
            target or self.target,
            env=full_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    async def config(self) -> rollout_pb2.RolloutConfig:
        """The stored config, straight from the RPC."""
        resp = await self.client.rollout.GetRolloutConfig(
            rollout_pb2.GetRolloutConfigRequest(), metadata=service_auth()
        )
        return resp.config

    async def read_model(self, event: uuid.UUID, user: uuid.UUID) -> tuple[int, int]:
        """(read_model, reason) the server answers for the pair."""
        resp = await self.client.rollout.GetReadModel(
            rollout_pb2.GetReadModelRequest(event_id=str(event), user_id=str(user)),
            metadata=service_auth(),
        )
        return resp.read_model, resp.reason


def service_auth() -> list[tuple[str, str]]:
    return Client.auth(uuid.uuid4(), Role.SERVICE_ROLE)


@pytest.fixture
async def rig(server_dsn: str, tmp_path: Path) -> AsyncIterator[Rig]:
    """A fresh migrated database (rollout at revision 1, v2 off) and a server on it."""
    async with scratch_database(server_dsn, "guestfeed_cli_rollout") as (_, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        client = await start_client(dsn)
        try:
            yield Rig(client=client, world=World(pool), tmp=tmp_path)
        finally:
            await client.stop()
            await pool.close()


def settings_table(out: str) -> dict[str, str]:
    """The `status` key/value block: lines up to the first blank line."""
    block = out.split("\n\n", 1)[0]
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in block.splitlines())


def rows(out: str) -> list[list[str]]:
    """A table's body rows (after the header line), split on runs of 2+ spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in out.strip().splitlines()[1:]]


def assert_clean_failure(result: Result, code: int) -> None:
    assert result.code == code, result
    assert result.out == ""
    assert "Traceback" not in result.err


class TestStatus:
    async def test_fresh_config_is_revision_1_disabled_without_overrides(self, rig: Rig) -> None:
        """A freshly migrated database shows revision 1, v2 disabled at 0%, no overrides."""
        result = await rig.cli("status")
        assert (result.code, result.err) == (0, "")
        table = settings_table(result.out)
        assert table["revision"] == "1"
        assert table["v2 enabled"].startswith("no")
        assert table["v2 percentage"] == "0%"
        assert table["hash version"] == "js_simple_hash_v1"
        assert table["updated by"] == "guestfeed migrate"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", table["updated at"])
        assert "user overrides: none" in result.out
        assert "event overrides: none" in result.out

    async def test_json_status_equals_the_stored_config(self, rig: Rig) -> None:
        """--json prints the config with numbers as numbers and enums as short names."""
        result = await rig.cli("status", "--json")
        assert result.code == 0
        stored = await rig.config()
        data = result.json()
        assert isinstance(data, dict)
        assert data.pop("updated_at") == stored.updated_at.ToDatetime().isoformat() + "+00:00"
        assert data == {
            "v2_enabled": False,
            "v2_percentage": 0,
            "hash_version": "js_simple_hash_v1",
            "user_overrides": {},
            "event_overrides": {},
            "revision": 1,
            "updated_by": "guestfeed migrate",
            "shadow_sample_rate": 0.0,
            "guard_enabled": True,
            "guard": {
                "window_seconds": 60,
                "min_requests": 20,
                "max_error_share": 0.01,
                "max_avg_latency_ms": 1000.0,
                "max_p95_latency_ms": 0.0,
                "act_on_shadow_v1_only": True,
            },
        }

    async def test_connection_options_work_before_the_subcommand(self, rig: Rig) -> None:
        """`rollout --json status` equals `rollout status --json`."""
        before, after = await rig.cli("--json", "status"), await rig.cli("status", "--json")
        assert before.code == after.code == 0
        assert before.json() == after.json()

    async def test_overrides_are_listed(self, rig: Rig) -> None:
        """Stored overrides appear under their headings with their model."""
        user, event = uuid.uuid4(), uuid.uuid4()
        for args in (("user", str(user), "v2"), ("event", str(event), "v1")):
            assert (await rig.cli("override", *args, "--reason", "testers")).code == 0
        result = await rig.cli("status")
        _, users, events = result.out.split("\n\n")
        assert users.splitlines()[0] == "user overrides (1):"
        assert rows(users.split("\n", 1)[1]) == [[str(user), "v2"]]
        assert events.splitlines()[0] == "event overrides (1):"
        assert rows(events.split("\n", 1)[1]) == [[str(event), "v1"]]


class TestChanges:
    async def test_set_percentage_writes_the_next_revision(self, rig: Rig) -> None:
        """`set --percentage 10` stores 10 as revision 2 and status then shows both."""
        result = await rig.cli("set", "--percentage", "10", "--reason", "phase 3 start")
        assert (result.code, result.err) == (0, "")
        assert result.out.strip() == "updated to revision 2 (was 1): percentage 0->10"
        stored = await rig.config()
        assert (stored.v2_percentage, stored.revision, stored.v2_enabled) == (10, 2, False)
        table = settings_table((await rig.cli("status")).out)
        assert (table["v2 percentage"], table["revision"]) == ("10%", "2")

    async def test_enable_and_kill_flip_the_stored_switch(self, rig: Rig) -> None:
        """`enable` sets v2_enabled true, `kill` sets it back; each is one revision."""
        enabled = await rig.cli("enable", "--reason", "go", "--json")
        assert enabled.code == 0
        data = enabled.json()
        assert isinstance(data, dict)
        assert (data["changed"], data["retries"]) == (True, 0)
        assert (data["config"]["v2_enabled"], data["config"]["revision"]) == (True, 2)
        assert (await rig.config()).v2_enabled is True
        killed = await rig.cli("kill", "--reason", "errors up")
        assert killed.out.strip() == "updated to revision 3 (was 2): enabled true->false"
        stored = await rig.config()
        assert (stored.v2_enabled, stored.revision) == (False, 3)

    async def test_a_change_that_changes_nothing_is_not_written(self, rig: Rig) -> None:
        """`kill` while already killed prints so and leaves revision 1 and the log alone."""
        result = await rig.cli("kill", "--reason", "again")
        assert result.code == 0
        assert result.out.strip() == "nothing to change: revision 1 already says so"
        assert (await rig.config()).revision == 1
        assert (await rig.cli("history")).out.strip() == "no changes"

    async def test_user_override_decides_get_read_model(self, rig: Rig) -> None:
        """A user override sends that user to its model; `clear` hands them back to the rule."""
        user, event = uuid.uuid4(), uuid.uuid4()
        assert (await rig.cli("enable", "--reason", "on")).code == 0
        result = await rig.cli("override", "user", str(user), "v2", "--reason", "tester")
        assert result.out.strip() == f"updated to revision 3 (was 2): user {user} none->v2"
        assert dict((await rig.config()).user_overrides) == {str(user): feed_pb2.READ_MODEL_V2}
        assert await rig.read_model(event, user) == (
            feed_pb2.READ_MODEL_V2,
            rollout_pb2.DECISION_REASON_USER_OVERRIDE,
        )
        assert (await rig.cli("override", "user", str(user), "clear", "--reason", "done")).code == 0
        assert dict((await rig.config()).user_overrides) == {}
        assert await rig.read_model(event, user) == (
            feed_pb2.READ_MODEL_V1,
            rollout_pb2.DECISION_REASON_PERCENTAGE,
        )

    async def test_event_override_decides_get_read_model(self, rig: Rig) -> None:
        """An event override sends every user of that event to its model, others not."""
        event, other = uuid.uuid4(), uuid.uuid4()
        assert (await rig.cli("enable", "--reason", "on")).code == 0
        result = await rig.cli("override", "event", str(event).upper(), "v2", "--reason", "pilot")
        assert result.code == 0
        assert dict((await rig.config()).event_overrides) == {str(event): feed_pb2.READ_MODEL_V2}
        for user in (uuid.uuid4(), uuid.uuid4()):
            assert await rig.read_model(event, user) == (
                feed_pb2.READ_MODEL_V2,
                rollout_pb2.DECISION_REASON_EVENT_OVERRIDE,
            )
            assert await rig.read_model(other, user) == (
                feed_pb2.READ_MODEL_V1,
                rollout_pb2.DECISION_REASON_PERCENTAGE,
            )

    async def test_explicit_token_and_user_name_the_author(self, rig: Rig) -> None:
        """The audit log records --token's subject, or --user's when the CLI mints."""
        alice, bob = uuid.uuid4(), uuid.uuid4()
        token = Client.token(alice, Role.SERVICE_ROLE)
        assert (
            await rig.cli("set", "--percentage", "5", "--reason", "a", "--token", token)
        ).code == 0
        assert (
            await rig.cli("set", "--percentage", "6", "--reason", "b", "--user", str(bob))
        ).code == 0
        data = (await rig.cli("history", "--json")).json()
        assert isinstance(data, dict)
        assert [c["changed_by"] for c in data["changes"]] == [
            f"service_role:{bob}",
            f"service_role:{alice}",
        ]


class TestUsageErrors:
    @pytest.mark.parametrize(
        "args",
        [
            ("set", "--percentage", "10"),
            ("enable",),
            ("kill",),
            ("override", "user", str(uuid.UUID(int=1)), "v2"),
            ("override", "event", str(uuid.UUID(int=1)), "clear"),
        ],
    )
    async def test_mutation_without_reason_is_a_usage_error(
        self, rig: Rig, args: tuple[str, ...]
    ) -> None:
        """Every mutating command requires --reason: argparse exits 2 and nothing changes."""
        result = await rig.cli(*args)
        assert_clean_failure(result, 2)
        assert "the following arguments are required: --reason" in result.err
        assert (await rig.config()).revision == 1

    async def test_bad_override_arguments_are_usage_errors(self, rig: Rig) -> None:
        """A non-UUID id or an unknown model is refused before any RPC (exit 2)."""
        for args in (
            ("override", "user", "not-a-uuid", "v2", "--reason", "x"),
            ("override", "user", str(uuid.uuid4()), "v3", "--reason", "x"),
            ("preview", "--override-event", f"{uuid.uuid4()}:v2"),
            ("history", "--limit", "0"),
        ):
            assert_clean_failure(await rig.cli(*args), 2)


class TestRpcErrors:
    async def test_percentage_out_of_range_is_invalid_argument(self, rig: Rig) -> None:
        """150% comes back INVALID_ARGUMENT with the field violation on stderr, exit 1."""
        result = await rig.cli("set", "--percentage", "150", "--reason", "typo")
        assert_clean_failure(result, 1)
        lines = result.err.splitlines()
        assert lines[0].startswith("guestfeed rollout: INVALID_ARGUMENT: ")
        assert "  config.v2_percentage: must be 0-100, got 150" in lines
        assert (await rig.config()).revision == 1

    async def test_blank_reason_is_invalid_argument(self, rig: Rig) -> None:
        """A whitespace-only reason passes argparse but the server refuses it (exit 1)."""
        result = await rig.cli("enable", "--reason", "   ")
        assert_clean_failure(result, 1)
        assert "INVALID_ARGUMENT" in result.err
        assert any(line.startswith("  reason: is required") for line in result.err.splitlines())

    async def test_server_not_running_gives_a_hint(self, rig: Rig) -> None:
        """Nothing listening: a one-line cause, the `guestfeed serve` hint, exit 1."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        target = f"127.0.0.1:{port}"
        result = await rig.cli("status", target=target)
        assert_clean_failure(result, 1)
        assert f"is `guestfeed serve` running on {target}?" in result.err

    async def test_wrong_secret_is_unauthenticated(self, rig: Rig) -> None:
        """A token minted from another secret is UNAUTHENTICATED, with a hint about the secret."""
        result = await rig.cli("status", GUESTFEED_JWT_SECRET="another-secret-" + "y" * 40)
        assert_clean_failure(result, 1)
        assert result.err.startswith("guestfeed rollout: UNAUTHENTICATED: ")
        assert "GUESTFEED_JWT_SECRET" in result.err

    async def test_authenticated_token_is_permission_denied(self, rig: Rig) -> None:
        """An end user's token may not read the config: PERMISSION_DENIED, exit 1."""
        result = await rig.cli("status", "--token", Client.token(uuid.uuid4()))
        assert_clean_failure(result, 1)
        assert result.err.startswith("guestfeed rollout: PERMISSION_DENIED: ")


class TestSecret:
    async def test_embedded_data_folders_secret_is_used(self, rig: Rig) -> None:
        """Without GUESTFEED_JWT_SECRET the data folder's jwt_secret signs the token."""
        data = rig.tmp / "data"
        data.mkdir()
        (data / "jwt_secret").write_text(SECRET + "\n")
        result = await rig.cli("status", GUESTFEED_JWT_SECRET=None, GUESTFEED_DATABASE_URL=None)
        assert (result.code, result.err) == (0, "")
        assert settings_table(result.out)["revision"] == "1"

    async def test_no_secret_anywhere_is_a_config_error_and_creates_none(self, rig: Rig) -> None:
        """No secret and no data-folder secret: exit 2 naming the fix; no secret file is made."""
        result = await rig.cli("status", GUESTFEED_JWT_SECRET=None, GUESTFEED_DATABASE_URL=None)
        assert_clean_failure(result, 2)
        assert "GUESTFEED_JWT_SECRET" in result.err and "--token" in result.err
        assert not (rig.tmp / "data" / "jwt_secret").exists()


class TestServiceKey:
    async def test_the_projects_service_role_key_administers_from_the_environment(
        self, rig: Rig
    ) -> None:
        """GUESTFEED_SERVICE_TOKEN (the legacy service_role key) is used as it is, with no HS256
        secret at hand; the audit log names the key."""
        from .test_service_keys import api_key

        key = api_key("service_role", SECRET)
        env = {
            "GUESTFEED_SERVICE_TOKEN": key,
            "GUESTFEED_JWT_SECRET": None,
            "GUESTFEED_JWKS_URL": "https://ref.supabase.co/auth/v1/.well-known/jwks.json",
            "GUESTFEED_PAGE_TOKEN_SECRET": "page-" + "k" * 40,
        }
        result = await rig.cli("set", "--percentage", "7", "--reason", "ops", **env)
        assert (result.code, result.err) == (0, ""), result
        result = await rig.cli("history", "--json", **env)
        change = json.loads(result.out)["changes"][0]
        assert change["changed_by"] == f"service_role key (ref {PROJECT_REF})"
        assert (await rig.config()).v2_percentage == 7


class TestHistory:
    async def test_changes_are_listed_newest_first_with_reasons(self, rig: Rig) -> None:
        """Three changes come back as revisions 4, 3, 2 with their reasons and diffs."""
        user = uuid.uuid4()
        for args in (
            ("set", "--percentage", "10", "--reason", "phase 3 at 10%"),
            ("enable", "--reason", "switch on"),
            ("override", "user", str(user), "v2", "--reason", "internal tester"),
        ):
            assert (await rig.cli(*args)).code == 0
        result = await rig.cli("history")
        assert result.code == 0
        header, *_ = result.out.splitlines()
        assert header.split() == ["REVISION", "WHEN", "WHO", "REASON", "CHANGES"]
        body = [(r[0], r[3], r[4]) for r in rows(result.out)]
        assert body == [
            ("4", "internal tester", f"user {user} none->v2"),
            ("3", "switch on", "enabled false->true"),
            ("2", "phase 3 at 10%", "percentage 0->10"),
        ]
        data = (await rig.cli("history", "--json")).json()
        assert isinstance(data, dict)
        assert [(c["revision"], c["reason"], c["changes"]) for c in data["changes"]] == [
            (4, "internal tester", [f"user {user} none->v2"]),
            (3, "switch on", ["enabled false->true"]),
            (2, "phase 3 at 10%", ["percentage 0->10"]),
        ]
        assert data["more"] is False
        assert data["changes"][0]["before"]["user_overrides"] == {}
        assert data["changes"][0]["after"]["user_overrides"] == {str(user): "v2"}

    async def test_limit_keeps_the_newest_and_says_more_exist(self, rig: Rig) -> None:
        """--limit 2 of three changes shows revisions 4 and 3 and a note about older ones."""
        for pct in (1, 2, 3):
            assert (
                await rig.cli("set", "--percentage", str(pct), "--reason", f"to {pct}")
            ).code == 0
        result = await rig.cli("history", "--limit", "2")
        lines = result.out.strip().splitlines()
        assert [r[0] for r in rows("\n".join(lines[:-1]))] == ["4", "3"]
        assert lines[-1].startswith("(older changes exist")
        data = (await rig.cli("history", "--limit", "2", "--json")).json()
        assert isinstance(data, dict)
        assert ([c["revision"] for c in data["changes"]], data["more"]) == ([4, 3], True)


class TestPreview:
    async def _arrange(self, rig: Rig) -> tuple[uuid.UUID, uuid.UUID]:
        """Two events: `big` with 3 active guests (+1 removed), `small` with 1."""
        big, small = await rig.world.event(), await rig.world.event()
        for _ in range(3):
            await rig.world.member(big)
        _, removed = await rig.world.member(big)
        await rig.world.remove(removed)
        await rig.world.member(small)
        return big, small

    async def _server_preview(
        self, rig: Rig, config: rollout_pb2.RolloutConfig
    ) -> rollout_pb2.PreviewRolloutChangeResponse:
        return await rig.client.rollout.PreviewRolloutChange(
            rollout_pb2.PreviewRolloutChangeRequest(config=config, max_events=20),
            metadata=service_auth(),
        )

    async def test_totals_match_the_servers_preview(self, rig: Rig) -> None:
        """--enable --percentage 100 moves every active guest; numbers equal the RPC's."""
        big, small = await self._arrange(rig)
        result = await rig.cli("preview", "--enable", "--percentage", "100", "--json")
        assert result.code == 0
        data = result.json()
        assert isinstance(data, dict)
        expected = await self._server_preview(
            rig, rollout_pb2.RolloutConfig(v2_enabled=True, v2_percentage=100)
        )
        assert (expected.guests_evaluated, expected.guests_to_v2) == (4, 4)
        assert {
            k: data[k]
            for k in (
                "current_revision",
                "guests_evaluated",
                "guests_changing",
                "guests_to_v2",
                "guests_to_v1",
                "events_changing",
            )
        } == {
            "current_revision": 1,
            "guests_evaluated": 4,
            "guests_changing": 4,
            "guests_to_v2": 4,
            "guests_to_v1": 0,
            "events_changing": 2,
        }
        assert data["events"] == [
            {"event_id": str(big), "guests_changing": 3, "guests_to_v2": 3, "guests_to_v1": 0},
            {"event_id": str(small), "guests_changing": 1, "guests_to_v2": 1, "guests_to_v1": 0},
        ]
        assert data["changes"] == ["enabled false->true", "percentage 0->100"]
        assert (await rig.config()).revision == 1

    async def test_text_output_shows_totals_and_events(self, rig: Rig) -> None:
        """The human output names the proposal, the totals, then one row per event."""
        big, small = await self._arrange(rig)
        result = await rig.cli("preview", "--enable", "--override-event", f"{small}=v2")
        assert (result.code, result.err) == (0, "")
        head, totals, events = result.out.strip().split("\n\n")
        assert head == f"proposal against revision 1: enabled false->true, event {small} none->v2"
        assert [re.split(r"\s{2,}", line.strip()) for line in totals.splitlines()] == [
            ["guests evaluated", "4"],
            ["guests changing", "1"],
            ["to v2", "1"],
            ["to v1", "0"],
            ["events changing", "1"],
        ]
        assert events.splitlines()[0].split() == ["EVENT", "CHANGING", "TO", "V2", "TO", "V1"]
        assert rows(events) == [[str(small), "1", "1", "0"]]
        assert str(big) not in result.out

    async def test_override_user_flag_and_max_events(self, rig: Rig) -> None:
        """--override-user moves just that guest; --max-events 1 lists one of two events."""
        big, small = await self._arrange(rig)
        assert (await rig.cli("enable", "--reason", "on")).code == 0
        assert (await rig.cli("set", "--percentage", "100", "--reason", "all")).code == 0
        guest = next(g.user_id for g in rig.world.guests if g.event_id == small)
        assert guest is not None
        result = await rig.cli("preview", "--override-user", f"{guest}=v1", "--json")
        data = result.json()
        assert isinstance(data, dict)
        assert (data["guests_changing"], data["guests_to_v1"], data["current_revision"]) == (
            1,
            1,
            3,
        )
        assert [e["event_id"] for e in data["events"]] == [str(small)]
        capped = await rig.cli("preview", "--kill", "--max-events", "1")
        assert capped.code == 0
        assert rows(capped.out.split("\n\n")[2].split("\n(")[0]) == [[str(big), "3", "0", "3"]]
        assert capped.out.strip().splitlines()[-1].startswith("(showing 1 of 2 events")

    async def test_no_flags_previews_no_change(self, rig: Rig) -> None:
        """Without change flags the proposal is the current config: nothing moves."""
        await self._arrange(rig)
        result = await rig.cli("preview")
        assert result.code == 0
        head, totals = result.out.strip().split("\n\n")
        assert head == "proposal against revision 1: no change"
        assert [re.split(r"\s{2,}", line.strip()) for line in totals.splitlines()] == [
            ["guests evaluated", "4"],
            ["guests changing", "0"],
            ["to v2", "0"],
            ["to v1", "0"],
            ["events changing", "0"],
        ]

    async def test_invalid_proposal_is_invalid_argument(self, rig: Rig) -> None:
        """--percentage -1 is refused by the server with its field violation, exit 1."""
        result = await rig.cli("preview", "--percentage", "-1")
        assert_clean_failure(result, 1)
        assert "  config.v2_percentage: must be 0-100, got -1" in result.err.splitlines()


class ConflictingClient(GuestFeedClient):
    """Before each of its first `conflicts` updates, another writer changes the config."""

    def __init__(self, rig: Rig, conflicts: int) -> None:
        super().__init__(rig.client.channel, Client.token(uuid.uuid4(), Role.SERVICE_ROLE))
        self.rig, self.conflicts, self.updates = rig, conflicts, 0

    async def update_rollout_config(
        self, config: rollout_pb2.RolloutConfig, *, expected_revision: int, reason: str
    ) -> rollout_pb2.RolloutConfig:
        self.updates += 1
        if self.updates <= self.conflicts:
            current = await self.rig.config()
            current.v2_percentage += 1
            await super().update_rollout_config(
                current, expected_revision=current.revision, reason="someone else"
            )
        return await super().update_rollout_config(
            config, expected_revision=expected_revision, reason=reason
        )


async def run_in_process(client: GuestFeedClient, *args: str) -> Result:
    ns = cli._parser().parse_args(["rollout", *args])
    out, err = io.StringIO(), io.StringIO()
    console = cli_rollout.Console(out=out, err=err, json=ns.json, target="in-process")
    code = await cli_rollout.execute(ns, client, console)
    return Result(code, out.getvalue(), err.getvalue())


class TestOptimisticRetry:
    async def test_aborted_update_is_reread_and_retried(self, rig: Rig) -> None:
        """Another writer between read and write: the CLI re-reads, says so, and keeps both."""
        client = ConflictingClient(rig, conflicts=1)
        result = await run_in_process(client, "enable", "--reason", "go")
        assert result.code == 0
        assert result.err.splitlines() == [
            "guestfeed rollout: revision 1 was changed by someone else meanwhile; "
            "re-reading and retrying (1/3)"
        ]
        assert result.out.strip() == "updated to revision 3 (was 2): enabled false->true"
        stored = await rig.config()
        assert (stored.revision, stored.v2_enabled, stored.v2_percentage) == (3, True, 1)

    async def test_gives_up_after_three_retries(self, rig: Rig) -> None:
        """Four lost races in a row: ABORTED on stderr, exit 1, and only the others' writes."""
        client = ConflictingClient(rig, conflicts=10)
        result = await run_in_process(client, "set", "--percentage", "50", "--reason", "x")
        assert (result.code, result.out) == (1, "")
        lines = result.err.splitlines()
        assert [line[-5:] for line in lines[:3]] == ["(1/3)", "(2/3)", "(3/3)"]
        assert lines[3].startswith("guestfeed rollout: ABORTED: ")
        assert client.updates == 4
        stored = await rig.config()
        assert (stored.revision, stored.v2_percentage) == (5, 4)


class TestHelpers:
    def test_table_aligns_columns_and_does_not_pad_the_last(self) -> None:
        """Columns are as wide as their widest cell, two spaces apart, no trailing spaces."""
        assert cli_rollout_format.table(["A", "BB"], [["xxx", "y"], ["z", "wwww"]]) == (
            "A    BB\nxxx  y\nz    wwww"
        )

    @pytest.mark.parametrize(
        ("listen", "target"),
        [
            ("127.0.0.1:50051", "127.0.0.1:50051"),
            ("0.0.0.0:6000", "127.0.0.1:6000"),
            ("[::]:7000", "[::1]:7000"),
            ("db.internal:1", "db.internal:1"),
        ],
    )
    def test_default_target_follows_listen_with_wildcards_made_local(
        self, listen: str, target: str
    ) -> None:
        """GUESTFEED_LISTEN is the default target; a wildcard host becomes loopback."""
        assert cli_rollout.default_target(listen) == target

    async def test_default_target_is_guestfeed_listen(self, rig: Rig) -> None:
        """Without --target the CLI dials GUESTFEED_LISTEN."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "guestfeed_server.cli",
            "rollout",
            "status",
            "--json",
            env={
                **os.environ,
                "GUESTFEED_JWT_SECRET": SECRET,
                "GUESTFEED_DATABASE_URL": "postgresql://nowhere.invalid/unused",
                "GUESTFEED_LISTEN": rig.target,
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
        assert proc.returncode == 0
        assert json.loads(out)["revision"] == 1


class TestCompare:
    async def test_table_lists_guests_with_v1_only_messages_first_and_a_summary(
        self, rig: Rig
    ) -> None:
        """`compare --event` prints per-guest counts (the one losing a message first), the
        hidden message with its reason, and a one-line summary."""
        w = rig.world
        event = await w.event()
        fine, fine_row = await w.member(event)
        moved, moved_row = await w.member(event, tags=["vip"])
        ann = await w.message(event, "announcement")
        for user, row in ((fine, fine_row), (moved, moved_row)):
            await w.deliver(ann, guest_id=row, user_id=user)
        chan = await w.channel(event, ["vip"])
        await w.deliver(chan, guest_id=moved_row, user_id=moved)
        await w.pool.execute(
            "UPDATE public.event_guests SET guest_tags = '{}' WHERE id = $1", moved_row
        )
        result = await rig.cli("compare", "--event", str(event))
        assert (result.code, result.err) == (0, ""), result
        lines = result.out.splitlines()
        assert lines[0].split() == ["USER", "V1", "V2", "COMMON", "V1", "ONLY", "V2", "ONLY"]
        assert lines[1].split()[:5] == [str(moved), "2", "1", "1", "1"]
        assert lines[2].split()[:5] == [str(fine), "1", "1", "1", "0"]
        assert "messages V1 shows and V2 hides:" in result.out
        hidden = next(line for line in lines if str(chan) in line)
        assert "tags_no_longer_match" in hidden and "[vip]" in hidden
        assert lines[-1].startswith("2 guests compared in ")
        assert "1 with V1-only messages, 1 in all (tags_no_longer_match 1)" in lines[-1]

    async def test_json_holds_every_guest_and_the_summary(self, rig: Rig) -> None:
        """--json: guests with counts, their hidden messages, and the summary, parseable."""
        w = rig.world
        event = await w.event()
        user, row = await w.member(event)
        chan = await w.message(event, "channel")
        await w.deliver(chan, guest_id=row, user_id=user)
        result = await rig.cli("compare", "--event", str(event), "--user", str(user), "--json")
        assert result.code == 0, result
        data = result.json()
        assert isinstance(data, dict)
        (guest,) = data["guests"]
        assert (guest["user_id"], guest["v1_count"], guest["v2_count"]) == (str(user), 1, 0)
        assert guest["v1_only"][0]["reason"] == "channel_without_scheduled_message"
        assert data["summary"]["v1_only_by_reason"] == {"channel_without_scheduled_message": 1}

    async def test_an_unknown_event_is_not_found(self, rig: Rig) -> None:
        """A missing event: NOT_FOUND on stderr, exit 1."""
        result = await rig.cli("compare", "--event", str(uuid.uuid4()))
        assert_clean_failure(result, 1)
        assert "NOT_FOUND" in result.err


class TestShadowAndGuard:
    async def test_shadow_rate_and_guard_settings_are_audited_changes(self, rig: Rig) -> None:
        """`shadow --rate` and `guard pause|set` write revisions with reasons; `guard status`
        shows the guard."""
        result = await rig.cli("shadow", "--rate", "0.1", "--reason", "start shadowing")
        assert result.code == 0, result
        assert "shadow rate 0->0.1" in result.out
        result = await rig.cli("guard", "set", "--window", "30", "--reason", "tighter")
        assert result.code == 0 and "guard window_seconds 60->30" in result.out, result
        result = await rig.cli("guard", "pause", "--reason", "maintenance")
        assert result.code == 0 and "guard_enabled true->false" in result.out, result
        cfg = await rig.config()
        assert (cfg.shadow_sample_rate, cfg.guard.window_seconds, cfg.guard_enabled) == (
            0.1,
            30,
            False,
        )
        status = await rig.cli("guard", "status")
        assert status.code == 0, status
        assert "paused" in status.out and "last action: none" in status.out
        assert (await rig.cli("guard", "resume")).code == 2  # no --reason
