"""The `guestfeed` command: one module per subcommand (serve, migrate, token, rollout, health).

Settings are read once, here; each command gets them validated. Expected
failures end with one line on stderr and an exit code: 2 for settings and
start-up (a variable names the fix), 3 for a database that lacks migrations.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..settings import ConfigError, Settings, StartupError
from ..storage.migrate import MigrationError
from ..telemetry import logs
from . import health, migrate, rollout, serve, token


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    ns = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        # JSON lines by default (what log pipelines want); text for a terminal.
        logs.configure(json_logs=settings.telemetry.json_logs)
        result: int = ns.func(settings, ns)
        return result
    except StartupError as exc:
        print(f"guestfeed: cannot start: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"guestfeed: configuration error: {exc}", file=sys.stderr)
        return 2
    except MigrationError as exc:
        print(f"guestfeed: migration refused: {exc}", file=sys.stderr)
        return 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guestfeed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (serve, migrate, token, rollout, health):
        command.register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
