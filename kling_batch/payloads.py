"""What the client reads out of API responses: frozen result types and tolerant parsers.

The response shapes are partly unknown (`reference/empiriolabs-api.md` §2.2, §3, §4), so
each parser accepts every plausible variant and returns None for what is absent; the
client decides what an absence means. Parsers never raise on odd input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "Download",
    "ErrorEnvelope",
    "ErrorInfo",
    "JobState",
    "JobStatus",
    "Submission",
    "Upload",
]

JobStatus = Literal["pending", "succeeded", "failed"]

_SUCCEEDED = frozenset({"completed", "succeeded", "success", "complete", "done"})
_FAILED = frozenset({"failed", "error", "errored", "cancelled", "canceled", "expired"})
_PENDING = frozenset(
    {"queued", "pending", "processing", "running", "in_progress", "starting", "submitted"}
)
_CONTAINERS = ("result", "output", "data")
_NOT_VIDEO = ("thumb", "poster", "image", "cover", "preview", "poll")
# What a file object's `content_type` (`image/jpeg`) or `type` (`image`) says when it is
# not the video; a word like `text_to_video` says nothing of the sort.
_OTHER_MEDIA = ("image/", "audio/", "text/")
_EXPIRES_QUERY = ("expires", "expires_at", "exp", "e")
_MAX_DEPTH = 4
_MAX_MESSAGE = 500


@dataclass(frozen=True)
class ErrorInfo:
    """An error the API reported inside a job (not an HTTP failure)."""

    message: str
    code: str | None = None
    type: str | None = None


@dataclass(frozen=True)
class ErrorEnvelope:
    """What an HTTP error body says: OpenAI-style, Anthropic-style or plain text."""

    message: str
    code: str | None = None
    type: str | None = None
    param: str | None = None


@dataclass(frozen=True)
class Submission:
    """A created job: its id and the absolute URL to poll it at."""

    job_id: str
    poll_url: str
    status: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class JobState:
    """One reading of a job; `status` is normalised, `raw_status` is what the API said."""

    job_id: str
    status: JobStatus
    raw_status: str
    progress: float | None = None
    video_url: str | None = None
    expires_at: datetime | None = None
    error: ErrorInfo | None = None
    billed_usd: Decimal | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # What the job was created from, when the API echoes it (job lists, for adoption).
    request: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    created_at: datetime | None = None


@dataclass(frozen=True)
class Upload:
    """An uploaded file: the `bunny://` path other endpoints accept, its size in bytes and
    the `sha256:<hex>` of the bytes sent (hashed as they were read: the file may have
    changed since it was planned)."""

    path: str
    url: str | None
    size: int
    sha256: str


@dataclass(frozen=True)
class Download:
    """A downloaded file: bytes written, `sha256:<hex>` of them, and whether the server
    declared the length (`Content-Length`, checked) or left it open (chunked, or until the
    connection closed: a body cut short there looks complete)."""

    size: int
    sha256: str
    length_declared: bool = True


def normalise_status(raw: str) -> JobStatus:
    """Map an API status word to pending / succeeded / failed (unknown words are pending)."""
    word = raw.strip().lower()
    if word in _SUCCEEDED:
        return "succeeded"
    if word in _FAILED:
        return "failed"
    return "pending"


def is_known_status(raw: str) -> bool:
    """True when a status word is one of those the API (or a similar one) is known to use."""
    return raw.strip().lower() in _SUCCEEDED | _FAILED | _PENDING


def find_job_id(
    payload: Mapping[str, Any], *, keys: tuple[str, ...] = ("job_id", "id")
) -> str | None:
    """The job id from `job_id`, `id`, or the same keys under `data` or `job`; a `job_id`
    anywhere wins over an `id` (which may be the envelope's own, e.g. a request id).
    `keys` narrows the keys read, in order."""
    holders = [
        h for h in (payload, payload.get("data"), payload.get("job")) if isinstance(h, Mapping)
    ]
    for key in keys:
        for holder in holders:
            value = holder.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
    return None


def find_poll_url(payload: Mapping[str, Any]) -> str | None:
    """The `poll_url` as sent (absolute or relative), if any."""
    for holder in (payload, payload.get("data"), payload.get("job")):
        if isinstance(holder, Mapping):
            for key in ("poll_url", "status_url"):
                value = holder.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
            urls = holder.get("urls")
            if isinstance(urls, Mapping) and isinstance(urls.get("get"), str):
                return str(urls["get"]).strip() or None
    return None


def has_status(payload: Mapping[str, Any]) -> bool:
    """True when a job answer has a `status` field (null included), at its top or in the
    `data`/`job` object `parse_job` reads."""
    holders = [payload, *(payload.get(key) for key in ("data", "job"))]
    return any(isinstance(holder, Mapping) and "status" in holder for holder in holders)


def parse_job(payload: Mapping[str, Any], *, job_id: str | None = None) -> JobState:
    """A `JobState` from a job object (or one wrapped in `data`/`job`); `job_id` wins if given.

    An `error` object with a message or code makes the job `failed` whatever its status
    word, unless the word is a success and the job offers its video (paid for). An unknown
    word is `pending`, unless the job already offers its video: then it is `succeeded` (a
    paid video must be collected while the API still keeps it).
    """
    raw = payload
    if "status" not in payload:
        for key in ("data", "job"):
            inner = payload.get(key)
            if isinstance(inner, Mapping) and "status" in inner:
                payload = inner
                break
    raw_status = payload.get("status")
    if not isinstance(raw_status, str):
        raw_status = ""
    status = normalise_status(raw_status)
    error = find_error(payload, failed=status == "failed")
    video_url = find_video_url(payload)
    delivered = status == "succeeded" and video_url is not None
    if error is not None and isinstance(payload.get("error"), Mapping) and not delivered:
        # An error object means the job failed, whatever its status word says (issue 8):
        # a job reporting one would otherwise be polled as pending until its deadline.
        # Not a job that says it completed and offers its video: that one was paid for.
        status = "failed"
    if status == "pending" and video_url and not is_known_status(raw_status):
        status = "succeeded"
    return JobState(
        job_id=job_id or find_job_id(payload) or "",
        status=status,
        raw_status=raw_status,
        progress=_progress(payload.get("progress")),
        video_url=video_url,
        expires_at=find_expiry(payload),
        error=error,
        billed_usd=find_billed_usd(payload),
        raw=raw,
        request=find_request(payload),
        created_at=parse_time(payload.get("created_at") or payload.get("created")),
    )


def find_request(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The request a job was created from: `request`, `input` or `params`, if echoed."""
    for key in ("request", "input", "params"):
        value = payload.get(key)
        if isinstance(value, Mapping):
            return value
    return None


def parse_upload(payload: Mapping[str, Any], *, size: int, sha256: str) -> Upload | None:
    """An `Upload` from `path`, `bunny_path`, a `bunny://` `url`, or any of those under `data`."""
    for holder in _holders(payload):
        path = None
        for key in ("path", "bunny_path", "storage_path", "file", "url"):
            value = holder.get(key)
            if isinstance(value, str) and value.startswith("bunny://"):
                path = value
                break
        if path is None:
            continue
        url = None
        for key in ("url", "signed_url", "https_url", "public_url", "cdn_url"):
            value = holder.get(key)
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                url = value
                break
        reported = holder.get("size", holder.get("bytes"))
        good_size = isinstance(reported, int) and not isinstance(reported, bool)
        return Upload(path=path, url=url, size=reported if good_size else size, sha256=sha256)
    return None


def parse_error_envelope(body: bytes, *, fallback: str) -> ErrorEnvelope:
    """`{"error": {message, type, code, param}}`, `{"type": "error", "error": {...}}`,
    `{"error": "text"}`, `{"message"|"detail": ...}` or a plain body; `fallback` if empty."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return ErrorEnvelope(text[:_MAX_MESSAGE] or fallback)
    if isinstance(data, str):
        return ErrorEnvelope(data.strip()[:_MAX_MESSAGE] or fallback)
    if not isinstance(data, Mapping):
        return ErrorEnvelope(fallback)
    return _envelope(data, fallback)


def find_error_answer(payload: Mapping[str, Any]) -> ErrorEnvelope | None:
    """The error a 2xx body reports in its error envelope (`{"error": {...}}` with a message
    or a code, or `{"error": "text"}`); None when it reports none."""
    error = payload.get("error")
    if isinstance(error, Mapping):
        if not (error.get("message") or error.get("code")):
            return None
    elif not (isinstance(error, str) and error.strip()):
        return None
    return _envelope(payload, "an error without a message")


def _envelope(data: Mapping[str, Any], fallback: str) -> ErrorEnvelope:
    """An `ErrorEnvelope` from a JSON object (see `parse_error_envelope`)."""
    error = data.get("error")
    holder: Mapping[str, Any] = error if isinstance(error, Mapping) else data
    message = holder.get("message") or holder.get("detail")
    if isinstance(error, str) and error.strip():
        message = error.strip()
    if message is not None and not isinstance(message, str):
        message = json.dumps(message, default=str)  # e.g. a list of validation errors

    def field_(key: str) -> str | None:
        value = holder.get(key)
        if value is None and holder is not data:
            value = data.get(key)
        return None if value is None or isinstance(value, Mapping | list) else str(value)

    kind = field_("type")
    return ErrorEnvelope(
        message=(message or fallback)[:_MAX_MESSAGE],
        code=field_("code"),
        type=None if kind == "error" and holder is data else kind,
        param=field_("param"),
    )


def find_video_url(payload: Mapping[str, Any]) -> str | None:
    """The first http(s) URL under `result`, `output` or `data` that names a video."""
    for key in _CONTAINERS:
        found = _video_url_in(payload.get(key), 0)
        if found:
            return found
    for key, value in payload.items():
        if "video" in key.lower() and _is_http_url(value):
            return str(value)
    return None


def _video_url_in(node: Any, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return None
    if _is_http_url(node):
        return str(node)
    if isinstance(node, list):
        for item in node:
            found = _video_url_in(item, depth + 1)
            if found:
                return found
        return None
    if not isinstance(node, Mapping) or _other_media(node):
        return None
    for key in ("video_url", "url"):
        if _is_http_url(node.get(key)):
            return str(node[key])
    keys = [k for k in node if isinstance(k, str) and not any(s in k.lower() for s in _NOT_VIDEO)]
    for key in keys:
        if "video" in key.lower() and _is_http_url(node[key]):
            return str(node[key])
    # Nested: video-named keys first (`videos[]`), then the rest (`data[]`, `output{}`).
    keys.sort(key=lambda k: "video" not in k.lower())
    for key in keys:
        if isinstance(node[key], Mapping | list):
            found = _video_url_in(node[key], depth + 1)
            if found:
                return found
    return None


def _other_media(node: Mapping[str, Any]) -> bool:
    """True when a file object says it is not a video (`content_type: image/jpeg`...)."""
    for key in ("content_type", "mime_type", "type"):
        value = node.get(key)
        if not isinstance(value, str):
            continue
        word = value.strip().lower()
        if word in ("image", "audio") or word.startswith(_OTHER_MEDIA):
            return True
    return False


def find_expiry(payload: Mapping[str, Any]) -> datetime | None:
    """`expires_at` from the result (or payload), else the video URL's `expires=` query."""
    nodes = [node for key in _CONTAINERS for node in _holders(payload.get(key))]
    for node in [*nodes, payload]:
        for key in ("expires_at", "url_expires_at", "expires"):
            when = parse_time(node.get(key))
            if when is not None:
                return when
    url = find_video_url(payload)
    if url:
        query = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
        for key in _EXPIRES_QUERY:
            when = parse_time(query.get(key))
            if when is not None:
                return when
    return None


def find_error(payload: Mapping[str, Any], *, failed: bool) -> ErrorInfo | None:
    """The job's error: an object `{code, message}`, a string, or a top-level `message`."""
    error = payload.get("error")
    if isinstance(error, Mapping):
        message = error.get("message") or error.get("detail") or error.get("error")
        code, kind = error.get("code"), error.get("type")
        if message or code:
            return ErrorInfo(
                message=str(message or code),
                code=str(code) if code is not None else None,
                type=str(kind) if kind is not None else None,
            )
    elif isinstance(error, str) and error.strip():
        return ErrorInfo(message=error.strip())
    if failed:
        for key in ("message", "failure_reason", "reason", "detail"):
            value = payload.get(key)
            if isinstance(value, str) and value.strip():
                return ErrorInfo(message=value.strip())
        return ErrorInfo(message="job failed without an error message")
    return None


def find_billed_usd(payload: Mapping[str, Any]) -> Decimal | None:
    """Cost reported on the job (`billing.amount_usd`, `cost`, `usage.cost_usd`, ...)."""
    nests = ("billing", "usage", "cost", "result", "data")
    nodes = [payload, *(payload[n] for n in nests if isinstance(payload.get(n), Mapping))]
    for node in nodes:
        # Not `price`: the API's word for a rate per unit (`pricing_rows[].price`).
        for key in ("amount_usd", "cost_usd", "billed_usd", "total_usd", "cost", "amount"):
            value = _decimal(node.get(key))
            if value is not None:
                return value
    return None


TIME_YEARS = (1900, 9000)
"""Years (in UTC) of a time kling-batch records: outside them a time is no job's, and
converting it to UTC or adding a day to it can overflow."""


def sane_time(moment: datetime) -> bool:
    """True for an aware time whose year in UTC lies within TIME_YEARS."""
    if moment.tzinfo is None:
        return False
    try:
        year = moment.astimezone(UTC).year
    except OverflowError:
        return False
    return TIME_YEARS[0] <= year <= TIME_YEARS[1]


def parse_time(value: Any) -> datetime | None:
    """An aware UTC datetime from unix seconds (or ms), a digit string, or ISO 8601."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            return parsed if sane_time(parsed) else None
    if isinstance(value, int | float | Decimal):
        seconds = float(value)
        if seconds > 1e11:  # milliseconds
            seconds /= 1000
        if seconds < 1e9:  # before 2001: a duration, not a timestamp
            return None
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _progress(value: Any) -> float | None:
    """Progress as a 0..1 fraction; a value over 1 is read as a percentage."""
    number = _decimal(value)
    if number is None:
        return None
    fraction = float(number)
    if fraction > 1.0:
        fraction /= 100.0
    return min(1.0, max(0.0, fraction))


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | Decimal):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip().removeprefix("$").strip()
    else:
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _holders(node: Any) -> Iterator[Mapping[str, Any]]:
    """The node itself, its `data` object, or the first object of a `data` list."""
    if not isinstance(node, Mapping):
        if isinstance(node, list) and node and isinstance(node[0], Mapping):
            yield node[0]
        return
    yield node
    data = node.get("data")
    if isinstance(data, Mapping):
        yield data
    elif isinstance(data, list) and data and isinstance(data[0], Mapping):
        yield data[0]


def _is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))
