"""The Python bucket agrees with the plan's JavaScript `simpleHash` for every input.

The plan (Phase 3) buckets with `simpleHash(eventId + userId) % 100` in
TypeScript, and the web app and this service must put every (event, user) pair
in the same bucket. tests/data/simple_hash_vectors.json holds vectors computed
by Node running the plan's function as written (tests/data/
gen_simple_hash_vectors.js); these tests check Python against them, check the
file against Node, and check Python against Node on arbitrary text.
Tests that run `node` are skipped when it is not on PATH.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestfeed_server.rollout.bucketing import bucket, simple_hash

DATA = Path(__file__).parent / "data"
VECTORS_PATH = DATA / "simple_hash_vectors.json"
GENERATOR_PATH = DATA / "gen_simple_hash_vectors.js"

# The plan's function, exactly as written in Phase 3 with the TypeScript types
# dropped (`str: string` -> `str`, `: number` removed). Node runs this text.
PLAN_FUNCTION_JS = """\
function simpleHash(str) {
  let hash = 0;
  for (let i = 0; i < str.length; i++) {
    const char = str.charCodeAt(i);
    hash = (hash << 5) - hash + char;
    hash = hash & hash; // Convert to 32-bit integer
  }
  return Math.abs(hash);
}"""

# Reads a JSON array of strings on stdin, answers a JSON array of hashes.
NODE_RUNNER_JS = (
    PLAN_FUNCTION_JS
    + """
const inputs = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(inputs.map(simpleHash)));
"""
)

NODE = shutil.which("node")
requires_node = pytest.mark.skipif(
    NODE is None, reason="`node` is not on PATH, so the plan's JavaScript cannot be run"
)

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

# Any Unicode text, with lone surrogates and astral characters made common:
# a Python str may hold lone surrogates, and JavaScript strings can too.
# (Mapped integers, because Hypothesis merges `characters()` strategies into one
# and then hardly ever draws a surrogate.)
ANY_CHAR = st.one_of(
    st.characters(),
    st.integers(0xD800, 0xDFFF).map(chr),
    st.integers(0x10000, 0x10FFFF).map(chr),
    st.integers(0, 0xFFFF).map(chr),
)
ANY_TEXT = st.lists(ANY_CHAR).map("".join)


def load_vectors() -> dict[str, Any]:
    with VECTORS_PATH.open(encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return doc


DOC = load_vectors()
VECTORS: list[dict[str, Any]] = DOC["vectors"]


def utf16_units(text: str) -> bytes:
    """The UTF-16 code units a JavaScript string with the same contents holds."""
    return text.encode("utf-16-be", "surrogatepass")


def node_simple_hash(inputs: list[str]) -> list[int]:
    """Runs the plan's function in Node over `inputs`, in one process."""
    assert NODE is not None
    # ensure_ascii: every code unit, lone surrogates included, goes over as a
    # \\uXXXX escape, so Node's strings hold exactly Python's UTF-16 units.
    payload = json.dumps(inputs, ensure_ascii=True)
    proc = subprocess.run(
        [NODE, "-e", NODE_RUNNER_JS],
        input=payload,
        capture_output=True,
        text=True,
        encoding="ascii",
        timeout=60,
        check=True,
    )
    hashes: list[int] = json.loads(proc.stdout)
    assert len(hashes) == len(inputs)
    return hashes


def reference_hash(text: str) -> int:
    """Independent oracle: the polynomial sum(c_i * 31**(n-1-i)) as int32, then abs."""
    units = utf16_units(text)
    value = 0
    n = len(units) // 2
    for i in range(n):
        unit = int.from_bytes(units[2 * i : 2 * i + 2], "big")
        value += unit * pow(31, n - 1 - i, 2**32)
    value %= 2**32
    if value >= 2**31:
        value -= 2**32
    return abs(value)


def describe(i: int, vector: dict[str, Any]) -> str:
    return f"#{i} {vector['case']}: {vector['input'][:60]!a}"


