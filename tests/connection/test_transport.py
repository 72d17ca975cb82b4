"""The transport and the local deployment's wire protocol: auth, error shapes, formats, limits, retries."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from convex.http_client import ConvexExecutionError, ConvexHttpClient

from helpers.connection import errors
from helpers.connection.calls import iter_documents, iter_pages
from helpers.connection.transport import (
    ConvexTransport,
    deploy_key_from_env,
    redact_url,
)
from helpers.devtools.local_deployment import LocalDeployment
from helpers.migrations.m001_s3_asset_tracking import ASSET_REFERENCES

REPO = Path(__file__).resolve().parents[2]


def insert_sessions(transport: ConvexTransport, n: int, **fields: object) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 4000):
        documents = [{"status": "completed", "title": f"session {i}", **fields} for i in range(start, min(n, start + 4000))]
        ids += transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": documents})["ids"]
    return ids


def raw_post(deployment: LocalDeployment, endpoint: str, body: dict, key: str | None) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Convex {key}"}
    return httpx.post(f"{deployment.url}{endpoint}", json=body, headers=headers)


def test_official_python_client_with_admin_key_reads_pages(deployment: LocalDeployment, transport: ConvexTransport) -> None:
    insert_sessions(transport, 3)
    client = ConvexHttpClient(deployment.url)
    client.set_admin_auth(deployment.deploy_key)
    page = client.query("migration:readPage", {"table": "videoSessions", "cursor": None, "numItems": 10})
    assert [doc["title"] for doc in page["page"]] == ["session 0", "session 1", "session 2"]
    assert page["isDone"] is True


def test_official_python_client_without_admin_key_cannot_see_internal_functions(deployment: LocalDeployment) -> None:
    client = ConvexHttpClient(deployment.url)
    with pytest.raises(ConvexExecutionError, match="Could not find function for 'migration:readPage'"):
        client.query("migration:readPage", {"table": "videoSessions", "cursor": None, "numItems": 10})


def test_public_functions_need_no_key_and_wrong_key_is_401(deployment: LocalDeployment, transport: ConvexTransport) -> None:
    scene_session = insert_sessions(transport, 1)[0]
    scene_id = transport.function(
        "sampleData:insertBatch",
        {"table": "scenes", "documents": [{"sessionId": scene_session, "sceneIndex": 0, "status": "pending"}]},
    )["ids"][0]
    ok = raw_post(deployment, "/api/query", {"path": "scenes:get", "args": {"id": scene_id}, "format": "json"}, None)
    assert ok.status_code == 200 and ok.json()["value"]["status"] == "pending"
    refused = raw_post(deployment, "/api/query", {"path": "scenes:get", "args": {"id": scene_id}}, "not-the-key")
    assert refused.status_code == 401
    assert refused.json() == {"code": "BadAdminKey", "message": "The provided admin key was invalid for this instance"}


def test_function_error_shape_and_kind_mismatch(deployment: LocalDeployment) -> None:
    wrong_kind = raw_post(deployment, "/api/mutation", {"path": "migration:readPage", "args": {}}, deployment.deploy_key)
    assert wrong_kind.status_code == 200
    assert wrong_kind.json() == {
        "status": "error",
        "errorMessage": "Trying to execute migration:readPage as Mutation, but it is defined as Query.",
    }
    bad_args = raw_post(
        deployment, "/api/query", {"path": "migration:readPage", "args": {"table": "scenes", "cursor": None, "numItems": "x"}},
        deployment.deploy_key,
    )
    body = bad_args.json()
    assert body["status"] == "error" and "Server Error" in body["errorMessage"] and "numItems" not in body


def test_json_and_convex_encoded_json_formats(deployment: LocalDeployment, transport: ConvexTransport) -> None:
    insert_sessions(transport, 1, totalAssetSize=5.0)
    args = {"table": "videoSessions", "cursor": None, "numItems": 1}
    for fmt in ("json", "convex_encoded_json"):
        body = raw_post(deployment, "/api/function", {"path": "migration:readPage", "args": args, "format": fmt}, deployment.deploy_key).json()
        assert body["status"] == "success"
        assert body["value"]["page"][0]["totalAssetSize"] == 5
    latest = raw_post(deployment, "/api/query", {"path": "_system/cli/exports:getLatest", "args": {}, "format": "json"}, deployment.deploy_key)
    assert latest.json() == {"status": "success", "value": None}


def test_transport_errors_name_cause_and_fix(deployment: LocalDeployment, transport: ConvexTransport) -> None:
    with pytest.raises(errors.FunctionsNotDeployed) as missing:
        transport.function("migration:doesNotExist", {})
    assert "npx convex deploy" in str(missing.value)
    with pytest.raises(errors.ArgumentValidationError):
        transport.function("migration:readPage", {"table": 1, "cursor": None, "numItems": 1})
    with pytest.raises(errors.FunctionFailed, match="no table nope in the deployed schema"):  # tables: the schema's
        transport.function("migration:readPage", {"table": "nope", "cursor": None, "numItems": 1})
    with pytest.raises(errors.DeployKeyRejected):
        deployment.transport(deploy_key="wrong-key").function("migration:readPage", {})
    refused = {"table": "videoSessions", "documents": [{"status": "x", "notInSchema": 1}]}
    with pytest.raises(errors.SchemaNotDeployed):
        transport.function("sampleData:insertBatch", refused, writes_documents=True)
    with pytest.raises(errors.RunbookError) as plain:  # the transport knows no function: only its caller can say
        transport.function("sampleData:insertBatch", refused)
    assert not isinstance(plain.value, errors.SchemaNotDeployed)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "http://no-such-deployment.invalid:3210"], ids=["refused", "dns"])
def test_unreachable_deployment_says_check_the_url(url: str) -> None:
    unreachable = ConvexTransport(url, "key", max_attempts=2)
    with pytest.raises(errors.DeploymentUnreachable, match="cannot connect after 2 attempts") as raised:
        unreachable.function("migration:readPage", {})
    assert str(raised.value).count("fix:") == 1 and "fix: Check the URL" in str(raised.value)
    assert unreachable.round_trips == 2 and "wait" not in str(raised.value).lower()


def test_limits_fail_like_convex(transport: ConvexTransport) -> None:
    session = insert_sessions(transport, 1)[0]
    scenes = transport.function(
        "sampleData:insertBatch",
        {"table": "scenes", "documents": [{"sessionId": session, "sceneIndex": i, "status": "completed"} for i in range(4000)]},
    )["ids"]
    reference = {"entityType": "scene", "assetType": "thumbnail", "s3Key": "k.png", "s3Url": "https://b.s3.amazonaws.com/k.png",
                 "contentType": "image/png", "uploadedAt": 1.0, "version": 1, "metadata": {"migratedFromLegacy": True}}
    items = [{"table": "scenes", "id": scene, "expect": {}, "expectAbsent": [], "set": {"assetVersion": 1}, "unset": [],
              "insertReferences": [reference] * 4, "deleteReferences": []} for scene in scenes]
    with pytest.raises(errors.LimitExceeded, match="16000"):  # 4,000 patches + 16,000 inserts > 16,000 writes
        transport.function("migration:applyBatch", {"migrationId": "m", "runId": "r", "items": items, "sideRows": ASSET_REFERENCES.protocol()})
    assert list(iter_documents(transport, "assetReferences")) == []  # the failed mutation wrote nothing
    with pytest.raises(errors.LimitExceeded, match="8192"):
        transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "x"}] * 8193})
    with pytest.raises(errors.LimitExceeded, match="too large"):
        transport.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "x" * 4096}] * 4500})


def test_pagination_over_thousands_of_documents(transport: ConvexTransport) -> None:
    ids = insert_sessions(transport, 9000)
    pages = list(iter_pages(transport, "videoSessions", 1000))
    assert [len(p) for p in pages] == [1000] * 9
    assert [doc["_id"] for page in pages for doc in page] == ids


def test_transient_faults_are_retried(deploy_key: str) -> None:
    with LocalDeployment(deploy_key=deploy_key, fault_rate=0.25, fault_kinds=("5xx", "drop"), fault_seed=3) as flaky:
        with flaky.transport() as client:
            for _ in range(10):
                result = client.function("migration:readPage", {"table": "scenes", "cursor": None, "numItems": 5})
                assert result["isDone"] is True
            assert client.round_trips > 10  # some calls needed more than one attempt


def test_non_idempotent_call_is_not_repeated_after_a_drop(deploy_key: str) -> None:
    with LocalDeployment(deploy_key=deploy_key, fault_rate=1.0, fault_kinds=("drop",)) as dropping:
        with dropping.transport() as client:
            with pytest.raises(errors.FunctionFailed, match="not safe to repeat"):
                client.function("sampleData:insertBatch", {"table": "videoSessions", "documents": [{"status": "x"}]}, idempotent=False)
            assert client.round_trips == 1


def test_deploy_key_comes_from_environment_or_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CONVEX_DEPLOY_KEY", "from-env")
    assert deploy_key_from_env() == "from-env"
    monkeypatch.delenv("CONVEX_DEPLOY_KEY")
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("CONVEX_DEPLOY_KEY_FILE", str(key_file))
    assert deploy_key_from_env() == "from-file"
    monkeypatch.delenv("CONVEX_DEPLOY_KEY_FILE")
    with pytest.raises(errors.DeployKeyMissing, match="CONVEX_DEPLOY_KEY"):
        ConvexTransport("http://127.0.0.1:1")


def test_redact_url_removes_credentials() -> None:
    assert redact_url("https://user:pw@happy-otter-1.convex.cloud/?token=abc&x=1") == (
        "https://REDACTED@happy-otter-1.convex.cloud/?token=REDACTED&x=1"
    )
    assert redact_url("http://127.0.0.1:3210") == "http://127.0.0.1:3210"


@pytest.mark.parametrize(("kind", "text"), [("timeout", "Function execution timed out"), ("oom", "JavaScript execution ran out of memory")])
def test_time_and_memory_limit_answers_are_retried_like_transient_failures(deploy_key: str, kind: str, text: str) -> None:
    """Convex stopping a call commits nothing and says little about its size: a read (the ledger, a page) is retried
    and never answered with "lower the batch size"; a caller that splits its work (apply) gets it at once."""
    with LocalDeployment(deploy_key=deploy_key, fault_rate=1.0, fault_kinds=(kind,), fault_paths=("migrationRuns:ledger",)) as limited:
        with limited.transport(max_attempts=3) as client:
            with pytest.raises(errors.TransientFailure, match=f"(?s)still failing after 3 attempts .*{text}") as raised:
                client.function("migrationRuns:ledger", {"migrationId": "m"})
            assert client.round_trips == 3 and "batch size" not in str(raised.value) and str(raised.value).count("fix:") == 1
            with pytest.raises(errors.FunctionTerminated, match=text) as split:
                client.function("migrationRuns:ledger", {"migrationId": "m"}, retry_terminated=False)
            assert client.round_trips == 4 and isinstance(split.value, errors.LimitExceeded)
            assert client.function("migration:readPage", {"table": "scenes", "cursor": None, "numItems": 5})["page"] == []
    with LocalDeployment(deploy_key=deploy_key, fault_rate=0.5, fault_kinds=(kind,), fault_seed=3) as flaky:
        with flaky.transport() as client:
            for _ in range(10):  # every read gets through, some after a retry
                assert client.function("migrationRuns:ledger", {"migrationId": "m"}) == []
            assert client.round_trips > 10


@pytest.mark.parametrize(
    "error",
    [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.RunbookError) and cls is not errors.RunbookError],
)
def test_every_error_class_has_one_fix_line(error: type[errors.RunbookError]) -> None:
    text = str(error("what happened"))
    assert text.startswith("what happened\n  fix: ") and text.count("fix:") == 1 and "\n" not in text.split("fix: ", 1)[1]


def test_an_unexpected_http_answer_still_says_what_to_do(transport: ConvexTransport) -> None:
    with pytest.raises(errors.RunbookError, match="HTTP 400: BadSnapshotId") as raised:
        with transport.stream("/api/export/zip/not-a-snapshot"):
            pass
    assert str(raised.value).count("fix:") == 1 and "check the URL" in str(raised.value)


def test_pages_retry_time_and_memory_limit_answers_at_their_size(deploy_key: str) -> None:
    with LocalDeployment(deploy_key=deploy_key, fault_rate=0.3, fault_kinds=("timeout", "oom"), fault_seed=5,
                         fault_paths=("migration:readPage",)) as limited, limited.transport() as client:
        ids = insert_sessions(client, 300)
        before = client.round_trips
        sizes = [len(page) for page in iter_pages(client, "videoSessions", 64)]
        retried = client.round_trips - before - len(sizes)
        assert [doc["_id"] for doc in iter_documents(client, "videoSessions", 64)] == ids
    assert sizes == [64, 64, 64, 64, 44] and retried > 0  # some page was stopped by Convex, retried, read whole


JS_HTTP_CLIENT = """
import { ConvexHttpClient } from "convex/browser";
const [url, id] = process.argv.slice(1);
const client = new ConvexHttpClient(url);
await client.mutation("scenes:setChunk", { id, s3ChunkKey: "js/chunk.mp4", s3ChunkUrl: "https://js/chunk.mp4" });
const scene = await client.query("scenes:get", { id });
console.log(JSON.stringify(scene));
"""


def test_the_official_js_http_client_sends_args_as_an_array_and_works(deployment: LocalDeployment, transport: ConvexTransport) -> None:
    session = insert_sessions(transport, 1)[0]
    [scene] = transport.function(
        "sampleData:insertBatch", {"table": "scenes", "documents": [{"sessionId": session, "sceneIndex": 0, "status": "completed"}]}
    )["ids"]
    done = subprocess.run(["node", "--input-type=module", "-e", JS_HTTP_CLIENT, deployment.url, scene],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["s3ChunkKey"] == "js/chunk.mp4"


def test_args_as_an_object_or_a_one_element_array_and_nothing_else(deployment: LocalDeployment, transport: ConvexTransport) -> None:
    """convex-backend's UdfArgsJson: an array holds the positional arguments; a Convex function takes one object."""
    session = insert_sessions(transport, 1)[0]
    [scene] = transport.function(
        "sampleData:insertBatch", {"table": "scenes", "documents": [{"sessionId": session, "sceneIndex": 0, "status": "pending"}]}
    )["ids"]
    key = deployment.deploy_key
    for args in ({"id": scene}, [{"id": scene}]):
        answer = raw_post(deployment, "/api/query", {"path": "scenes:get", "args": args, "format": "json"}, key).json()
        assert answer["status"] == "success" and answer["value"]["_id"] == scene
    two = raw_post(deployment, "/api/query", {"path": "scenes:get", "args": [{"id": scene}, {}]}, key).json()
    assert two["status"] == "error" and "takes one argument, an object; scenes:get was given 2" in two["errorMessage"]
    scalar = raw_post(deployment, "/api/query", {"path": "scenes:get", "args": [5]}, key).json()
    assert scalar["status"] == "error" and "must be an object" in scalar["errorMessage"]


def test_the_sync_route_is_refused_at_once_saying_http_only(deployment: LocalDeployment) -> None:
    """The WebSocket sync protocol is not served: an upgrade is answered at once, with what the deployment speaks."""
    with socket.create_connection(("127.0.0.1", deployment.port), timeout=5) as connection:
        connection.sendall(
            b"GET /api/1.17.0/sync HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body) == {"code": "SyncNotSupported", "message": json.loads(body)["message"]}
    assert "HTTP API only" in json.loads(body)["message"] and "ConvexHttpClient" in json.loads(body)["message"]
