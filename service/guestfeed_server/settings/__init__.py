"""Settings from environment variables, validated once at start-up.

`Settings.from_env` reads every variable the service knows; a malformed one
fails at once with a `ConfigError` naming it and saying what to put there.
"""

from .health import ReadPathSettings
from .limits import LimitSettings
from .replicas import ReplicaSettings
from .service import DEFAULT_LISTEN, PoolMode, Settings
from .telemetry import TelemetrySettings
from .tls import TlsSettings
from .values import MIN_SECRET_BYTES, ConfigError, StartupError, parse_listen
from .watch import WatchSettings

__all__ = [
    "DEFAULT_LISTEN",
    "MIN_SECRET_BYTES",
    "ConfigError",
    "LimitSettings",
    "PoolMode",
    "ReadPathSettings",
    "ReplicaSettings",
    "Settings",
    "StartupError",
    "TelemetrySettings",
    "TlsSettings",
    "WatchSettings",
    "parse_listen",
]
