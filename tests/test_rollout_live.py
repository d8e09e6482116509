"""The live rollout of a replica: fail-safe, last config kept, NOTIFY and re-read propagation."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from guestfeed.v1 import feed_pb2
from guestfeed_server.api.server import ROLLOUT_HEALTH_NAME
from guestfeed_server.auth import Principal, Role
from guestfeed_server.domain.model import ReadModel
from guestfeed_server.rollout import Proposal, Reason, RolloutConfig
from guestfeed_server.rollout.admin import RolloutAdmin
from guestfeed_server.rollout.bucketing import bucket
from guestfeed_server.rollout.live import RolloutState
from guestfeed_server.storage import Database

from .rollout_helpers import (
    ADMIN,
    NOT_SERVING,
    SERVING,
    Own,
    R,
    decision,
    decision_of,
    eventually,
    health,
    pb_config,
    read_model,
    serving,
    update,
)


def _as_role(dsn: str, role: str, password: str) -> str:
    """`dsn` with its user swapped (host, port, database and ?host= socket kept)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(role)}:{quote(password)}@{host}"))


class TestLiveState:
    async def test_fail_safe_until_the_config_is_readable(self, own_db: tuple[str, str]) -> None:
        """Unreadable config: V1/FAIL_SAFE/revision 0, its health entry NOT_SERVING, until GRANT."""
        _, dsn = own_db
        role, password = f"gf_nocfg_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            await conn.execute(
                f"GRANT USAGE ON SCHEMA public, guestfeed TO {role}; "
                f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; "
                f"GRANT SELECT ON guestfeed.schema_migrations TO {role}"
            )
            async with serving(_as_role(dsn, role, password), GUESTFEED_CONNECT_TIMEOUT_S="1") as c:
                event, user = uuid.uuid4(), uuid.uuid4()
                resp = await read_model(c, event, user)
                assert decision(resp) == (feed_pb2.READ_MODEL_V1, R.DECISION_REASON_FAIL_SAFE, 0)
                assert resp.bucket == bucket(str(event), str(user))
                await eventually(lambda: health(c, ROLLOUT_HEALTH_NAME), NOT_SERVING)
                assert await health(c, "") == SERVING

                await conn.execute(f"GRANT SELECT ON guestfeed.rollout_config TO {role}")
                await eventually(
                    lambda: decision_of(c, event, user),
                    (feed_pb2.READ_MODEL_V1, R.DECISION_REASON_KILL_SWITCH, 1),
                    3.0,
                )
                await eventually(lambda: health(c, ROLLOUT_HEALTH_NAME), SERVING, 2.0)
        finally:
            await conn.execute(f"DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}")
            await conn.close()

    async def test_keeps_last_config_when_the_database_goes_away(
        self, server_dsn: str, own: Own
    ) -> None:
        """With its database gone the replica still answers by the last revision it read."""
        c = own.client
        await update(c, 1, pb_config(True, 100))
        pairs = [(uuid.uuid4(), uuid.uuid4()) for _ in range(3)]
        want = (feed_pb2.READ_MODEL_V2, R.DECISION_REASON_PERCENTAGE, 2)
        sa = await asyncpg.connect(server_dsn)
        try:
            await sa.execute(f'ALTER DATABASE "{own.name}" ALLOW_CONNECTIONS false')
            await sa.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                own.name,
            )
            await eventually(lambda: health(c, ""), NOT_SERVING)
            await asyncio.sleep(0.7)  # past two re-read periods with the database gone
            assert [await decision_of(c, e, u) for e, u in pairs] == [want] * 3
            assert await health(c, ROLLOUT_HEALTH_NAME) == SERVING
        finally:
            await sa.execute(f'ALTER DATABASE "{own.name}" ALLOW_CONNECTIONS true')
            await sa.close()
        # Back online it follows changes again, made through another replica.
        async with serving(own.dsn) as other:
            await update(other, 2, pb_config(False, 100))
            await eventually(
                lambda: decision_of(c, *pairs[0]),
                (feed_pb2.READ_MODEL_V1, R.DECISION_REASON_KILL_SWITCH, 3),
                5.0,
            )

    async def test_change_through_one_replica_reaches_another_within_a_second(
        self, own: Own
    ) -> None:
        """NOTIFY carries an update to a second server (slow re-read) in under 1 s."""
        event, user = uuid.uuid4(), uuid.uuid4()
        async with serving(own.dsn, GUESTFEED_ROLLOUT_REFRESH_S="60") as other:
            assert (await decision_of(other, event, user))[2] == 1
            await update(own.client, 1, pb_config(True, 0, {user: ReadModel.V2}))
            took = await eventually(
                lambda: decision_of(other, event, user),
                (feed_pb2.READ_MODEL_V2, R.DECISION_REASON_USER_OVERRIDE, 2),
                1.0,
            )
        assert took < 1.0

    async def test_periodic_re_read_catches_a_change_without_notify(self, own: Own) -> None:
        """A change written with no NOTIFY is picked up by the re-read (refresh 0.3 s)."""
        event, user = uuid.uuid4(), uuid.uuid4()
        await own.pool.execute(
            "UPDATE guestfeed.rollout_config SET v2_enabled = true, v2_percentage = 100, "
            "revision = revision + 1"
        )
        await eventually(
            lambda: decision_of(own.client, event, user),
            (feed_pb2.READ_MODEL_V2, R.DECISION_REASON_PERCENTAGE, 2),
            2.0,
        )


