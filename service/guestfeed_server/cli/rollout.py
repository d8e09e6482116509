"""`guestfeed rollout`: read and change the rollout config of a running server.

Every subcommand goes over RolloutService's RPCs with a service credential:
`--token`, else GUESTFEED_SERVICE_TOKEN (the project's service_role key),
else a short-lived service_role token minted with the HS256 secret when one
is configured. It never touches the database itself. Changes are read-modify-write on
`expected_revision`, so two operators never overwrite each other silently.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import uuid
from pathlib import Path

import grpc

from guestfeed_client import GuestFeedClient, RPCError

from ..auth import Role, mint
from ..auth.keyring import embedded_secret
from ..settings import ConfigError, Settings, TlsSettings, parse_listen
from ..settings.tls import CA as TLS_CA
from ..settings.tls import CLIENT_CERT as TLS_CLIENT_CERT
from ..settings.tls import CLIENT_KEY as TLS_CLIENT_KEY
from . import rollout_commands as commands
from . import rollout_safety
from .rollout_commands import Command, Console

TOKEN_TTL_S = 300
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `rollout` and its subcommands on the `guestfeed` parser."""
    rollout = sub.add_parser(
        "rollout",
        help="show or change the read-model rollout of a running server",
        description="Read and change the rollout config of a running server over gRPC.",
    )
    _connection_options(rollout, suppress=False)
    rollout.set_defaults(func=run)
    cmds = rollout.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")

    def command(
        name: str, fn: Command, help_: str, *, token_user: bool = True
    ) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_, description=help_)
        # Accepted after the subcommand too; SUPPRESS keeps a value given before it.
        # (`compare --user` names a guest: there the token's sub goes before it.)
        _connection_options(p, suppress=True, token_user=token_user)
        p.set_defaults(rollout_run=fn)
        return p

    command("status", commands.status, "show the stored rollout config")
    p = command("set", commands.set_percentage, "set the v2 percentage")
    p.add_argument("--percentage", type=int, required=True, metavar="N", help="0-100")
    _reason(p)
    _reason(command("enable", commands.enable, "turn the stored kill switch off: v2 may be served"))
    _reason(command("kill", commands.kill, "turn the stored kill switch on: everyone gets v1"))
    p = command(
        "override", commands.override, "force a user or an event to v1 or v2, or clear that"
    )
    p.add_argument("kind", choices=("user", "event"))
    p.add_argument("id", type=uuid.UUID, metavar="UUID")
    p.add_argument("model", choices=("v1", "v2", "clear"))
    _reason(p)
    p = command("history", commands.history, "list the audit log, newest first")
    p.add_argument("--limit", type=_positive, default=20, metavar="N", help="default 20")
    p = command(
        "preview", commands.preview, "how many guests a change would move, changing nothing"
    )
    p.add_argument("--percentage", type=int, metavar="N", help="propose v2_percentage N")
    switch = p.add_mutually_exclusive_group()
    switch.add_argument("--enable", action="store_true", help="propose v2_enabled=true")
    switch.add_argument("--kill", action="store_true", help="propose v2_enabled=false")
    for kind in ("user", "event"):
        p.add_argument(
            f"--override-{kind}",
            action="append",
            default=[],
            type=_override_arg,
            metavar="UUID=v1|v2|clear",
            help=f"propose an override for this {kind} (repeatable)",
        )
    p.add_argument("--max-events", type=_positive, default=20, metavar="N", help="default 20")
    rollout_safety.register(command, _reason)


