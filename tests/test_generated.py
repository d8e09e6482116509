"""generated/ is what scripts/gen_protos.py makes from protos/; the check says so.

Python, TypeScript (generated/ts/) and Go (generated/go/) are all checked.
Python needs only the venv; buf and protoc-gen-es are npm packages, so
without npm the TypeScript and Go parts are skipped (and said so), as they
are without the Debian Go tools.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_protos.py"
GENERATED = ROOT / "generated"
PYTHON = ROOT / ".venv" / "bin" / "python"

# The import path buf.gen.yaml's managed mode gives generated/go/.
GO_PREFIX = "github.com/guestfeed/guestfeed/generated/go"


def _gen_protos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _gen_protos()


def _check(*extra: str) -> subprocess.CompletedProcess[str]:
    python = str(PYTHON) if PYTHON.exists() else sys.executable
    result = subprocess.run(
        [python, str(SCRIPT), "--check", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # The first run may `npm ci` and compile protoc-gen-go.
        timeout=600,
        check=False,
    )
    return result


def _go_missing() -> str | None:
    why: str | None = GEN.go_missing()
    return why


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "generated"
    shutil.copytree(GENERATED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _alter(rel: str) -> Callable[[Path], str]:
    def spoil(tree: Path) -> str:
        path = tree / rel
        path.write_text(path.read_text() + "\n// edited by hand\n")
        return rel

    return spoil


def _remove(rel: str) -> Callable[[Path], str]:
    def spoil(tree: Path) -> str:
        (tree / rel).unlink()
        return rel

    return spoil


def _add(rel: str) -> Callable[[Path], str]:
    def spoil(tree: Path) -> str:
        (tree / rel).write_text("# left over from a deleted proto\n")
        return rel

    return spoil


SPOILS = {
    "python-altered": _alter("guestfeed/v1/feed_pb2.py"),
    "python-removed": _remove("guestfeed/v1/rollout_pb2.pyi"),
    "python-extra": _add("guestfeed/v1/old_pb2.py"),
    "python-marker-removed": _remove("guestfeed/v1/__init__.py"),
    "ts-altered": _alter("ts/guestfeed/v1/feed_pb.js"),
    "ts-removed": _remove("ts/google/rpc/error_details_pb.d.ts"),
    "ts-extra": _add("ts/guestfeed/v1/old_pb.js"),
    "ts-marker-removed": _remove("ts/package.json"),
    "go-altered": _alter("go/guestfeed/v1/rollout.pb.go"),
    "go-removed": _remove("go/guestfeed/v1/feed_grpc.pb.go"),
    "go-extra": _add("go/google/rpc/status.pb.go"),
}


class TestGenProtosCheck:
    def test_committed_tree_is_fresh(self) -> None:
        """`gen_protos.py --check` exits 0 on the committed generated/ tree, every language."""
        result = _check()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Protos changed" not in result.stdout
        checked = "python, ts" if _go_missing() else "python, ts, go"
        assert f"generated/ is fresh ({checked})" in result.stdout

    def test_unchanged_copy_is_fresh(self, tmp_path: Path) -> None:
        """`--generated DIR` on an exact copy of generated/ exits 0."""
        result = _check("--generated", str(_copy(tmp_path)))
        assert result.returncode == 0, result.stdout + result.stderr

    @pytest.mark.parametrize("spoil", SPOILS.values(), ids=SPOILS.keys())
    def test_stale_copy_fails_naming_the_file(
        self, tmp_path: Path, spoil: Callable[[Path], str]
    ) -> None:
        """A copy with one file altered, missing or extra: exit 1, "Protos changed", the file."""
        copy = _copy(tmp_path)
        name = spoil(copy)
        if name.startswith("go/") and (why := _go_missing()):
            pytest.skip(f"Go is not generated here: {why}")
        result = _check("--generated", str(copy))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Protos changed" in result.stdout
        stale = [line.strip() for line in result.stdout.splitlines()[1:]]
        assert stale == [name]

    def test_a_language_without_tools_is_skipped_with_the_reason(self, tmp_path: Path) -> None:
        """Without Go's tools generated/go/ is not checked, the others still are; it says so."""
        copy = _copy(tmp_path)
        _alter("go/guestfeed/v1/feed.pb.go")(copy)
        result = _check("--generated", str(copy), "--without", "go")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "skipped go: --without; generated/go/ not checked" in result.stderr
        assert "generated/ is fresh (python, ts)" in result.stdout
        _alter("ts/guestfeed/v1/feed_pb.d.ts")(copy)
        result = _check("--generated", str(copy), "--without", "go")
        assert result.returncode == 1
        assert result.stdout.splitlines()[1:] == ["  ts/guestfeed/v1/feed_pb.d.ts"]

    def test_writing_replaces_only_the_generated_languages(self, tmp_path: Path) -> None:
        """`make proto` into a stale copy makes it fresh; a skipped language is left as it is."""
        if (why := GEN.ensure_node_tools()) is not None:
            pytest.skip(f"TypeScript is not generated here: {why}")
        copy = _copy(tmp_path)
        _add("guestfeed/v1/old_pb2.py")(copy)
        _alter("ts/guestfeed/v1/feed_pb.js")(copy)
        kept = _alter("go/guestfeed/v1/feed.pb.go")(copy)
        python = str(PYTHON) if PYTHON.exists() else sys.executable
        written = subprocess.run(
            [python, str(SCRIPT), "--generated", str(copy), "--without", "go"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert written.returncode == 0, written.stdout + written.stderr
        assert not (copy / "guestfeed" / "v1" / "old_pb2.py").exists()
        assert (copy / kept).read_text().endswith("// edited by hand\n")
        assert _check("--generated", str(copy), "--without", "go").returncode == 0


def test_generated_typescript_loads_in_node() -> None:
    """generated/ts/ imports as it is in Node (ES modules, @bufbuild/protobuf from package.json),
    round-trips a request and unpacks an ErrorInfo from a google.rpc.Status."""
    node = shutil.which("node")
    if node is None or GEN.ensure_node_tools() is not None:
        pytest.skip("node, or the npm packages of package.json, not available")
    script = textwrap.dedent(
        """
        import { create, fromBinary, toBinary, toJson } from "@bufbuild/protobuf";
        import { anyPack, anyUnpack } from "@bufbuild/protobuf/wkt";
        import { GuestFeedService, ListMessagesRequestSchema, ReadModel }
          from "./generated/ts/guestfeed/v1/feed_pb.js";
        import { RolloutService } from "./generated/ts/guestfeed/v1/rollout_pb.js";
        import { StatusSchema } from "./generated/ts/google/rpc/status_pb.js";
        import { ErrorInfoSchema } from "./generated/ts/google/rpc/error_details_pb.js";
        import { Code } from "./generated/ts/google/rpc/code_pb.js";
        const request = create(ListMessagesRequestSchema, {
          eventId: "e", pageSize: 7, readModel: ReadModel.V2 });
        const back = fromBinary(ListMessagesRequestSchema,
          toBinary(ListMessagesRequestSchema, request));
        const status = create(StatusSchema, { code: Code.RESOURCE_EXHAUSTED, details: [
          anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason: "STREAM_LIMIT" }))] });
        const again = fromBinary(StatusSchema, toBinary(StatusSchema, status));
        console.log(JSON.stringify({
          request: toJson(ListMessagesRequestSchema, back),
          feed: GuestFeedService.typeName,
          rollout: RolloutService.typeName,
          reason: anyUnpack(again.details[0], ErrorInfoSchema).reason,
        }));
        """
    )
    result = subprocess.run(
        [node, "--input-type=module", "-e", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        '{"request":{"eventId":"e","pageSize":7,"readModel":"READ_MODEL_V2"},'
        '"feed":"guestfeed.v1.GuestFeedService","rollout":"guestfeed.v1.RolloutService",'
        '"reason":"STREAM_LIMIT"}'
    )


def test_generated_go_builds_against_the_system_grpc(tmp_path: Path) -> None:
    """generated/go/ compiles in GOPATH mode against /usr/share/gocode (grpc-go 1.33,
    golang/protobuf 1.3.5) and a client decodes ErrorInfo and BadRequest from a status."""
    if why := _go_missing():
        pytest.skip(f"Go is not generated here: {why}")
    gocode = GEN.GOCODE
    if not (gocode / "src" / "google.golang.org" / "grpc").is_dir():
        pytest.skip(f"no grpc-go in {gocode} (Debian: golang-google-grpc-dev)")
    gopath = tmp_path / "gopath"
    place = gopath / "src" / GO_PREFIX
    place.parent.mkdir(parents=True)
    shutil.copytree(GENERATED / "go", place)
    probe = gopath / "src" / "probe"
    probe.mkdir()
    (probe / "main.go").write_text(
        textwrap.dedent(
            f"""\
            package main

            import (
            \t"fmt"

            \t"github.com/golang/protobuf/proto"
            \trpc "{GO_PREFIX}/google/rpc"
            \tgf "{GO_PREFIX}/guestfeed/v1"
            \t"google.golang.org/grpc/codes"
            \t"google.golang.org/grpc/status"
            )

            var _ gf.GuestFeedServiceClient = gf.NewGuestFeedServiceClient(nil)
            var _ gf.RolloutServiceClient = gf.NewRolloutServiceClient(nil)

            func main() {{
            \tcfg := &gf.RolloutConfig{{V2Percentage: 5}}
            \tcfg.XGuardEnabled = &gf.RolloutConfig_GuardEnabled{{GuardEnabled: false}}
            \tb, _ := proto.Marshal(cfg)
            \tvar back gf.RolloutConfig
            \t_ = proto.Unmarshal(b, &back)
            \tfmt.Println(back.GetV2Percentage(), back.GetXGuardEnabled() != nil)
            \tst, err := status.New(codes.ResourceExhausted, "limit").WithDetails(
            \t\t&rpc.ErrorInfo{{Reason: "STREAM_LIMIT", Domain: "guestfeed"}},
            \t\t&rpc.BadRequest{{FieldViolations: []*rpc.BadRequest_FieldViolation{{
            \t\t\t{{Field: "page_size"}},
            \t\t}}}},
            \t)
            \tif err != nil {{
            \t\tpanic(err)
            \t}}
            \tfor _, d := range status.FromProto(st.Proto()).Details() {{
            \t\tswitch d := d.(type) {{
            \t\tcase *rpc.ErrorInfo:
            \t\t\tfmt.Println("ErrorInfo", d.GetReason())
            \t\tcase *rpc.BadRequest:
            \t\t\tfmt.Println("BadRequest", d.GetFieldViolations()[0].GetField())
            \t\tdefault:
            \t\t\tfmt.Printf("unexpected %T\\n", d)
            \t\t}}
            \t}}
            \tfmt.Println(rpc.Code_RESOURCE_EXHAUSTED)
            }}
            """
        )
    )
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{gocode}",
        "GOFLAGS": "",
    }
    result = subprocess.run(
        ["go", "run", "probe"],
        cwd=probe,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # No "duplicate proto type registered": google.rpc.Status stays genproto's.
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "5 true",
        "ErrorInfo STREAM_LIMIT",
        "BadRequest page_size",
        "RESOURCE_EXHAUSTED",
    ]


def test_the_installed_protobuf_runs_on_upb() -> None:
    """The pinned protobuf builds messages in C; the pure-Python fallback is far slower."""
    from guestfeed_server.api.server import protobuf_backend

    assert protobuf_backend() == "upb"
