"""EmpirioClient: the async EmpirioLabs API client, and the one place API failures are classified.

Every failure leaves the client as one `ApiError` from `kling_batch.errors` (all carry
`status`, `code`, `message`, `param`, `type`, `attempts`; none ever contains the API key).
`EmpirioClient._classify` maps every httpx exception and non-2xx response to this tree.
A submit (`POST /v1/videos/generations`) is retried only when the request provably never
reached the server (ConnectError, ConnectTimeout, PoolTimeout, ProxyError) or the API
answered with a definite refusal (429, 503, or a 5xx carrying its own JSON error envelope);
a 5xx page from a proxy, and any failure after bytes may have been sent
(write/read errors and timeouts, a dropped connection, a 2xx without a job id, a gateway
timeout from `RetryPolicy.ambiguous_submit_statuses`, a 303 See Other) is `AmbiguousSubmit`,
never retried. A 201 or 202 may name its job in `Location` instead of its body. A 2xx
reporting an error and naming no job is `AnsweredWithError`: uncertain, and the run stops.
A submit given `halt` (the run's stop) is never sent once it is set, however long it has
waited for its turn or for a retry: it raises `SubmitWithdrawn`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import mimetypes
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, Self, TypeVar
from urllib.parse import quote

import anyio
import httpx

from kling_batch import __version__
from kling_batch.canonical import json_default, tagged
from kling_batch.clock import Clock, SystemClock
from kling_batch.endpoint import (
    DEFAULT_BASE_URL,
    Timeouts,
    api_key_from_env,
    check_api_key,
    direct_to_loopback,
    resolve_base_url,
)
from kling_batch.errors import (
    AmbiguousSubmit,
    AnsweredWithError,
    ApiError,
    AuthError,
    BadResponse,
    ConnectionFailed,
    CreditsError,
    ErrorAnswer,
    JobNotFound,
    KeyRefused,
    MalformedResponse,
    RateLimited,
    ResultExpired,
    RunFatal,
    ServerError,
    ShotRejected,
    SubmitWithdrawn,
    TruncatedDownload,
)
from kling_batch.joblist import JobPage, NextPage, parse_job_page
from kling_batch.payloads import (
    Download,
    ErrorInfo,
    JobState,
    Submission,
    Upload,
    find_error_answer,
    find_job_id,
    find_poll_url,
    find_video_url,
    has_status,
    parse_error_envelope,
    parse_job,
    parse_upload,
)
from kling_batch.ratelimit import RateLimiter, RetryPolicy, retry_after_seconds

__all__ = [
    "DEFAULT_BASE_URL",
    "Download",
    "EmpirioClient",
    "ErrorInfo",
    "JobState",
    "RetryPolicy",
    "Submission",
    "Timeouts",
    "Upload",
    "api_key_from_env",
    "resolve_base_url",
]

_REDACTED = "[redacted]"
_MAX_MESSAGE = 500
# Raised before a single byte of the request left this process: safe to repeat any POST.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
_UNSENDABLE = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)

log = logging.getLogger(__name__)
T = TypeVar("T")
_Op = Literal["submit", "job", "api", "download"]


RATE_HEADROOM = 1.02


class EmpirioClient:
    """The EmpirioLabs API over one pooled `httpx.AsyncClient`; use as `async with`.

    Every `/v1/*` request to the API origin waits for the shared `RateLimiter` (`limiter`,
    or a new one at `rpm`; downloads from other hosts do not wait). Retryable failures are
    retried per `retry`, sleeping on `clock`; what is left is raised as one `ApiError`
    subclass. The key goes as a bearer token to the API origin (scheme, host, port) only.
    `transport` is the test seam (`httpx.MockTransport`). Cancelling a `submit` after it
    was sent leaves its outcome unknown, exactly like `AmbiguousSubmit`.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rpm: float | None = 50,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        limiter: RateLimiter | None = None,
        limits: httpx.Limits | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        self._key = check_api_key(api_key)
        # Plain http to a host off this machine is refused unless allowed (issue 9).
        base = resolve_base_url(base_url, allow_insecure_http=allow_insecure_http)
        self._base = httpx.URL(base + "/")
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._retry = retry if retry is not None else RetryPolicy()
        self._timeouts = timeouts if timeouts is not None else Timeouts()
        # 2% headroom on the spacing: a request sent on time may reach the server a little
        # late and the next one early; the server's sliding window must still see <= rpm.
        self._limiter = (
            limiter
            if limiter is not None
            else RateLimiter(rpm, clock=self._clock, period=60.0 * RATE_HEADROOM)
        )
        # The first 401, after which nothing more is sent, and the requests waiting to go.
        self._key_refusal: AuthError | None = None
        self._waiting: set[anyio.CancelScope] = set()
        limits = limits or httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(
            transport=transport,
            mounts=direct_to_loopback(base, limits) if transport is None else None,
            limits=limits,
            timeout=self._timeouts.httpx_timeout("poll"),
            headers={"User-Agent": f"kling-batch/{__version__}"},
        )

    def __repr__(self) -> str:
        return f"EmpirioClient(base_url={str(self._base).rstrip('/')!r}, rpm={self._limiter.rpm!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()

    @property
    def base_url(self) -> str:
        """The API base URL, without a trailing slash."""
        return str(self._base).rstrip("/")

    @property
    def upload_scope(self) -> str:
        """Which API and account this client's upload paths belong to: a short hash of the
        base URL and the key (the key itself never leaves this object)."""
        return hashlib.sha256(f"{self.base_url}\n{self._key}".encode()).hexdigest()[:16]

    @property
    def clock(self) -> Clock:
        """The clock every wait of this client uses."""
        return self._clock

    @property
    def limiter(self) -> RateLimiter:
        """The request budget shared by every API call of this client."""
        return self._limiter

    # -- operations ---------------------------------------------------------------------

    async def submit(
        self,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        halt: anyio.Event | None = None,
    ) -> Submission:
        """`POST /v1/videos/generations`; raises `AmbiguousSubmit` if the outcome is unknown.

        Once `halt` is set (the run stopped submitting) no attempt of it goes out: waiting
        for its turn or for a retry after a refusal, it raises `SubmitWithdrawn` at once.
        """
        url = self._api_url("v1/videos/generations")
        content = json.dumps(dict(body), default=json_default).encode()
        extra = {"Content-Type": "application/json", **(headers or {})}

        def make(_: contextlib.ExitStack) -> httpx.Request:
            return self._build("POST", url, "submit", headers=extra, content=content)

        return await self._call("submit", make, self._submission, halt=halt)

    async def _submission(self, response: httpx.Response) -> Submission:
        """The job a 2xx answer to a submit names, in its body or a 201/202's Location.

        `ErrorAnswer` when the body reports an error and no job is named; any other answer
        naming no job (or two) is `MalformedResponse`.
        """
        located = self._located_job(response)
        try:
            payload = await _json_object(response)
        except MalformedResponse:
            if located is None:
                raise
            payload = {}  # a 201 naming its job in Location needs no body
        said = find_error_answer(payload)
        # An error envelope's `id` is its own (a request id), never the job's: polled, it
        # would answer 404 until taken for a forgotten job, and the render paid again.
        job_id = find_job_id(payload, keys=("job_id",) if said else ("job_id", "id"))
        if located is not None and job_id not in (None, located):
            raise MalformedResponse(f"its body names job {job_id!r}, Location {located!r}")
        job_id = job_id or located
        if job_id is None:
            if said is not None:
                raise ErrorAnswer(said.message, code=said.code, type=said.type)
            raise MalformedResponse("the response carries no job id")
        status = payload.get("status")
        return Submission(
            job_id=job_id,
            poll_url=self._poll_url(find_poll_url(payload), job_id),
            status=status if isinstance(status, str) else None,
            raw=payload,
        )

    async def get_job(self, job_id: str, poll_url: str | None = None) -> JobState:
        """`GET` the job at its poll URL (or `/v1/jobs/{id}`); 404 raises `JobNotFound`."""
        url = self._poll_url(poll_url, job_id)

        async def handle(response: httpx.Response) -> JobState:
            payload = await _json_object(response)
            said = find_error_answer(payload) if not has_status(payload) else None
            if said is not None and find_video_url(payload) is None:
                # An error envelope without a status field is no word on the job (a
                # gateway's trouble, the API's own): read as its failure, the render would
                # be recorded failed and paid again while the job may be rendering.
                raise MalformedResponse(f"it answered an error and no job status: {said}")
            return parse_job(payload, job_id=job_id)

        return await self._call("job", lambda _: self._build("GET", url, "poll"), handle)

    async def list_jobs(self, status: str | None = None, limit: int = 100) -> list[JobState] | None:
        """The first page of recent jobs from `GET /v1/jobs`; None if the API has no list."""
        page = await self.list_jobs_page(status=status, limit=limit)
        return page.jobs if page is not None else None

    async def list_jobs_page(
        self, *, status: str | None = None, limit: int = 100, page: NextPage | None = None
    ) -> JobPage | None:
        """One page of `GET /v1/jobs` (provisional path), newest first; None (404 or 405)
        when the API offers no list. `page` is the previous page's `JobPage.next`.

        A next-page URL off the API origin is never followed (it reads as no way on).
        """
        query: dict[str, str | int] = {"limit": limit, **(page.params if page else {})}
        if status:
            query["status"] = status
        url = self._api_url("v1/jobs")
        params: dict[str, str | int] | None = query
        if page is not None and page.url is not None:
            url, params = httpx.URL(page.url), None  # the link carries its own query

        async def handle(response: httpx.Response) -> JobPage:
            await response.aread()
            try:
                payload = json.loads(response.content)
            except ValueError as exc:
                raise MalformedResponse("the job list is not JSON") from exc
            link = response.links.get("next", {}).get("url")
            found = parse_job_page(payload, limit=limit, link_next=link)
            if found.next is not None and found.next.url is not None:
                own = self._own_url(found.next.url)
                found = replace(found, next=NextPage(url=str(own)) if own else None)
            return found

        try:
            return await self._call(
                "api", lambda _: self._build("GET", url, "poll", params=params), handle
            )
        except ShotRejected as exc:
            if exc.status in (404, 405):
                return None
            raise

    async def cancel_job(self, job_id: str) -> JobState | None:
        """`POST /v1/jobs/{id}/cancel` (provisional); None when the API offers no such route."""
        url = self._api_url(f"v1/jobs/{quote(job_id, safe='')}/cancel")

        async def handle(response: httpx.Response) -> JobState:
            await response.aread()
            try:
                payload = json.loads(response.content) if response.content.strip() else {}
            except ValueError:
                payload = {}
            return parse_job(payload if isinstance(payload, Mapping) else {}, job_id=job_id)

        try:
            return await self._call("job", lambda _: self._build("POST", url, "poll"), handle)
        except (JobNotFound, ShotRejected) as exc:
            if exc.status in (404, 405):
                return None
            raise

    async def get_model(self, model: str = "kling-o3") -> dict[str, Any]:
        """The model description from `GET /v1/models/{model}`."""
        url = self._api_url(f"v1/models/{quote(model, safe='')}")

        async def handle(response: httpx.Response) -> dict[str, Any]:
            return dict(await _json_object(response))

        return await self._call("api", lambda _: self._build("GET", url, "poll"), handle)

    async def upload(self, path: Path, *, content_type: str | None = None) -> Upload:
        """`POST /v1/files/upload` (multipart field `file`), streamed from disk; the upload
        carries the hash of the bytes sent."""
        url = self._api_url("v1/files/upload")
        size = (await anyio.Path(path).stat()).st_size
        ctype = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"

        sent: list[_HashedReads] = []

        def make(stack: contextlib.ExitStack) -> httpx.Request:
            # Opened per attempt and closed by `_call`; httpx streams it in 64 KiB chunks.
            handle = _HashedReads(stack.enter_context(open(path, "rb")))  # noqa: SIM115
            sent.append(handle)
            return self._build("POST", url, "upload", files={"file": (path.name, handle, ctype)})

        async def handle(response: httpx.Response) -> Upload:
            digest = sent[-1].sha256()  # the attempt answered: the bytes it sent
            upload = parse_upload(await _json_object(response), size=size, sha256=digest)
            if upload is None:
                raise MalformedResponse("the upload response carries no bunny:// path")
            return upload

        return await self._call("api", make, handle)

    async def download(self, url: str, dest: Path) -> Download:
        """Stream `url` into `dest` (truncated first) and hash it; the caller renames it."""

        def make(_: contextlib.ExitStack) -> httpx.Request:
            return self._build("GET", url, "download")

        async def handle(response: httpx.Response) -> Download:
            declared = response.headers.get("Content-Length")
            expected = int(declared) if declared and declared.isdigit() else None
            digest, size = hashlib.sha256(), 0
            async with await anyio.open_file(dest, "wb") as out:
                try:
                    async for chunk in response.aiter_bytes():
                        await out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                except httpx.TransportError as exc:
                    raise MalformedResponse(f"download cut off after {size} bytes") from exc
            # Content-Length counts bytes on the wire; they differ from `size` only if encoded.
            encoded = response.headers.get("Content-Encoding", "identity") != "identity"
            received = response.num_bytes_downloaded if encoded else size
            if expected is not None and received != expected:
                raise MalformedResponse(f"download got {received} of {expected} bytes")
            return Download(
                size=size, sha256=tagged(digest.hexdigest()), length_declared=expected is not None
            )

        return await self._call("download", make, handle)

    # -- transport ------------------------------------------------------------------------

    async def _call(
        self,
        op: _Op,
        make: Callable[[contextlib.ExitStack], httpx.Request],
        handle: Callable[[httpx.Response], Awaitable[T]],
        *,
        halt: anyio.Event | None = None,
    ) -> T:
        """Send with retries; return `handle(response)` of the first usable 2xx.

        After the API's first 401 no request to its origin goes out again: each later one,
        and each one waiting for its turn or a retry, raises `KeyRefused` (issue 9). Once
        `halt` is set, likewise, with `SubmitWithdrawn`.
        """
        attempt = 0
        while True:
            attempt += 1
            cause: BaseException | None = None
            with contextlib.ExitStack() as stack:
                request = make(stack)
                keyed = self._same_origin(request.url)
                limited = self._is_limited(request.url)
                turn = self._limiter.acquire if limited else None
                await self._unless_refused(keyed, turn, halt)
                try:
                    response = await self._http.send(
                        request, stream=True, follow_redirects=op == "download"
                    )
                except httpx.HTTPError as exc:
                    error, cause = self._classify(op, exc=exc), exc
                else:
                    try:
                        if response.is_success:
                            return await handle(response)
                        with contextlib.suppress(httpx.HTTPError):
                            await response.aread()
                        error = self._classify(op, response=response)
                    except httpx.HTTPError as exc:
                        error, cause = self._classify(op, exc=exc), exc
                    except MalformedResponse as exc:
                        error = self._classify(op, response=response, problem=exc)
                        cause = exc.__cause__
                    finally:
                        await response.aclose()
            delay = self._retry_delay(request, error, attempt, cause)
            await self._unless_refused(keyed, partial(self._clock.sleep, delay), halt)

    def _retry_delay(
        self, request: httpx.Request, error: ApiError, attempt: int, cause: BaseException | None
    ) -> float:
        """How long to wait before trying again; raises `error` when it is not worth it."""
        error.attempts = attempt
        self._note_refusal(error)
        log.debug(
            "%s %s failed (attempt %d): %s", request.method, _safe_url(request), attempt, error
        )
        if not error.retryable or attempt >= self._retry.max_attempts:
            raise error from self._safe_cause(cause)
        delay = self._retry.delay(attempt, error.retry_after)
        if isinstance(error, RateLimited) or error.retry_after is not None:
            # One 429 slows the whole client, so the other callers do not hit it too.
            self._limiter.pause_for(delay if error.retry_after is None else error.retry_after)
        log.info("retrying %s %s in %.1fs: %s", request.method, _safe_url(request), delay, error)
        return delay

    async def _unless_refused(
        self,
        keyed: bool,
        wait: Callable[[], Awaitable[None]] | None,
        halt: anyio.Event | None = None,
    ) -> None:
        """Await `wait` (a turn of the rate limiter, a retry's backoff), then return, unless
        the key has been refused: a request carrying it then raises `KeyRefused`, at once,
        even while it waits (requests queued behind the limiter must not go out). Likewise
        `SubmitWithdrawn` once `halt` is set (a submit the run stopped before it was sent;
        the caller shields a submit, so this is what ends its wait)."""
        self._check_sendable(keyed, halt)
        if wait is None:
            return
        with anyio.CancelScope() as scope:
            if keyed:
                self._waiting.add(scope)
            try:
                await _unless_set(halt, wait)
            finally:
                self._waiting.discard(scope)
        self._check_sendable(keyed, halt)

    def _check_sendable(self, keyed: bool, halt: anyio.Event | None) -> None:
        """Raise `KeyRefused` or `SubmitWithdrawn` when the request must not go out."""
        if keyed:
            self._check_key()
        if halt is not None and halt.is_set():
            raise SubmitWithdrawn("not sent: the run stopped submitting before it went out")

    def _check_key(self) -> None:
        """Raise `KeyRefused` (the first 401's words) once the API has refused the key."""
        first = self._key_refusal
        if first is not None:
            refused = KeyRefused(
                first.message, status=first.status, code=first.code, type=first.type
            )
            refused.attempts = 0  # nothing was sent
            raise refused

    def _note_refusal(self, error: ApiError) -> None:
        """The first 401 refuses the key for good: wake every request waiting to be sent.

        Only 401 (the key is missing, invalid or revoked): a 403 says the key was read and
        this one request is not allowed, so polls of paid jobs may still succeed.
        """
        if self._key_refusal is not None or not isinstance(error, AuthError) or error.status != 401:
            return
        self._key_refusal = error
        for scope in list(self._waiting):
            scope.cancel()

    def _classify(
        self,
        op: _Op,
        *,
        exc: BaseException | None = None,
        response: httpx.Response | None = None,
        problem: MalformedResponse | None = None,
    ) -> ApiError:
        """The one mapping from an httpx exception or unusable response to the error tree."""
        if response is None:
            return self._unanswered(op, exc)
        status = response.status_code
        if problem is not None:
            if op == "submit" and isinstance(problem, ErrorAnswer):
                # Whether a job was made is unknown, and every later submit answered so
                # would be as blind: the submitter stops the run (`AnsweredWithError`).
                message = f"submit answered HTTP {status} with an error and no job id: {problem}"
                return self._error(
                    AnsweredWithError, message, status=status, code=problem.code, type=problem.type
                )
            if op == "submit":
                message = f"submit answered HTTP {status} but {problem}"
                return self._error(AmbiguousSubmit, message, status=status)
            cls = TruncatedDownload if op == "download" else BadResponse
            return self._error(cls, str(problem), status=status)
        return self._refused(op, response)

    def _unanswered(self, op: _Op, exc: BaseException | None) -> ApiError:
        """No response: not sent (safe to repeat), unsendable, or sent without an answer."""
        text = f"{type(exc).__name__}: {exc}" if exc is not None else "no response"
        if isinstance(exc, _NOT_SENT):
            return self._error(ConnectionFailed, f"could not reach {self._host}: {text}")
        if isinstance(exc, _UNSENDABLE):
            return self._error(RunFatal, f"cannot send the request: {text}")
        if op == "submit":
            return self._error(AmbiguousSubmit, f"submit sent but no answer came back: {text}")
        if isinstance(exc, httpx.TransportError | httpx.DecodingError):
            return self._error(ConnectionFailed, f"request failed: {text}")
        return self._error(ShotRejected, f"request failed: {text}")

    def _refused(self, op: _Op, response: httpx.Response) -> ApiError:
        """A non-2xx answer, with the API's error envelope and Retry-After read."""
        status = response.status_code
        reason = f"HTTP {status} {response.reason_phrase}".strip()
        envelope = parse_error_envelope(response.content, fallback=reason)
        after = retry_after_seconds(
            response.headers, clock=self._clock, unit=self._retry.retry_after_unit
        )
        if after is not None:
            after = min(after, self._retry.retry_after_cap)
        cls, message = self._status_class(op, response, envelope.message)
        return self._error(
            cls,
            message,
            status=status,
            code=envelope.code,
            param=envelope.param,
            type=envelope.type,
            retry_after=after,
        )

    def _status_class(
        self, op: _Op, response: httpx.Response, message: str
    ) -> tuple[type[ApiError], str]:
        """The error class an HTTP status means for this operation, and its message."""
        status = response.status_code
        if op == "download" and status in (401, 403, 404, 410):
            url = _safe_url(response.request)
            return ResultExpired, f"result URL {url} answered {status}: {message}"
        if status in (401, 403):
            return AuthError, message
        if status == 402:
            return CreditsError, message
        if status == 429:
            return RateLimited, message
        if op == "submit" and status in self._retry.ambiguous_submit_statuses:
            return AmbiguousSubmit, f"gateway timeout on submit; the job may exist: {message}"
        if op == "submit" and status == 303:
            # See Other answers a request that was acted on: the job may exist.
            return AmbiguousSubmit, f"HTTP 303 on submit; the job may exist: {message}"
        if op == "submit" and 500 <= status < 600 and status != 503 and not _enveloped(response):
            # No API error envelope with a code: a proxy answered, or the API failed
            # without saying why, and the job may have been created first. Only the API's
            # own refusal (an envelope with a code) or a 503 proves nothing was created.
            return AmbiguousSubmit, (
                f"HTTP {status} on submit without the API's error code; the job may exist: "
                f"{message}"
            )
        if status == 408 or (500 <= status < 600 and status not in (501, 505)):
            return ServerError, message
        if status == 404 and op == "job":
            return JobNotFound, message
        return ShotRejected, message

    def _error(
        self,
        cls: type[ApiError],
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        retry_after: float | None = None,
    ) -> ApiError:
        """Build an error with the key redacted from every text field."""
        return cls(
            self._redact(message)[:_MAX_MESSAGE],
            status=status,
            code=self._redact(code),
            param=self._redact(param),
            type=self._redact(type),
            retry_after=retry_after if cls.retryable else None,
        )

    def _redact(self, text: str | None) -> Any:
        return text.replace(self._key, _REDACTED) if isinstance(text, str) else text

    def _safe_cause(self, cause: BaseException | None) -> BaseException | None:
        """The exception to chain from, unless any text in its chain would leak the key."""
        link, seen = cause, 0
        while link is not None and seen < 16:
            if self._key in f"{link!s}{link!r}":
                return None
            link, seen = link.__cause__ or link.__context__, seen + 1
        return cause

    def _build(
        self,
        method: str,
        url: str | httpx.URL,
        timeout: Literal["submit", "poll", "upload", "download"],
        *,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Request:
        """A request; the bearer token is added only when it goes to the API origin."""
        target = httpx.URL(url)
        merged = dict(headers or {})
        for name in [n for n in merged if n.lower() in ("authorization", "x-api-key")]:
            del merged[name]
        if self._same_origin(target):
            merged["Authorization"] = f"Bearer {self._key}"
            if timeout != "download":
                merged.setdefault("Accept", "application/json")
        return self._http.build_request(
            method, target, headers=merged, timeout=self._timeouts.httpx_timeout(timeout), **kwargs
        )

    @property
    def _host(self) -> str:
        return self._base.host

    def _same_origin(self, url: httpx.URL) -> bool:
        def origin(u: httpx.URL) -> tuple[str, str, int | None]:
            default = {"http": 80, "https": 443}.get(u.scheme)
            return u.scheme, u.host, u.port or default

        try:
            return origin(url) == origin(self._base)
        except UnicodeError:  # a host that is not valid IDNA (`xn--`): not the API's
            return False

    def _is_limited(self, url: httpx.URL) -> bool:
        """API requests count against the RPM budget; result downloads elsewhere do not."""
        return self._same_origin(url) and url.path.startswith(self._base.path + "v1/")

    def _api_url(self, path: str) -> httpx.URL:
        return self._base.join(path)

    def _own_url(self, raw: str) -> httpx.URL | None:
        """A next-page link (absolute, or relative to the job list) if on the API origin."""
        try:
            url = self._api_url("v1/jobs").join(raw)
        except httpx.InvalidURL:
            return None
        return url if self._same_origin(url) else None

    def _poll_url(self, raw: str | None, job_id: str) -> str:
        """Where to poll: the API's poll URL if it is on the API origin, else `/v1/jobs/{id}`."""
        fallback = str(self._api_url(f"v1/jobs/{quote(job_id, safe='')}"))
        if not raw:
            return fallback
        try:
            url = httpx.URL(raw)
        except httpx.InvalidURL:
            return fallback
        if url.is_absolute_url:
            return raw if self._same_origin(url) else fallback
        return str(self._relative_api_url(raw))

    def _relative_api_url(self, raw: str) -> httpx.URL:
        """A relative URL the API sent, on the API base: given with or without the base's
        path prefix, with or without a leading slash."""
        prefix = self._base.path.lstrip("/")
        relative = raw.lstrip("/")
        if prefix and relative.startswith(prefix):
            relative = relative[len(prefix) :]
        return self._base.join(relative)

    def _located_job(self, response: httpx.Response) -> str | None:
        """The job a 201 or 202 names in its `Location`: `/v1/jobs/{id}` on the API (relative,
        or absolute on its origin), one path segment for the id; else None."""
        raw = response.headers.get("Location", "").strip()
        if response.status_code not in (201, 202) or not raw:
            return None
        try:
            url = httpx.URL(raw)
            if not url.is_absolute_url:
                url = self._relative_api_url(raw)
        except httpx.InvalidURL:
            return None
        jobs = self._base.path + "v1/jobs/"
        if not self._same_origin(url) or not url.path.startswith(jobs):
            return None
        job_id = url.path[len(jobs) :]
        if not job_id or "/" in job_id or not job_id.isprintable() or job_id != job_id.strip():
            return None
        return job_id


async def _unless_set(event: anyio.Event | None, wait: Callable[[], Awaitable[None]]) -> None:
    """Await `wait`, cut short as soon as `event` is set."""
    if event is None:
        await wait()
        return
    async with anyio.create_task_group() as group:

        async def cut() -> None:
            await event.wait()
            group.cancel_scope.cancel()

        group.start_soon(cut)
        await wait()
        group.cancel_scope.cancel()


async def _json_object(response: httpx.Response) -> Mapping[str, Any]:
    """The body as a JSON object, or `MalformedResponse`."""
    await response.aread()
    try:
        payload = json.loads(response.content)
    except ValueError as exc:
        raise MalformedResponse("the body is not JSON") from exc
    if not isinstance(payload, Mapping):
        raise MalformedResponse("the body is not a JSON object")
    return payload


def _enveloped(response: httpx.Response) -> bool:
    """True when an error body is the API's own JSON error envelope with an error code
    (`{"error": {"code": ...}}`): not a proxy's page, nor a bare `{"error": "text"}`."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and isinstance(error.get("code"), str) and bool(error["code"])


def _safe_url(request: httpx.Request) -> str:
    """Scheme, host and path only: signed query strings stay out of logs and errors."""
    url = request.url
    return str(url.copy_with(query=None, fragment=None))


class _HashedReads:
    """A file being uploaded, hashed as httpx reads it: what was sent, whatever the file
    holds now or held when it was planned. httpx seeks to the start before it sends."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._digest.update(chunk)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) != (0, os.SEEK_SET):
            raise io.UnsupportedOperation("an upload is read from its start only")
        self._digest = hashlib.sha256()
        return self._handle.seek(0)

    def tell(self) -> int:
        return self._handle.tell()

    def fileno(self) -> int:
        return self._handle.fileno()

    def sha256(self) -> str:
        return tagged(self._digest.hexdigest())