class TestVectorFile:
    """The vector file is what Node wrote and covers the cases that matter."""

    def test_function_in_file_is_the_plans(self) -> None:
        """The file records the plan's function verbatim as the code that produced it."""
        assert DOC["function"] == PLAN_FUNCTION_JS

    @requires_node
    def test_file_is_exactly_what_the_generator_writes(self) -> None:
        """Re-running the deterministic Node generator reproduces the file byte for byte."""
        assert NODE is not None
        proc = subprocess.run(
            [NODE, str(GENERATOR_PATH), "--stdout"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert proc.stdout == VECTORS_PATH.read_bytes()

    def test_input_is_event_id_then_user_id(self) -> None:
        """Each vector's input is event_id + user_id, as UTF-16 code units."""
        bad = [
            describe(i, v)
            for i, v in enumerate(VECTORS)
            if utf16_units(v["event_id"] + v["user_id"]) != utf16_units(v["input"])
        ]
        assert not bad, bad

    def test_fields_are_consistent(self) -> None:
        """Each vector's hash is abs(int32) and its bucket is hash % 100."""
        for i, v in enumerate(VECTORS):
            assert INT32_MIN <= v["int32"] <= INT32_MAX, describe(i, v)
            assert v["hash"] == abs(v["int32"]), describe(i, v)
            assert v["bucket"] == v["hash"] % 100, describe(i, v)

    def test_covers_the_32_bit_extremes(self) -> None:
        """Vectors hit int32 values -2^31, 0, 2^31-1 and -1, including uuid-shaped pairs."""
        values = {v["int32"] for v in VECTORS}
        assert {INT32_MIN, 0, INT32_MAX, -1} <= values
        uuidish = {v["int32"] for v in VECTORS if v["case"].endswith("printable ASCII suffix")}
        assert {INT32_MIN, 0, INT32_MAX, -1} <= uuidish
        assert max(v["hash"] for v in VECTORS) == 2**31

    def test_covers_the_input_shapes(self) -> None:
        """Vectors include uuid pairs, empty, single, non-ASCII, astral, surrogate, long inputs."""
        cases = [v["case"] for v in VECTORS]
        inputs = [v["input"] for v in VECTORS]
        assert cases.count("uuid pair") >= 200
        assert any(c.startswith("uppercase uuid") for c in cases)
        assert "" in inputs
        assert any(len(s) == 1 for s in inputs)
        assert any(any(0x80 <= ord(c) <= 0xFFFF for c in s) for s in inputs)
        assert any(any(ord(c) > 0xFFFF for c in s) for s in inputs)
        assert any(any(0xD800 <= ord(c) <= 0xDFFF for c in s) for s in inputs)
        assert any(len(s) >= 10_000 for s in inputs)


class TestSimpleHash:
    """Python's simple_hash reproduces JavaScript's simpleHash."""

    def test_matches_every_vector(self) -> None:
        """simple_hash(input) equals the hash Node computed, for every vector."""
        bad = [
            f"{describe(i, v)} node={v['hash']} python={simple_hash(v['input'])}"
            for i, v in enumerate(VECTORS)
            if simple_hash(v["input"]) != v["hash"]
        ]
        assert not bad, bad

    def test_minimum_int32_becomes_two_to_the_31(self) -> None:
        """A 32-bit hash of -2^31 gives 2^31 (Math.abs on a double), bucket 48."""
        assert simple_hash("polygenelubricants") == 2**31
        assert bucket("polygene", "lubricants") == 48

    def test_empty_string_hashes_to_zero(self) -> None:
        """The empty string hashes to 0."""
        assert simple_hash("") == 0

    def test_lone_surrogate_is_one_code_unit(self) -> None:
        """A lone surrogate hashes as its single UTF-16 code unit instead of raising."""
        assert simple_hash("\ud83d") == 0xD83D
        assert simple_hash("\ude00\ud83d") == 0xDE00 * 31 + 0xD83D

    def test_split_surrogate_pair_equals_the_astral_character(self) -> None:
        """Two lone surrogates side by side hash like the astral character they encode."""
        assert simple_hash("\ud83d" + "\ude00") == simple_hash("\U0001f600")

    def test_astral_character_is_two_code_units(self) -> None:
        """An astral character hashes as its surrogate pair, not as one code point."""
        assert simple_hash("\U0001f600") == 0xD83D * 31 + 0xDE00

    @settings(max_examples=300, deadline=None)
    @given(ANY_TEXT)
    def test_agrees_with_polynomial_oracle(self, text: str) -> None:
        """simple_hash equals abs(int32(sum of code units times powers of 31)) for any text."""
        assert simple_hash(text) == reference_hash(text)

    @settings(max_examples=300, deadline=None)
    @given(ANY_TEXT)
    def test_in_range(self, text: str) -> None:
        """simple_hash is always an integer in 0..2^31."""
        assert 0 <= simple_hash(text) <= 2**31


class TestBucket:
    """bucket(event_id, user_id) is simpleHash(eventId + userId) % 100."""

    def test_matches_every_vector(self) -> None:
        """bucket(event_id, user_id) equals the bucket Node computed, for every vector."""
        bad = [
            f"{describe(i, v)} node={v['bucket']} python={bucket(v['event_id'], v['user_id'])}"
            for i, v in enumerate(VECTORS)
            if bucket(v["event_id"], v["user_id"]) != v["bucket"]
        ]
        assert not bad, bad

    def test_only_the_concatenation_matters(self) -> None:
        """Moving the split point between event_id and user_id keeps the bucket."""
        assert bucket("ab", "cd") == bucket("a", "bcd") == bucket("abcd", "")

    @settings(max_examples=300, deadline=None)
    @given(ANY_TEXT, ANY_TEXT)
    def test_in_range(self, event_id: str, user_id: str) -> None:
        """bucket is always in 0..99 and equals simple_hash(event_id + user_id) % 100."""
        b = bucket(event_id, user_id)
        assert 0 <= b <= 99
        assert b == simple_hash(event_id + user_id) % 100

    @settings(max_examples=300, deadline=None)
    @given(st.uuids(), st.uuids())
    def test_uuid_pairs_in_range(self, event_id: Any, user_id: Any) -> None:
        """bucket of canonical uuid strings is in 0..99."""
        assert 0 <= bucket(str(event_id), str(user_id)) <= 99


@requires_node
class TestNodeAgreement:
    """Node running the plan's function agrees with the file and with Python."""

    def test_node_reproduces_every_vector(self) -> None:
        """Node's simpleHash over every vector input equals the file's hash."""
        hashes = node_simple_hash([v["input"] for v in VECTORS])
        bad = [
            f"{describe(i, v)} file={v['hash']} node={h}"
            for i, (v, h) in enumerate(zip(VECTORS, hashes, strict=True))
            if h != v["hash"]
        ]
        assert not bad, bad

    @settings(
        max_examples=10,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(ANY_TEXT, min_size=100, max_size=300))
    def test_python_agrees_with_node_on_arbitrary_text(self, texts: list[str]) -> None:
        """For arbitrary text, lone surrogates and astral chars included, Python matches Node."""
        node = node_simple_hash(texts)
        python = [simple_hash(t) for t in texts]
        bad = [(t, n, p) for t, n, p in zip(texts, node, python, strict=True) if n != p]
        assert not bad, bad

    def test_python_agrees_with_node_on_surrogate_edge_cases(self) -> None:
        """Lone, reversed and split surrogates hash the same in Python and Node."""
        texts = ["\ud800", "\udfff", "\udc00\ud800", "\ud83d" + "\ude00", "a\udbffb", "\ud83d" * 7]
        assert node_simple_hash(texts) == [simple_hash(t) for t in texts]