class TestRolloutStateApply:
    async def test_admin_applies_its_own_write_to_the_replica(self, own: Own) -> None:
        """RolloutAdmin.update hands the new revision to the replica's state before returning."""
        state = RolloutState(own.dsn, deploy_v2_allowed=True, refresh_s=60)  # never started
        admin_ = RolloutAdmin(
            Database(own.pool), deploy_v2_allowed=True, query_timeout_s=5, applied=state.apply
        )
        new = await admin_.update(
            Principal(ADMIN, Role.SERVICE_ROLE),
            Proposal(v2_enabled=True, v2_percentage=100),
            expected_revision=1,
            reason="unit",
        )
        assert state.config == new and new.revision == 2
        d = state.decide(uuid.uuid4(), uuid.uuid4())
        assert (d.read_model, d.reason, d.config_revision) == (ReadModel.V2, Reason.PERCENTAGE, 2)

    def test_apply_ignores_older_and_equal_revisions(self) -> None:
        """apply() adopts newer revisions only; on_change fires once per adopted one."""
        seen: list[int] = []
        state = RolloutState(
            "postgresql://unused",
            deploy_v2_allowed=True,
            refresh_s=1,
            on_change=lambda cfg: seen.append(cfg.revision),
        )
        event, user = uuid.uuid4(), uuid.uuid4()
        assert state.fail_safe
        assert state.decide(event, user).reason is Reason.FAIL_SAFE
        newer = RolloutConfig(v2_enabled=True, v2_percentage=100, revision=5)
        assert state.apply(newer) is True
        assert state.apply(RolloutConfig(revision=4)) is False
        assert state.apply(RolloutConfig(revision=5)) is False
        assert state.config is newer and not state.fail_safe
        d = state.decide(event, user)
        assert (d.read_model, d.config_revision) == (ReadModel.V2, 5)
        assert state.apply(RolloutConfig(revision=6)) is True
        assert seen == [5, 6]

    def test_deploy_switch_applies_to_the_live_state(self) -> None:
        """A state built with deploy_v2_allowed=False answers DEPLOY_KILL_SWITCH after apply()."""
        state = RolloutState("postgresql://unused", deploy_v2_allowed=False, refresh_s=1)
        state.apply(RolloutConfig(v2_enabled=True, v2_percentage=100, revision=3))
        d = state.decide(uuid.uuid4(), uuid.uuid4())
        assert (d.read_model, d.reason, d.config_revision) == (
            ReadModel.V1,
            Reason.DEPLOY_KILL_SWITCH,
            3,
        )
