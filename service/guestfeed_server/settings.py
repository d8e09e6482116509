"""Settings from environment variables, validated once at start-up.

Bad settings fail at once with a message naming the variable and what to put
there, in the manner of asyncpg's `Pool.__init__`: a service that starts with
a nonsense pool size fails later, under load, where it is harder to read.
"""

from __future__ import annotations

import enum
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_LISTEN = "127.0.0.1:50051"
# HS256 keys shorter than the hash output weaken it (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says how to fix it."""


class StartupError(ConfigError):
    """A dependency named by the settings cannot be used at start-up (the
    database refuses, the JWKS cannot be fetched); the message names the
    variable and the cause."""


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
class TelemetrySettings:
    """What to export and where: OTEL_* (the SDK's own names) and GUESTFEED_*."""

    # OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER: otlp, console (none: empty).
    traces: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    service_name: str = "guestfeed"
    # GUESTFEED_PROMETHEUS_PORT / _ADDR: a scrape endpoint (None: off).
    prometheus_port: int | None = None
    prometheus_addr: str = "127.0.0.1"
    # GUESTFEED_TRACE_HEALTH: also trace health and reflection calls.
    trace_health: bool = False
    # GUESTFEED_LOG_FORMAT: json (default) or text.
    json_logs: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TelemetrySettings:
        """Reads and validates the telemetry variables.

        Raises:
            ConfigError: an exporter name, port or log format is not understood.
        """
        env = os.environ if env is None else env
        log_format = (env.get("GUESTFEED_LOG_FORMAT") or "json").strip().lower()
        if log_format not in ("json", "text"):
            raise ConfigError(f"GUESTFEED_LOG_FORMAT must be json or text, got {log_format!r}")
        return cls(
            traces=_exporters(env, "OTEL_TRACES_EXPORTER"),
            metrics=_exporters(env, "OTEL_METRICS_EXPORTER"),
            service_name=env.get("OTEL_SERVICE_NAME") or "guestfeed",
            prometheus_port=_port(env, "GUESTFEED_PROMETHEUS_PORT"),
            prometheus_addr=env.get("GUESTFEED_PROMETHEUS_ADDR") or "127.0.0.1",
            trace_health=_bool(env, "GUESTFEED_TRACE_HEALTH", False),
            json_logs=log_format == "json",
        )


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
    telemetry: TelemetrySettings = TelemetrySettings()
    # The admin CLI's credential (GUESTFEED_SERVICE_TOKEN): the service_role key.
    service_token: str | None = None
    # Things to say at start-up about the environment (retired variables).
    notices: tuple[str, ...] = ()

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
        env = os.environ if env is None else env
        database_url = _postgres_url(env, "GUESTFEED_DATABASE_URL")
        secret = env.get("GUESTFEED_JWT_SECRET") or None
        if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"GUESTFEED_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes "
                "(use the Supabase project's JWT secret)"
            )
        jwks_url = _http_url(env, "GUESTFEED_JWKS_URL")
        if secret is None and jwks_url is None and database_url is not None:
            raise ConfigError(
                "GUESTFEED_JWKS_URL or GUESTFEED_JWT_SECRET is required with "
                "GUESTFEED_DATABASE_URL (the project's JWKS for its asymmetric keys, the legacy "
                "JWT secret for HS256, or both; only the embedded mode generates its own)"
            )
        page_secrets = _page_token_secrets(env)
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
        pool_min = _int(env, "GUESTFEED_DB_POOL_MIN", 1, lo=0)
        pool_max = _int(env, "GUESTFEED_DB_POOL_MAX", 10, lo=1)
        if pool_min > pool_max:
            raise ConfigError(
                f"GUESTFEED_DB_POOL_MIN ({pool_min}) must not exceed "
                f"GUESTFEED_DB_POOL_MAX ({pool_max})"
            )
        return cls(
            database_url=database_url,
            jwt_secret=secret,
            listen=listen,
            data_dir=Path(env.get("GUESTFEED_DATA_DIR", ".guestfeed")).expanduser(),
            pool_min_size=pool_min,
            pool_max_size=pool_max,
            query_timeout_s=_float(env, "GUESTFEED_QUERY_TIMEOUT_S", 5.0),
            connect_timeout_s=_float(env, "GUESTFEED_CONNECT_TIMEOUT_S", 10.0),
            health_interval_s=_float(env, "GUESTFEED_HEALTH_INTERVAL_S", 2.0),
            shutdown_grace_s=_float(env, "GUESTFEED_SHUTDOWN_GRACE_S", 5.0),
            deploy_v2_allowed=_bool(env, "GUESTFEED_READMODEL_V2", True),
            rollout_refresh_s=_float(env, "GUESTFEED_ROLLOUT_REFRESH_S", 5.0),
            guard_interval_s=_float(env, "GUESTFEED_GUARD_INTERVAL_S", 5.0),
            replica_name=(env.get("GUESTFEED_REPLICA_NAME") or "").strip()
            or f"{socket.gethostname()}:{os.getpid()}",
            sms_health_interval_s=_float(env, "GUESTFEED_SMS_HEALTH_INTERVAL_S", 300.0),
            jwks_url=jwks_url,
            jwt_issuer=issuer,
            page_token_secrets=page_secrets,
            allow_anonymous=_bool(env, "GUESTFEED_ALLOW_ANONYMOUS", False),
            pool_mode=pool_mode,
            direct_database_url=_postgres_url(env, "GUESTFEED_DIRECT_DATABASE_URL"),
            telemetry=TelemetrySettings.from_env(env),
            service_token=(env.get("GUESTFEED_SERVICE_TOKEN") or "").strip() or None,
            notices=_retired(env),
        )


