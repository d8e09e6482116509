"""The service's settings, read from `GUESTFEED_*` variables once at start-up."""

from __future__ import annotations

import enum
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .health import ReadPathSettings, env_seconds_or_zero
from .limits import LimitSettings
from .replicas import ReplicaSettings
from .telemetry import TelemetrySettings
from .tls import TlsSettings
from .values import (
    MIN_SECRET_BYTES,
    ConfigError,
    env_bool,
    env_float,
    env_int,
    env_seconds_or_unset,
    http_url,
    page_token_secrets,
    parse_listen,
    postgres_url,
    with_secret_files,
)
from .watch import WatchSettings

DEFAULT_LISTEN = "127.0.0.1:50051"


class PoolMode(enum.Enum):
    """How the database URL's connections behave (GUESTFEED_DB_POOL_MODE).

    `session`: each connection is a real PostgreSQL session (a direct URL,
    Supavisor on 5432, PgBouncer in session mode). `transaction`: the server
    connection may change after every transaction (Supavisor on 6543,
    PgBouncer in transaction mode), so nothing may rely on session state.
    """

    SESSION = "session"
    TRANSACTION = "transaction"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service reads from its environment."""

    database_url: str | None
    jwt_secret: str | None
    listen: str
    data_dir: Path
    pool_min_size: int
    pool_max_size: int
    # Upper bound on one database call; an RPC deadline shortens it further.
    query_timeout_s: float
    connect_timeout_s: float
    health_interval_s: float
    shutdown_grace_s: float
    # The plan's deploy-level flag, kept as a hard kill switch above the
    # stored config: GUESTFEED_READMODEL_V2=false pins every replica so
    # started to v1, whatever the rollout config says.
    deploy_v2_allowed: bool
    # How often a replica re-reads the rollout config even without a NOTIFY.
    rollout_refresh_s: float
    # How often the auto-rollback guard looks at its window.
    guard_interval_s: float = 5.0
    # How this replica names itself (the guard's audit rows): host:pid by default.
    replica_name: str = ""
    # How often the SMS pipeline health query runs.
    sms_health_interval_s: float = 300.0
    # The project's JWKS (asymmetric user tokens); None: HS256 secret only.
    jwks_url: str | None = None
    # When set, user tokens' `iss` must equal it.
    jwt_issuer: str | None = None
    # Page-token keys, the first signs; empty: derived (see `page_token_keys`).
    page_token_secrets: tuple[str, ...] = ()
    allow_anonymous: bool = False
    pool_mode: PoolMode = PoolMode.SESSION
    # A connection with a real session (LISTEN, migrate's advisory lock,
    # CREATE INDEX CONCURRENTLY) when the main URL goes through a pooler.
    direct_database_url: str | None = None
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    # The admin CLI's credential (GUESTFEED_SERVICE_TOKEN): the service_role key.
    service_token: str | None = None
    # Things to say at start-up about the environment (retired variables).
    notices: tuple[str, ...] = ()
    tls: TlsSettings = field(default_factory=TlsSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    # On SIGTERM, how long health says NOT_SERVING while calls are still
    # served, before `shutdown_grace_s` starts: load balancers (a Kubernetes
    # Service's endpoints) need that long to stop routing here. 0: no drain.
    shutdown_drain_s: float = 0.0
    # When health's guestfeed.read_path (and guestfeed.ready) say NOT_SERVING.
    read_path: ReadPathSettings = field(default_factory=ReadPathSettings)
    # Live updates: the hub's tick, heartbeats, buffers, the safe mode.
    watch: WatchSettings = field(default_factory=WatchSettings)
    # GUESTFEED_MAX_CONNECTION_AGE_S / _GRACE_S: gRPC's max_connection_age(_grace)
    # server options, so clients reconnect (and spread over new replicas).
    # None: no limit.
    max_connection_age_s: float | None = None
    max_connection_age_grace_s: float | None = None
    # Read replicas for feed pages (GUESTFEED_REPLICA_*); none by default.
    replicas: ReplicaSettings = field(default_factory=ReplicaSettings)
    # SO_REUSEPORT on the gRPC port: on for the workers of GUESTFEED_WORKERS,
    # which share one port; off otherwise, so a port already taken (another
    # server's included) stops start-up. Not read from the environment.
    reuse_port: bool = False

    @property
    def embedded(self) -> bool:
        """True when no database URL is set and the embedded server is used."""
        return self.database_url is None

    @property
    def session_url_variable(self) -> str:
        """The variable whose URL serves session-bound work (LISTEN, migrate)."""
        if self.direct_database_url:
            return "GUESTFEED_DIRECT_DATABASE_URL"
        return "GUESTFEED_DATABASE_URL"

    @property
    def can_listen(self) -> bool:
        """Whether some configured URL gives a real session (LISTEN works)."""
        return self.pool_mode is PoolMode.SESSION or self.direct_database_url is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates the `GUESTFEED_*` variables.

        Raises:
            ConfigError: a variable is malformed; the message names it.
        """
        # Secrets may come from files (GUESTFEED_JWT_SECRET_FILE, ...): read them in first.
        env = with_secret_files(os.environ if env is None else env)
        database_url = postgres_url(env, "GUESTFEED_DATABASE_URL")
        secret = env.get("GUESTFEED_JWT_SECRET") or None
        if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"GUESTFEED_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes "
                "(use the Supabase project's JWT secret)"
            )
        jwks_url = http_url(env, "GUESTFEED_JWKS_URL")
        if secret is None and jwks_url is None and database_url is not None:
            raise ConfigError(
                "GUESTFEED_JWKS_URL or GUESTFEED_JWT_SECRET is required with "
                "GUESTFEED_DATABASE_URL (the project's JWKS for its asymmetric keys, the legacy "
                "JWT secret for HS256, or both; only the embedded mode generates its own)"
            )
        page_secrets = page_token_secrets(env)
        if not page_secrets and secret is None and database_url is not None:
            raise ConfigError(
                "GUESTFEED_PAGE_TOKEN_SECRET is required when only GUESTFEED_JWKS_URL is set: "
                "page tokens are signed with a key every replica shares, and a JWKS has no "
                f"secret to derive it from (set one or more random keys of at least "
                f"{MIN_SECRET_BYTES} bytes, comma-separated, the first signing)"
            )
        pool_mode_raw = (env.get("GUESTFEED_DB_POOL_MODE") or "session").strip().lower()
        try:
            pool_mode = PoolMode(pool_mode_raw)
        except ValueError:
            raise ConfigError(
                f"GUESTFEED_DB_POOL_MODE must be session or transaction, got {pool_mode_raw!r}"
            ) from None
        issuer = (env.get("GUESTFEED_JWT_ISSUER") or "").strip() or None
        listen = env.get("GUESTFEED_LISTEN", DEFAULT_LISTEN)
        parse_listen(listen)
        pool_min = env_int(env, "GUESTFEED_DB_POOL_MIN", 1, lo=0)
        pool_max = env_int(env, "GUESTFEED_DB_POOL_MAX", 10, lo=1)
        if pool_min > pool_max:
            raise ConfigError(
                f"GUESTFEED_DB_POOL_MIN ({pool_min}) must not exceed "
                f"GUESTFEED_DB_POOL_MAX ({pool_max})"
            )
        max_age, max_age_grace = _connection_age(env)
        return cls(
            database_url=database_url,
            jwt_secret=secret,
            listen=listen,
            data_dir=Path(env.get("GUESTFEED_DATA_DIR", ".guestfeed")).expanduser(),
            pool_min_size=pool_min,
            pool_max_size=pool_max,
            query_timeout_s=env_float(env, "GUESTFEED_QUERY_TIMEOUT_S", 5.0),
            connect_timeout_s=env_float(env, "GUESTFEED_CONNECT_TIMEOUT_S", 10.0),
            health_interval_s=env_float(env, "GUESTFEED_HEALTH_INTERVAL_S", 2.0),
            shutdown_grace_s=env_float(env, "GUESTFEED_SHUTDOWN_GRACE_S", 5.0),
            deploy_v2_allowed=env_bool(env, "GUESTFEED_READMODEL_V2", True),
            rollout_refresh_s=env_float(env, "GUESTFEED_ROLLOUT_REFRESH_S", 5.0),
            guard_interval_s=env_float(env, "GUESTFEED_GUARD_INTERVAL_S", 5.0),
            replica_name=(env.get("GUESTFEED_REPLICA_NAME") or "").strip()
            or f"{socket.gethostname()}:{os.getpid()}",
            sms_health_interval_s=env_float(env, "GUESTFEED_SMS_HEALTH_INTERVAL_S", 300.0),
            jwks_url=jwks_url,
            jwt_issuer=issuer,
            page_token_secrets=page_secrets,
            allow_anonymous=env_bool(env, "GUESTFEED_ALLOW_ANONYMOUS", False),
            pool_mode=pool_mode,
            direct_database_url=postgres_url(env, "GUESTFEED_DIRECT_DATABASE_URL"),
            telemetry=TelemetrySettings.from_env(env),
            service_token=(env.get("GUESTFEED_SERVICE_TOKEN") or "").strip() or None,
            notices=_retired(env),
            tls=TlsSettings.from_env(env),
            limits=LimitSettings.from_env(env),
            shutdown_drain_s=env_seconds_or_zero(env, "GUESTFEED_SHUTDOWN_DRAIN_S", 0.0),
            read_path=ReadPathSettings.from_env(env),
            watch=WatchSettings.from_env(env),
            max_connection_age_s=max_age,
            max_connection_age_grace_s=max_age_grace,
            replicas=ReplicaSettings.from_env(env),
        )


def _connection_age(env: Mapping[str, str]) -> tuple[float | None, float | None]:
    age = env_seconds_or_unset(env, "GUESTFEED_MAX_CONNECTION_AGE_S")
    grace = env_seconds_or_unset(env, "GUESTFEED_MAX_CONNECTION_AGE_GRACE_S")
    if grace is not None and age is None:
        raise ConfigError(
            "GUESTFEED_MAX_CONNECTION_AGE_GRACE_S needs GUESTFEED_MAX_CONNECTION_AGE_S: the "
            "grace is how long calls may go on after a connection reaches that age"
        )
    return age, grace


def _retired(env: Mapping[str, str]) -> tuple[str, ...]:
    if env.get("GUESTFEED_CONSISTENCY_SAMPLE_RATE"):
        return (
            "GUESTFEED_CONSISTENCY_SAMPLE_RATE is no longer read: shadow reads replaced the "
            "sampled comparison; set the rollout config's shadow_sample_rate instead "
            "(guestfeed rollout shadow --rate R --reason ...)",
        )
    return ()
