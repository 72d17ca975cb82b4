"""Convex values: the wire and export formats decode and encode losslessly, equality and digests follow Convex."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import string
import struct
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.connection import errors, jsonio, values
from helpers.connection.transport import ConvexTransport
from helpers.connection.values import INT64_MAX, INT64_MIN, Int64
from helpers.devtools.local_deployment import LocalDeployment
from helpers.devtools.sample_data import SPECIAL_ERROR_VALUES
from helpers.evidence.run_folder import bind_migration
from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.steps.apply import ApplySettings, apply_plan
from helpers.steps.backup import iter_backup_documents, take_backup
from helpers.steps.plan import iter_plan_lines
from helpers.steps.rollback import execute_rollback, plan_rollback
from helpers.steps.verify import verify
from tests.flow import prepare, seed, state

TEST_FUNCTIONS = Path(__file__).resolve().parents[1] / "convex"

# -- strategies ----------------------------------------------------------------------------------------------

SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1e300]
field_names = st.text(alphabet=string.ascii_letters + string.digits + "_- .", min_size=1, max_size=8).filter(
    lambda name: not name.startswith("_")  # leading '_' is for system fields in documents
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL_FLOATS),
    st.integers(-(2**53), 2**53),  # a Python int is a float64, as in the `convex` package
    st.integers(INT64_MIN, INT64_MAX).map(Int64),
    st.sampled_from([Int64(0), Int64(5), Int64(2**60), Int64(INT64_MIN), Int64(INT64_MAX)]),
    st.text(max_size=20),  # hypothesis never draws lone surrogates here: Convex strings are UTF-8
    st.binary(max_size=20),
)
convex_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(field_names, inner, max_size=5)),
    max_leaves=25,
)


def export_json(value: Any) -> str:
    """A test-side twin of convex-backend's `export_clean_lossless` (crates/value/src/export.rs), written with
    Python's own float formatting (`repr`), to check `loads_export` against an independent encoder."""
    if value is None or type(value) is bool:
        return json.dumps(value)
    if type(value) is Int64:
        return str(int(value))
    if type(value) in (int, float):
        number = float(value)
        if math.isfinite(number):
            return repr(number)  # always with '.' or 'e': 5.0, -0.0, 1e+300
        return json.dumps({"$float": base64.b64encode(struct.pack("<d", number)).decode()})
    if type(value) is str:
        return json.dumps(value, ensure_ascii=False)
    if type(value) is bytes:
        return json.dumps({"$bytes": base64.b64encode(value).decode()})
    if type(value) is list:
        return "[" + ",".join(map(export_json, value)) + "]"
    return "{" + ",".join(f"{json.dumps(k)}:{export_json(v)}" for k, v in sorted(value.items())) + "}"


# -- round trips ---------------------------------------------------------------------------------------------


@given(convex_values)
def test_wire_format_round_trips_every_value(value: Any) -> None:
    written = jsonio.dumps(value)
    decoded = jsonio.loads(written)
    assert values.equal(decoded, value) and values.digest(decoded) == values.digest(value)
    assert values.equal(jsonio.loads(written.decode()), value)  # a text answer decodes alike
    json.loads(written, parse_constant=pytest.fail)  # standard JSON: no NaN/Infinity tokens, no null for NaN


