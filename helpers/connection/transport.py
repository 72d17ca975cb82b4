"""HTTP transport to a Convex deployment's public API. It knows nothing of the migration.

Calls go to ``POST /api/{query,mutation,function}`` with ``{path, args, format: "convex_encoded_json"}`` and
``Authorization: Convex <deploy key>``, as ``npx convex run`` does; values travel in Convex's wire format,
losslessly both ways (``helpers.connection.values``). Transient failures (connection errors, dropped connections, timeouts, 5xx, 429, and
a call Convex stopped at its time or memory limit, which committed nothing, unless the caller splits its work
instead) are retried with exponential backoff (tenacity); every other failure becomes an exception from
``helpers.connection.errors`` that names the cause and the fix. A URL that cannot be a deployment's is refused before any
request. The deploy key is read from the environment only and never appears in a message.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from helpers.connection import values
from helpers.connection.errors import (
    ArgumentValidationError,
    DeployKeyMissing,
    DeployKeyRejected,
    DeploymentUnreachable,
    ExportInProgress,
    FunctionFailed,
    FunctionsNotDeployed,
    FunctionTerminated,
    InvalidDeploymentUrl,
    InvalidValue,
    LimitExceeded,
    RunbookError,
    SchemaNotDeployed,
    TransientFailure,
)

DEPLOY_KEY_ENV = "CONVEX_DEPLOY_KEY"
DEPLOY_KEY_FILE_ENV = "CONVEX_DEPLOY_KEY_FILE"
_SECRET_QUERY_KEYS = re.compile(r"(key|token|secret|signature|credential|password|auth)", re.IGNORECASE)
UDF_FAILED = 560  # hosted Convex may answer a function error with 560; the open-source backend with 200
#: A system query every deployment has and only an admin (deploy) key may call: the pre-flight's probe.
ACCESS_CHECK = "_system/cli/exports:getLatest"

_T = TypeVar("_T")


def deploy_key_from_env() -> str:
    """The deploy key from CONVEX_DEPLOY_KEY, or from the file CONVEX_DEPLOY_KEY_FILE names."""
    key = os.environ.get(DEPLOY_KEY_ENV, "").strip()
    if key:
        return key
    key_file = os.environ.get(DEPLOY_KEY_FILE_ENV, "").strip()
    if key_file:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise DeployKeyMissing(f"{DEPLOY_KEY_FILE_ENV} names {path}, which is not a file.")
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key
        raise DeployKeyMissing(f"The file {path} named by {DEPLOY_KEY_FILE_ENV} is empty.")
    raise DeployKeyMissing(f"No deploy key: neither {DEPLOY_KEY_ENV} nor {DEPLOY_KEY_FILE_ENV} is set.")


def check_deployment_url(url: str) -> str:
    """The URL of a deployment, without a trailing slash; anything else (no http(s) scheme or host, a port that
    is not a number, an unclosed IPv6 bracket, a path) is refused at once with the fix, before any request."""
    shown = _redact_loosely(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: urlsplit leaves "1garbage" for this to refuse
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as error:
        raise InvalidDeploymentUrl(f"{shown!r} is not a URL a deployment can have: {error}.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidDeploymentUrl(f"{shown!r} is not an http(s) URL of a deployment.")
    if parts.path.strip("/") or parts.fragment:
        raise InvalidDeploymentUrl(
            f"{shown!r} has a path ({parts.path or '#' + parts.fragment}): a deployment's API is at the root of its URL."
        )
    return url.rstrip("/")


def _redact_loosely(url: str) -> str:
    """The credentials of a URL too broken to parse cut out by pattern: user:password@ and the query."""
    try:
        return redact_url(url)
    except ValueError:
        return re.sub(r"[?#].*", "", re.sub(r"//[^/]*@", "//REDACTED@", url))


def redact_url(url: str) -> str:
    """The URL without credentials: user:password@ and secret-looking query values are replaced."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED@" + netloc.rsplit("@", 1)[1]
    query = urlencode(
        [(k, "REDACTED" if _SECRET_QUERY_KEYS.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class _Transient(Exception):
    """Internal: a failure worth retrying; becomes TransientFailure when retries run out."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class _Unreachable(_Transient):
    """Internal: connection refused or the host name did not resolve; DeploymentUnreachable when retries run out."""


class ConvexTransport:
    """A keep-alive client for one deployment; safe to share between threads."""

    def __init__(
        self,
        url: str,
        deploy_key: str | None = None,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_attempts: int = 6,
        max_connections: int = 16,
    ) -> None:
        self.url = check_deployment_url(url)
        key = deploy_key if deploy_key is not None else deploy_key_from_env()
        self.max_attempts = max_attempts
        self._round_trips = 0
        self._lock = threading.Lock()
        self._client = httpx.Client(
            base_url=self.url,
            headers={
                "Authorization": f"Convex {key}",
                "Convex-Client": f"python-runbook-{version('convex-asset-runbook')}",
            },
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    @property
    def round_trips(self) -> int:
        """HTTP requests sent so far (retries included): what the benchmarks compare."""
        return self._round_trips

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ConvexTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- function calls ---------------------------------------------------------------------------

    def query(self, path: str, args: Mapping[str, Any] | None = None) -> Any:
        return self._call("/api/query", path, args, idempotent=True)

    def check_access(self) -> None:
        """Refuses at once a deployment that does not answer (refused connection, unknown host: not retried),
        that is not Convex's API, or that refuses the deploy key: one admin-only read, the export status."""
        self._call("/api/query", ACCESS_CHECK, {}, idempotent=True, retry_unreachable=False)

    def mutation(
        self, path: str, args: Mapping[str, Any] | None = None, *, idempotent: bool = True, writes_documents: bool = False
    ) -> Any:
        return self._call(
            "/api/mutation", path, args, idempotent=idempotent, writes_documents=writes_documents, retry_terminated=idempotent
        )

    def function(
        self,
        path: str,
        args: Mapping[str, Any] | None = None,
        *,
        idempotent: bool = True,
        writes_documents: bool = False,
        retry_terminated: bool = True,
    ) -> Any:
        """Any function, internal ones included (needs the deploy key), as `npx convex run` calls it.

        `idempotent=False` retries only failures that happened before the request reached the server.
        `writes_documents=True` (the caller knows the function writes documents it was given) reads a schema
        validation failure as `SchemaNotDeployed`. `retry_terminated=False` (the caller splits its work when
        Convex stops a call at its time or memory limit) raises `FunctionTerminated` at once; otherwise it is
        retried like any transient failure (an idempotent call only)."""
        return self._call(
            "/api/function", path, args, idempotent=idempotent, writes_documents=writes_documents,
            retry_terminated=retry_terminated and idempotent,
        )

    def _call(
        self, endpoint: str, path: str, args: Mapping[str, Any] | None, *, idempotent: bool, writes_documents: bool = False,
        retry_terminated: bool = True, retry_unreachable: bool = True,
    ) -> Any:
        try:
            body = values.dumps({"path": path, "args": dict(args or {}), "format": "convex_encoded_json"}, convex_numbers=True)
        except (TypeError, ValueError) as error:  # e.g. a lone UTF-16 surrogate (Convex strings are UTF-8), an int beyond 2**53
            raise InvalidValue(f"The arguments for {path} hold a value Convex cannot hold: {error}.") from error

        def attempt() -> Any:
            response = self._send("POST", endpoint, content=body, headers={"content-type": "application/json"}, idempotent=idempotent)
            try:
                return self._function_result(path, response, writes_documents)
            except FunctionTerminated as error:
                if retry_terminated:
                    raise _Transient(error.message) from error
                raise

        return self._retrying(attempt, f"{path} at {redact_url(self.url)}", retry_unreachable=retry_unreachable)

    # -- other endpoints (snapshot export) --------------------------------------------------------

    def post(self, endpoint: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        """POST without a function body; a 4xx answer raises the matching error."""

        def attempt() -> httpx.Response:
            response = self._send("POST", endpoint, params=params, idempotent=True)
            self._raise_for_status(response)
            return response

        return self._retrying(attempt, f"POST {endpoint}")

    @contextmanager
    def stream(self, endpoint: str) -> Iterator[httpx.Response]:
        """GET a large body as a stream (the snapshot ZIP); not retried: the caller restarts the download."""
        with self._lock:
            self._round_trips += 1
        try:
            with self._client.stream("GET", endpoint) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for_status(response)
                yield response
        except httpx.TransportError as error:
            raise TransientFailure(f"Download of {endpoint} failed: {type(error).__name__}: {error}") from error

    # -- internals ----------------------------------------------------------------------------------

    def _retrying(self, attempt: Callable[[], _T], what: str, *, retry_unreachable: bool = True) -> _T:
        def give_up(state: RetryCallState) -> Any:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, _Unreachable):
                raise DeploymentUnreachable(f"{what}: cannot connect after {state.attempt_number} attempts ({error}).")
            raise TransientFailure(f"{what}: still failing after {state.attempt_number} attempts ({error}).")

        def stop(state: RetryCallState) -> bool:
            unreachable = state.outcome is not None and isinstance(state.outcome.exception(), _Unreachable)
            return state.attempt_number >= self.max_attempts or (unreachable and not retry_unreachable)

        retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop,
            wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
            retry_error_callback=give_up,
            reraise=False,
        )
        return retrying(attempt)

    def _send(self, method: str, endpoint: str, *, idempotent: bool, **kwargs: Any) -> httpx.Response:
        with self._lock:
            self._round_trips += 1
        try:
            response = self._client.request(method, endpoint, **kwargs)
        except httpx.ConnectError as error:  # refused, or the name did not resolve
            raise _Unreachable(f"cannot connect: {error}") from error
        except httpx.ConnectTimeout as error:
            raise _Transient(f"connect timeout: {error}") from error
        except (httpx.TransportError, httpx.TimeoutException) as error:
            if not idempotent:
                raise FunctionFailed(
                    f"The connection to {redact_url(self.url)} broke after the request was sent ({type(error).__name__}); "
                    "the call is not safe to repeat blindly.",
                    hint="Check the deployment's state before running it again.",
                ) from error
            raise _Transient(f"{type(error).__name__}: {error}") from error
        if response.status_code == 429 or (response.status_code >= 500 and response.status_code != UDF_FAILED):
            raise _Transient(f"HTTP {response.status_code}: {response.text[:200]}")
        return response

    def _function_result(self, path: str, response: httpx.Response, writes_documents: bool = False) -> Any:
        if response.status_code not in (200, UDF_FAILED):
            self._raise_for_status(response)
        payload = _decode(response.content)
        if not isinstance(payload, dict) or "status" not in payload:
            raise DeploymentUnreachable(
                f"{redact_url(self.url)} answered {path} with something that is not Convex's function API "
                f"(HTTP {response.status_code})."
            )
        if payload["status"] == "success":
            return payload.get("value")
        raise classify_function_error(
            path, str(payload.get("errorMessage", "")), payload.get("errorData"), writes_documents=writes_documents
        )

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            body = response.json()
            code, message = str(body.get("code", "")), str(body.get("message", ""))
        except (ValueError, AttributeError):
            code, message = "", response.text[:200]
        where = redact_url(self.url)
        if response.status_code in (401, 403):
            raise DeployKeyRejected(f"{where} refused the deploy key: {code} {message}".strip())
        if response.status_code == 413:
            raise LimitExceeded(f"{where} refused the request as too large: {message}")
        if code == "ExportInProgress":
            raise ExportInProgress(f"{where}: {message}")
        if response.status_code == 404:
            raise DeploymentUnreachable(f"{where} has no {response.request.url.path} ({code} {message}). Is this a Convex deployment URL?")
        raise RunbookError(
            f"{where} answered HTTP {response.status_code}: {code} {message}".strip(),
            hint="An answer the runbook does not expect: check the URL names a Convex deployment and that convex/ is deployed from this checkout.",
        )


_NOT_FOUND = re.compile(r"Could not find (public )?function")
_LIMIT = re.compile(r"This is a Convex limit|too many|too large|too long|too nested|limit:", re.IGNORECASE)
#: Convex's texts when it stops a function at its time or memory limit (crates/isolate/src/termination.rs).
_TERMINATED = re.compile(r"Function execution timed out|JavaScript execution ran out of memory", re.IGNORECASE)
_SCHEMA = re.compile(r"does not match the schema|not in the validator|Unexpected field `\w+` in object|Failed to insert or update", re.IGNORECASE)
_ARGUMENTS = re.compile(r"ArgumentValidationError|Validator error|does not match validator|Value does not match", re.IGNORECASE)


def classify_function_error(path: str, message: str, data: Any = None, *, writes_documents: bool = False) -> RunbookError:
    """Turns a Convex function error into the exception that names its cause and fix. The transport knows no
    function: whether a schema failure means "the schema is not deployed" is the caller's (`writes_documents`)."""
    text = message.strip()
    if _NOT_FOUND.search(text):
        return FunctionsNotDeployed(
            f"{path} was not found on the deployment (or the deploy key is not an admin key: internal functions "
            f"are invisible without it). Server said: {text}"
        )
    if _TERMINATED.search(text):
        return FunctionTerminated(f"{path} was stopped by Convex: {text}")
    if _LIMIT.search(text):
        return LimitExceeded(f"{path} exceeded a Convex limit: {text}")
    if writes_documents and _SCHEMA.search(text):
        return SchemaNotDeployed(f"{path} was refused by the deployed schema: {text}")
    if _ARGUMENTS.search(text):
        return ArgumentValidationError(f"{path} rejected its arguments: {text}")
    error = FunctionFailed(f"{path} failed: {text}")
    error.data = data  # type: ignore[attr-defined]
    return error


def _decode(content: bytes) -> Any:
    try:
        return values.loads(content)
    except ValueError:
        return None
