"""Reading one environment variable: parsed, checked, and named in the error.

Bad settings fail at once with a message naming the variable and what to put
there, in the manner of asyncpg's `Pool.__init__`: a service that starts with
a nonsense pool size fails later, under load, where it is harder to read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

# HS256 keys shorter than the hash output weaken it (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32

# The settings that hold secrets: each may instead name a file holding the
# value in VAR_FILE (a Kubernetes Secret volume, a Docker or compose secret).
SECRET_SETTINGS = (
    "GUESTFEED_DATABASE_URL",
    "GUESTFEED_DIRECT_DATABASE_URL",
    "GUESTFEED_JWT_SECRET",
    "GUESTFEED_PAGE_TOKEN_SECRET",
    "GUESTFEED_SERVICE_TOKEN",
    "GUESTFEED_REPLICA_DATABASE_URLS",
)
# Larger than any URL or key list: a wrong path (a log, /dev/zero) is refused
# instead of read whole.
_MAX_SECRET_FILE_BYTES = 64 * 1024


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says how to fix it."""


class StartupError(ConfigError):
    """A dependency named by the settings cannot be used at start-up (the
    database refuses, the JWKS cannot be fetched); the message names the
    variable and the cause."""


def env_or_file(env: Mapping[str, str], name: str) -> str | None:
    """`name`'s value, or the contents of the file `name`_FILE names.

    The file's one trailing newline (`echo`, most editors) is dropped;
    anything else in it is the value. An empty variable counts as unset.

    Raises:
        ConfigError: both are set, or the file cannot be read, is empty, is
            not UTF-8 text or is implausibly large. The message names the
            variable and the path, never the contents.
    """
    value = env.get(name) or None
    file_variable = f"{name}_FILE"
    path_text = (env.get(file_variable) or "").strip()
    if not path_text:
        return value
    if value is not None:
        raise ConfigError(
            f"{name} and {file_variable} are both set: set one of them (the value, or the "
            "path of a file that holds it)"
        )
    path = Path(path_text).expanduser()
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"{file_variable}: cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(data) > _MAX_SECRET_FILE_BYTES:
        raise ConfigError(
            f"{file_variable}: {path} is larger than {_MAX_SECRET_FILE_BYTES} bytes; "
            "it should hold only the value"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{file_variable}: {path} is not UTF-8 text") from None
    # One line ending, as `echo` or an editor leaves it; nothing else is trimmed.
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            text = text[: -len(ending)]
            break
    if not text:
        raise ConfigError(f"{file_variable}: {path} is empty")
    return text


def with_secret_files(env: Mapping[str, str]) -> Mapping[str, str]:
    """`env` with each of `SECRET_SETTINGS` read from its _FILE variant where one is set.

    Raises:
        ConfigError: see `env_or_file`.
    """
    from_files: dict[str, str] = {}
    for name in SECRET_SETTINGS:
        value = env_or_file(env, name)
        if value is not None and (env.get(f"{name}_FILE") or "").strip():
            from_files[name] = value
    return {**env, **from_files} if from_files else env


def env_seconds_or_unset(env: Mapping[str, str], name: str) -> float | None:
    """A duration > 0 that is off when unset, for gRPC core's millisecond options.

    Raises:
        ConfigError: not a finite number of seconds > 0 that fits gRPC's
            32-bit milliseconds (about 24 days); the message names `name`.
    """
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds > 0, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0 or value * 1000 > 2**31 - 1:
        raise ConfigError(
            f"{name} must be a number of seconds > 0 and at most {(2**31 - 1) // 1000}, got {raw!r}"
        )
    return value


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


def exporters(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "none").strip().lower()
    names = tuple(n.strip() for n in raw.split(",") if n.strip() and n.strip() != "none")
    for n in names:
        if n not in ("otlp", "console"):
            raise ConfigError(f"{name} must be otlp, console or none, got {n!r}")
    return names


def env_port(env: Mapping[str, str], name: str) -> int | None:
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


def postgres_url(env: Mapping[str, str], name: str) -> str | None:
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


def http_url(env: Mapping[str, str], name: str) -> str | None:
    url = (env.get(name) or "").strip() or None
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigError(
            f"{name} must be an https:// URL (http:// for local stacks and tests), got {url!r}"
        )
    return url


def page_token_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("GUESTFEED_PAGE_TOKEN_SECRET") or ""
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    for i, key in enumerate(keys):
        if len(key.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"GUESTFEED_PAGE_TOKEN_SECRET key {i + 1} is shorter than {MIN_SECRET_BYTES} "
                "bytes; use random keys (e.g. `openssl rand -base64 48`)"
            )
    return keys


def env_int(env: Mapping[str, str], name: str, default: int, *, lo: int) -> int:
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


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
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