@given(convex_values, st.booleans(), st.booleans())
def test_dumps_fast_path_writes_exactly_the_walk(value: Any, sort_keys: bool, convex_numbers: bool) -> None:
    """`dumps` lets orjson walk in C and falls back to `to_wire` where it must: the bytes are the walk's, always."""
    walked = orjson.dumps(values.to_wire(value, convex_numbers=convex_numbers), option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    assert values.dumps(value, sort_keys=sort_keys, convex_numbers=convex_numbers) == walked


@pytest.mark.parametrize("odd", [(1, 2), "x\ud800", {"k": 2**64}, {1: "a"}, {"k": Int64(3), "f": -0.0}])
def test_dumps_refuses_or_writes_what_the_walk_does(odd: Any) -> None:
    try:
        walked: Any = orjson.dumps(values.to_wire(odd))
    except (TypeError, ValueError) as error:
        walked = type(error)
    try:
        fast: Any = values.dumps(odd)
    except (TypeError, ValueError) as error:
        fast = type(error)
    assert fast == walked


@given(convex_values)
def test_plan_lines_round_trip_every_value(value: Any) -> None:
    line = {"table": "scenes", "id": "x", "expect": {"errorMessage": value}, "set": {"payload": [value]}}
    written = jsonio.dumps(line, sort_keys=True) + b"\n"  # as plan._dump writes a line
    assert written.count(b"\n") == 1
    assert values.equal(jsonio.loads(written), line)


@given(convex_values)
def test_export_format_decodes_what_convex_writes(value: Any) -> None:
    document = {"_id": "abc", "_creationTime": 1.7e12, "errorMessage": value}
    decoded = values.loads_export(export_json(document).encode())
    assert values.equal(decoded, document)
    assert type(decoded["errorMessage"]) is type(value) or type(value) is int  # a Python int is read back as float


def test_export_format_keeps_int64_apart_from_float64() -> None:
    line = b'{"a":5,"b":5.0,"c":-0.0,"d":1e20,"e":9223372036854775807,"f":{"$float":"AAAAAAAA+H8="},"g":{"$bytes":"AP8="},"h":[1,2.5]}'
    doc = values.loads_export(line)
    assert doc == {"a": Int64(5), "b": 5.0, "c": -0.0, "d": 1e20, "e": Int64(2**63 - 1), "f": doc["f"], "g": b"\x00\xff", "h": [Int64(1), 2.5]}
    assert math.isnan(doc["f"]) and math.copysign(1, doc["c"]) == -1 and type(doc["a"]) is Int64 and type(doc["b"]) is float


@pytest.mark.parametrize(
    "line",
    [
        b'{"a":{"$float":"AAAAAAAA8D8="}}',  # 1.0 must be written as a number, as Convex refuses it
        b'{"a":{"$integer":"AAAA"}}',  # not 8 bytes
        b'{"a":{"$bytes":"not base64!"}}',
        b'{"a":{"$unknown":"AA=="}}',
        b'{"a":{"$bytes":"AA==","b":1}}',
        b'{"a":9223372036854775808}',  # beyond int64
    ],
)
def test_export_format_refuses_malformed_special_values(line: bytes) -> None:
    with pytest.raises(ValueError):
        values.loads_export(line)


def test_wire_encoding_matches_convex() -> None:
    assert values.to_wire(Int64(1)) == {"$integer": "AQAAAAAAAAA="}
    assert values.to_wire(-0.0) == {"$float": "AAAAAAAAAIA="}
    assert values.to_wire(math.inf) == {"$float": "AAAAAAAA8H8="}
    assert values.to_wire(b"\x00\x01") == {"$bytes": "AAE="}
    assert values.to_wire({"n": 5, "x": 5.0}) == {"n": 5, "x": 5.0}
    with pytest.raises(TypeError, match="not a Convex value"):
        values.to_wire({1, 2})
    with pytest.raises(ValueError, match="int64 range"):
        Int64(2**63)


def test_lone_surrogates_cannot_be_written() -> None:
    with pytest.raises(TypeError):
        jsonio.dumps({"a": "x\ud800"})
    with pytest.raises(ValueError):
        jsonio.loads(b'{"a":"\\ud800"}')


# -- equality and digests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (Int64(5), 5.0, False), (Int64(5), 5, False), (Int64(5), Int64(5), True), (Int64(1), True, False),
        (-0.0, 0.0, False), (-0.0, 0, False), (0, 0.0, True), (-0.0, -0.0, True),
        (math.nan, math.nan, True), (math.nan, float("nan"), True), (math.nan, None, False), (math.inf, -math.inf, False),
        (1, 1.0, True), (True, 1, False), (0, False, False), ("1", 1, False), (b"a", "a", False), (b"a", b"a", True),
        ({"a": [1, {"b": 2.0}]}, {"a": [1.0, {"b": 2}]}, True), ({"a": 1}, {"a": 1, "b": 2}, False), ([1, 2], [2, 1], False),
        ({"a": [Int64(1)]}, {"a": [1.0]}, False), (None, None, True),
    ],
)
def test_equality_follows_convex(a: Any, b: Any, same: bool) -> None:
    assert values.equal(a, b) is same and values.equal(b, a) is same
    assert (values.digest(a) == values.digest(b)) is same


small_values = st.recursive(
    st.sampled_from([None, True, False, 0, 1, 1.0, -0.0, 0.0, math.nan, Int64(0), Int64(1), "", "a", b"", b"a"]),
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.sampled_from("ab"), inner, max_size=2)),
    max_leaves=4,
)


@given(small_values, small_values, small_values)
def test_equal_is_an_equivalence_consistent_with_digest(a: Any, b: Any, c: Any) -> None:
    assert values.equal(a, copy.deepcopy(a))
    assert values.equal(a, b) == values.equal(b, a)
    if values.equal(a, b) and values.equal(b, c):
        assert values.equal(a, c)
    assert values.equal(a, b) == (values.digest(a) == values.digest(b))


