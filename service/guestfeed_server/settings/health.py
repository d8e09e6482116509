"""How health judges the read path, and how long a stopping replica keeps serving."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .values import ConfigError, env_float, env_int

DEFAULT_READ_PATH_WINDOW_S = 10.0
DEFAULT_READ_PATH_MIN_FAILURES = 3


def env_seconds_or_zero(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration that may be 0 (`env_float` wants > 0): 0 turns the step off.

    Raises:
        ConfigError: not a finite number of seconds >= 0; the message names `name`.
    """
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds >= 0, got {raw!r}") from None
    # NaN compares false with everything, so `value < 0` alone would let it through.
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a number of seconds >= 0, got {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class ReadPathSettings:
    """GUESTFEED_READ_PATH_WINDOW_S and GUESTFEED_READ_PATH_MIN_FAILURES.

    The read path counts as failing when, within the last `window_s` seconds,
    at least `min_failures` page reads failed on the server's side and they
    were at least half of the reads: one unlucky timeout does not take a
    replica out of rotation, a stuck table does.
    """

    window_s: float = DEFAULT_READ_PATH_WINDOW_S
    min_failures: int = DEFAULT_READ_PATH_MIN_FAILURES

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReadPathSettings:
        """Reads and checks the read-path settings.

        Raises:
            ConfigError: the window is not a number of seconds > 0, or the
                minimum is not a whole number >= 1.
        """
        window = env_float(env, "GUESTFEED_READ_PATH_WINDOW_S", DEFAULT_READ_PATH_WINDOW_S)
        if not math.isfinite(window):
            raise ConfigError(f"GUESTFEED_READ_PATH_WINDOW_S must be finite, got {window}")
        return cls(
            window_s=window,
            min_failures=env_int(
                env, "GUESTFEED_READ_PATH_MIN_FAILURES", DEFAULT_READ_PATH_MIN_FAILURES, lo=1
            ),
        )