def _connection_options(
    p: argparse.ArgumentParser, *, suppress: bool, token_user: bool = True
) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    p.add_argument(
        "--target",
        metavar="HOST:PORT",
        default=default(None),
        help="the server (default: GUESTFEED_LISTEN, else 127.0.0.1:50051)",
    )
    p.add_argument(
        "--token", default=default(None), help="a service_role JWT to use instead of minting one"
    )
    if token_user:
        p.add_argument(
            "--user",
            type=uuid.UUID,
            default=default(None),
            metavar="UUID",
            help="the minted token's sub, which the audit log records (default: from your login)",
        )
    p.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def _reason(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why, for the audit log")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _override_arg(text: str) -> tuple[str, str]:
    ident, sep, model = text.partition("=")
    try:
        key = str(uuid.UUID(ident))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected UUID=v1|v2|clear, got {text!r}") from None
    if not sep or model not in ("v1", "v2", "clear"):
        raise argparse.ArgumentTypeError(f"expected UUID=v1|v2|clear, got {text!r}")
    return key, model


def run(settings: Settings, ns: argparse.Namespace) -> int:
    """Runs a `guestfeed rollout` subcommand against `--target`."""
    target = ns.target or default_target(settings.listen)
    token = ns.token or settings.service_token or ""
    if not token:
        token = mint(
            _secret(settings),
            ns.user or _login_user(),
            role=Role.SERVICE_ROLE,
            ttl_s=TOKEN_TTL_S,
            issuer=settings.jwt_issuer,
        )
    console = Console(out=sys.stdout, err=sys.stderr, json=ns.json, target=target)

    async def main() -> int:
        async with open_channel(target, settings.tls) as channel:
            return await execute(ns, GuestFeedClient(channel, token), console)

    return asyncio.run(main())


async def execute(ns: argparse.Namespace, client: GuestFeedClient, console: Console) -> int:
    """Runs the parsed subcommand; an RPC failure is reported and gives exit code 1."""
    command: Command = ns.rollout_run
    try:
        return await command(ns, client, console)
    except RPCError as exc:
        _report(exc, console)
        return 1


def open_channel(target: str, tls: TlsSettings) -> grpc.aio.Channel:
    """A channel to `target`, with TLS when this environment's GUESTFEED_TLS_* ask for it.

    TLS when GUESTFEED_TLS_CA or a client certificate is set, or when the
    server configured here serves TLS (GUESTFEED_TLS_CERT): plaintext to it
    would only fail. Trusted: GUESTFEED_TLS_CA, else the system's roots; the
    server's own certificate is not used as a trust anchor (a CA-issued leaf
    is not one). GUESTFEED_TLS_CLIENT_CERT/_KEY answer a mutual-TLS server.

    Raises:
        ConfigError: a file cannot be read; the message names its variable.
    """
    if not tls.client_enabled:
        return grpc.aio.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(TLS_CA, tls.ca),
        private_key=_read(TLS_CLIENT_KEY, tls.client_key),
        certificate_chain=_read(TLS_CLIENT_CERT, tls.client_cert),
    )
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.aio.secure_channel(target, credentials, options=options)


def _read(variable: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None


def default_target(listen: str) -> str:
    """Where a local `guestfeed serve` listens: GUESTFEED_LISTEN, wildcards made local."""
    host, port = parse_listen(listen)
    return f"{_WILDCARD_HOSTS.get(host, host)}:{port}"


def _secret(settings: Settings) -> str:
    if settings.jwt_secret:
        return settings.jwt_secret
    # embedded_secret would make a fresh secret no server knows; say what to do instead.
    if settings.embedded and not (settings.data_dir / "jwt_secret").exists():
        raise ConfigError(
            f"no JWT secret: set GUESTFEED_JWT_SECRET to the server's, point GUESTFEED_DATA_DIR "
            f"at the folder `guestfeed serve` uses (now {settings.data_dir}), or pass a service "
            "credential with --token or GUESTFEED_SERVICE_TOKEN"
        )
    if not settings.embedded:
        raise ConfigError(
            "no service credential: pass --token or set GUESTFEED_SERVICE_TOKEN to the "
            "project's service_role key (this command mints its own tokens only where "
            "GUESTFEED_JWT_SECRET is set)"
        )
    return embedded_secret(settings.data_dir)


def _login_user() -> uuid.UUID:
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        name = "unknown"
    return uuid.uuid5(uuid.NAMESPACE_URL, f"guestfeed-cli:{name}")


def _report(exc: RPCError, console: Console) -> None:
    # A server-made UNAVAILABLE carries ErrorInfo; a transport failure has none.
    if exc.code is grpc.StatusCode.UNAVAILABLE and not exc.reason:
        console.note(f"cannot reach {console.target}: {exc.message}")
        console.note(f"is `guestfeed serve` running on {console.target}? (see --target)")
        return
    console.note(f"{exc.code.name}: {exc.message}")
    for field, description in sorted(exc.field_violations.items()):
        print(f"  {field}: {description}", file=console.err)
    if exc.code is grpc.StatusCode.UNAUTHENTICATED:
        console.note(
            "hint: use the project's service_role key (--token or GUESTFEED_SERVICE_TOKEN), or "
            "set the server's GUESTFEED_JWT_SECRET to mint one"
        )