def canonical_twin(value: Any) -> Any:
    """A test-side twin of the canonical form `digest` hashes, as first written (one float64 per number, one tag for
    every NaN, the floats JSON cannot write and Int64/bytes as wire objects): pins the digest's bytes, so a faster
    `_canonical` cannot change what a digest is."""
    if type(value) in (int, float):
        number = float(value)
        if number != number:
            return {"$float": "NaN"}
        plain = math.isfinite(number) and (number != 0 or math.copysign(1.0, number) > 0)
        return number if plain else {"$float": base64.b64encode(struct.pack("<d", number)).decode()}
    if type(value) is dict:
        return {key: canonical_twin(item) for key, item in value.items()}
    if type(value) is list:
        return [canonical_twin(item) for item in value]
    return values.to_wire(value)


@given(convex_values)
def test_digest_hashes_the_canonical_form(value: Any) -> None:
    expected = hashlib.blake2b(orjson.dumps(canonical_twin(value), option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
    assert values.digest(value) == expected


def test_int64_is_never_equal_to_a_number_even_with_plain_equality() -> None:
    assert Int64(5) != 5 and 5 != Int64(5) and Int64(5) != 5.0 and Int64(5) == Int64(5)
    assert {Int64(5): "x"}[Int64(5)] == "x" and repr(Int64(5)) == "Int64(5)"
    assert json.dumps({"n": Int64(7)}) == '{"n": 7}'  # evidence written with the standard library stays readable


# -- the local deployment: real Convex values in, the same values out -----------------------------------------


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(convex_values, min_size=1, max_size=12))
def test_deployment_stores_exports_and_returns_values_exactly(transport: ConvexTransport, tmp_path_factory: pytest.TempPathFactory, stored: list[Any]) -> None:
    session = transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "completed"}]})["ids"][0]
    documents = [{"sessionId": session, "sceneIndex": i, "status": "completed", "errorMessage": v} for i, v in enumerate(stored)]
    ids = transport.function("sampleData:insertBatch", {"table": "scenes", "documents": documents})["ids"]
    for doc_id, value in zip(ids, stored, strict=True):  # the wire format, both ways
        assert values.equal(transport.query("scenes:get", {"id": doc_id})["errorMessage"], value)
    run_dir = tmp_path_factory.mktemp("run")
    bind_migration(run_dir, "001_s3_asset_tracking")
    summary = take_backup(transport, run_dir, M001, poll_seconds=0.02, show_progress=False)
    exported = {doc["_id"]: doc for doc in iter_backup_documents(summary, "scenes")}
    for doc_id, value in zip(ids, stored, strict=True):  # the export format, as the deployment wrote it
        assert values.equal(exported[doc_id]["errorMessage"], value), (exported[doc_id]["errorMessage"], value)
    assert list(exported[ids[0]]) == sorted(exported[ids[0]])  # keys sorted, as Convex's ordered objects


def test_deployment_refuses_lone_surrogates_as_convex_does(deployment: LocalDeployment, transport: ConvexTransport) -> None:
    body = '{"path":"sampleData:insertBatch","format":"convex_encoded_json","args":{"table":"videoSessions","documents":[{"status":"a\\ud800"}]}}'
    answer = httpx.post(f"{deployment.url}/api/function", content=body, headers={"Authorization": f"Convex {deployment.deploy_key}", "content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["code"] == "BadJsonBody"
    assert "lone leading surrogate in hex escape" not in answer.json()["message"]  # a high surrogate: unexpected end
    assert answer.json()["message"].startswith("Failed to parse the request body as JSON: unexpected end of hex escape at line 1 column ")
    low = body.replace("\\ud800", "\\udc00")
    answer = httpx.post(f"{deployment.url}/api/function", content=low, headers={"Authorization": f"Convex {deployment.deploy_key}", "content-type": "application/json"})
    assert "lone leading surrogate in hex escape" in answer.json()["message"]
    paired = body.replace("\\ud800", "\\ud83c\\udf89")
    answer = httpx.post(f"{deployment.url}/api/function", content=paired, headers={"Authorization": f"Convex {deployment.deploy_key}", "content-type": "application/json"})
    assert answer.json()["status"] == "success"
    with pytest.raises(errors.InvalidValue, match="cannot hold"):  # the runbook never sends one
        transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "a\ud800"}]})


def test_an_int_that_a_float64_cannot_hold_is_not_sent(transport: ConvexTransport) -> None:
    with pytest.raises(errors.InvalidValue, match="outside the range of a Convex float64"):
        transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "x", "updatedAt": 2**53 + 1}]})
    assert transport.round_trips == 0
    assert jsonio.loads(jsonio.dumps({"ts": 2**60})) == {"ts": 2**60}  # the runbook's own files keep any int