def parse_listen(listen: str) -> tuple[str, int]:
    """Splits `host:port` ([::1]:port for IPv6) and checks the port."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"GUESTFEED_LISTEN must be host:port, got {listen!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"GUESTFEED_LISTEN port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"GUESTFEED_LISTEN port must be 0-65535, got {port}")
    return host, port


def _retired(env: Mapping[str, str]) -> tuple[str, ...]:
    if env.get("GUESTFEED_CONSISTENCY_SAMPLE_RATE"):
        return (
            "GUESTFEED_CONSISTENCY_SAMPLE_RATE is no longer read: shadow reads replaced the "
            "sampled comparison; set the rollout config's shadow_sample_rate instead "
            "(guestfeed rollout shadow --rate R --reason ...)",
        )
    return ()


def _exporters(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "none").strip().lower()
    names = tuple(n.strip() for n in raw.split(",") if n.strip() and n.strip() != "none")
    for n in names:
        if n not in ("otlp", "console"):
            raise ConfigError(f"{name} must be otlp, console or none, got {n!r}")
    return names


def _port(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "")
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{name} must be 1-65535, got {port}")
    return port


def _postgres_url(env: Mapping[str, str], name: str) -> str | None:
    url = env.get(name) or None
    if url is not None and not url.startswith(("postgres://", "postgresql://")):
        raise ConfigError(
            f"{name} must be a postgresql:// URL"
            + (
                " (or unset, to run the embedded PostgreSQL)"
                if name == "GUESTFEED_DATABASE_URL"
                else ""
            )
        )
    return url


def _http_url(env: Mapping[str, str], name: str) -> str | None:
    url = (env.get(name) or "").strip() or None
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigError(
            f"{name} must be an https:// URL (http:// for local stacks and tests), got {url!r}"
        )
    return url


def _page_token_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("GUESTFEED_PAGE_TOKEN_SECRET") or ""
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    for i, key in enumerate(keys):
        if len(key.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"GUESTFEED_PAGE_TOKEN_SECRET key {i + 1} is shorter than {MIN_SECRET_BYTES} "
                "bytes; use random keys (e.g. `openssl rand -base64 48`)"
            )
    return keys


def _int(env: Mapping[str, str], name: str, default: int, *, lo: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < lo:
        raise ConfigError(f"{name} must be >= {lo}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be > 0 seconds, got {value}")
    return value