def test_deployment_refuses_to_store_or_return_a_lone_surrogate(deploy_key: str) -> None:
    with LocalDeployment(deploy_key=deploy_key, extra_functions=TEST_FUNCTIONS) as deployment, deployment.transport() as transport:
        with pytest.raises(errors.FunctionFailed, match="invalid utf-8 sequence of 1 bytes from index"):
            transport.function("surrogate:store", {})
        with pytest.raises(errors.FunctionFailed, match=r"invalid utf-8 sequence of 1 bytes from index 16\b"):
            transport.function("surrogate:give", {})
        assert transport.function("migration:readPage", {"table": "videoSessions", "cursor": None, "numItems": 5})["page"] == []


def test_special_values_survive_backup_dry_run_apply_verify_and_restore(transport: ConvexTransport, run_dir: Path) -> None:
    """The sample's legacy fields hold int64, bytes, NaN, ±Inf and -0.0: every step keeps them exactly."""
    seed(transport, 60)
    before = state(transport)
    special = {i: d for i, d in before["scenes"].items() if type(d.get("errorMessage")) in (dict, Int64) and d["errorMessage"] in (
        SPECIAL_ERROR_VALUES, Int64(137))}
    assert len(special) == 2  # one completed scene with every special value, one failed scene with an int64 message
    prepare(transport, run_dir)
    planned = {line["id"]: line for line in iter_plan_lines(run_dir) if line["id"] in special}
    failed = next(i for i, d in special.items() if d["status"] == "failed")
    completed = next(i for i in special if i != failed)
    assert planned[completed]["action"] == "migrate" and not planned[completed]["problems"]
    assert planned[failed]["action"] == "migrate" and type(planned[failed]["expect"]["errorMessage"]) is Int64
    assert planned[failed]["expect"]["errorMessage"] == Int64(137)  # the precondition carries the int64 as one
    assert {(p["code"], p["severity"]) for p in planned[failed]["problems"]} == {("wrong_type", "flagged")}
    assert apply_plan(transport, run_dir, M001, confirm=True, settings=ApplySettings(show_progress=False)).passed
    migrated = state(transport)["scenes"]
    assert all(values.equal(migrated[i]["errorMessage"], d["errorMessage"]) for i, d in special.items())
    report = verify(transport, run_dir, M001, show_progress=False)
    assert report.passed, [c for c in report.checks if not c.passed]
    plan_rollback(transport, run_dir, M001, "restore")
    done = execute_rollback(transport, run_dir, M001, "restore")
    assert not done.errors and not done.conflicts
    after = state(transport)
    for table in ("scenes", "videoSessions"):
        assert values.equal(after[table], before[table])  # strict: Int64 is not 137.0, -0.0 is not 0.0
    restored = after["scenes"][completed]["errorMessage"]
    assert type(restored["exitCode"]) is Int64 and math.copysign(1, restored["offset"]) == -1 and math.isnan(restored["cpuSeconds"])


EDGE_VALUES = [None, True, False, 0, 1, 1.0, -0.0, math.nan, math.inf, -math.inf, Int64(0), Int64(1), Int64(-1), "", "a", b"", b"a",
               [0.0], [-0.0], [Int64(0)], {"a": Int64(1)}, {"a": 1.0}, {"a": 1.0, "b": None}]


def test_deployment_compare_and_set_agrees_with_python_equality(transport: ConvexTransport) -> None:
    """convex/values.ts `valuesEqual` (applyBatch's precondition) and helpers.connection.values.equal are one rule, for
    every pair of the values where they could part (int64/float64, -0.0/0.0, NaN, bytes, nesting)."""
    pairs = [(a, b) for a in EDGE_VALUES for b in EDGE_VALUES]
    session = transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "completed"}]})["ids"][0]
    stored = [{"sessionId": session, "sceneIndex": i, "status": "failed", "errorMessage": a} for i, (a, _) in enumerate(pairs)]
    ids = transport.function("sampleData:insertBatch", {"table": "scenes", "documents": stored})["ids"]
    items = [{"table": "scenes", "id": doc_id, "expect": {"errorMessage": b}, "expectAbsent": [], "set": {"assetsStatus": "error"},
              "unset": [], "insertReferences": [], "deleteReferences": []} for doc_id, (_, b) in zip(ids, pairs, strict=True)]
    results = transport.function("migration:applyBatch", {"migrationId": "m", "runId": "r", "items": items})["results"]
    for (a, b), result in zip(pairs, results, strict=True):
        assert result["outcome"] == ("applied" if values.equal(a, b) else "conflict"), (a, b, result)
