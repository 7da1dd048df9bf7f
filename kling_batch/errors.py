"""Every exception kling-batch raises on purpose, and the exit code each maps to.

    KlingBatchError                 base; the CLI maps `exit_code` to the process status
     ├── UserError                  exit 2: a manifest, lockfile or usage mistake; names
     │                              file, shot and field
     ├── RefusedError               exit 3: over budget, not confirmed, no --yes off a TTY
     └── RunError                   exit 1: a runtime failure outside any one shot
          ├── LockWriteError        the lockfile cannot be written: the run stops
          ├── RemoteError           the team's shared store failed (unreachable, refused,
          │                         not set up); translated once in `remote`, credentials
          │                         never in its message
          └── ApiError              an API call failed, classified once by the client;
               │                    `.retryable` says if trying later may help
               ├── RetryableError   transient; raised only once every attempt is spent
               │    ├── RateLimited        429
               │    ├── ServerError        5xx (except 501, 505), 408
               │    ├── ConnectionFailed   no answer (requests safe to repeat)
               │    ├── BadResponse        a 2xx without what was asked for
               │    └── TruncatedDownload  a download cut short or of the wrong size
               ├── RunFatal         stop submitting for the whole run
               │    ├── AuthError          401 / 403 on the API
               │    │    └── KeyRefused    not sent: the key was refused (401) earlier
               │    └── CreditsError       402: out of credits
               ├── ShotRejected     400, 404, 422, other 4xx: this request never succeeds
               ├── JobNotFound      404 on a job: unknown id or its state expired
               ├── ResultExpired    401/403/404/410 on a result URL
               ├── AmbiguousSubmit  a submit may have created (and billed) a job
               │    └── AnsweredWithError  a 2xx reporting an error and no job id:
               │                           the run stops submitting
               └── SubmitWithdrawn  not sent: the run stopped before the submit went out

    Problem                         a value-level complaint inside one layer, turned into a
     │                              UserError (or a render's failure) by its caller
     ├── TemplateProblem            a template failed to compile or render
     ├── TemplateLimit              a template went over a cap (size, time, numbers)
     ├── AssetProblem               a media reference that cannot be used
     ├── RequestRuleError           a cross-field rule of the model card is broken
     ├── BadOutput                  a downloaded or copied file is not the render
     ├── PosterError                a video whose frame cannot be read (review)
     ├── MalformedResponse          a 2xx the client could not use (classified at once)
     │    └── ErrorAnswer           a 2xx whose body reports an error instead
     ├── UploadFailed               an input file could not be uploaded
     └── TryLater                   the API could not be asked now; stay resumable

`validation_error` is the one place a pydantic `ValidationError` becomes a `UserError`.
The emulator keeps its own small tree (`kling_batch.emulator.errors`): it models the
server, not this client.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError


class KlingBatchError(Exception):
    """Base of every error kling-batch raises on purpose."""

    exit_code = 1


class UserError(KlingBatchError):
    """Invalid input: the message names the file, the shot and the field."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        shot: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.shot = shot
        self.field = field
        self.line = line

    def __str__(self) -> str:
        where: list[str] = []
        if self.file:
            where.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.shot:
            where.append(f"shot {self.shot!r}")
        if self.field:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class RefusedError(KlingBatchError):
    """The run was refused before spending: over budget or not confirmed."""

    exit_code = 3


class RunError(KlingBatchError):
    """A runtime failure that is not the user's input (network, API, disk)."""

    exit_code = 1


class LockWriteError(RunError):
    """The lockfile could not be written; nothing more can be recorded, so the run stops."""


class RemoteError(RunError):
    """The shared render store failed; the message names the store, never a credential."""


# -- the API ------------------------------------------------------------------------------


class ApiError(RunError):
    """A failed API call, classified; never contains the API key."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.type = type
        self.retry_after = retry_after
        self.attempts = 1

    def __str__(self) -> str:
        said = self.status is None or self.message.startswith(f"HTTP {self.status}")
        details = [] if said else [f"HTTP {self.status}"]
        details += [f"{k} {v}" for k, v in (("code", self.code), ("param", self.param)) if v]
        return f"{self.message} ({', '.join(details)})" if details else self.message


class RetryableError(ApiError):
    """A transient failure that outlasted every retry; trying again later may succeed."""

    retryable = True


class RateLimited(RetryableError):
    """429: the account's request rate was exceeded."""


class ServerError(RetryableError):
    """5xx or 408: the server failed and said so (a definite answer, nothing was created)."""


class ConnectionFailed(RetryableError):
    """No answer came back: connect, read or timeout failure on a request safe to repeat."""


class BadResponse(RetryableError):
    """A 2xx whose body was unreadable or lacked what was asked for (safe requests only)."""


class TruncatedDownload(RetryableError):
    """A download ended early or its size did not match Content-Length."""


class RunFatal(ApiError):
    """Nothing will succeed for the rest of the run: stop submitting."""


class AuthError(RunFatal):
    """401/403: the API key is missing, invalid or not allowed."""


class KeyRefused(AuthError):
    """Not sent: the API answered 401 to this client's key earlier, so nothing more goes out."""


class CreditsError(RunFatal):
    """402: the account is out of credits."""


class ShotRejected(ApiError):
    """The API refused this request (400, 404, 422, other 4xx): fail the render with its message."""


class JobNotFound(ApiError):
    """404 on a job: the id is unknown or its state expired (kept one hour after completion)."""


class ResultExpired(ApiError):
    """The result URL answered 401/403/404/410: the signed URL expired or was revoked."""


class AmbiguousSubmit(ApiError):
    """A submit may have created (and billed) a job but no job id came back: record `uncertain`."""


class AnsweredWithError(AmbiguousSubmit):
    """A 2xx submit answer reporting an error and no job id: uncertain, and submitting stops."""


class SubmitWithdrawn(ApiError):
    """Not sent: the run stopped submitting (Ctrl-C) before this submit went out."""


# -- problems inside one layer ------------------------------------------------------------


class Problem(Exception):
    """A complaint its caller turns into a `UserError` or a render's failure."""


class TemplateProblem(Problem):
    """A template failed to compile or render at `line` of its text (or of `partial`)."""

    def __init__(self, message: str, line: int | None, partial: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.partial = partial


class TemplateLimit(Problem):
    """A template went over one of the caps; the message says which."""


class AssetProblem(Problem):
    """A media reference that cannot be used; the message says why."""


class RequestRuleError(Problem):
    """A cross-field rule of the model card is broken; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class BadOutput(Problem):
    """A downloaded or copied file is not the expected render; it is never moved into place."""


class PosterError(Problem):
    """A video whose frame cannot be read; the message says which and why."""


class MalformedResponse(Problem):
    """A 2xx response the client could not use; the client classifies it at once."""


class ErrorAnswer(MalformedResponse):
    """A 2xx whose body reports an error (code and type kept) where the answer should be."""

    def __init__(self, message: str, *, code: str | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.type = type


class UploadFailed(Problem):
    """An input file could not be uploaded; the render fails, nothing was submitted."""


class TryLater(Problem):
    """The API could not be asked right now; the render stays resumable."""


# -- pydantic -----------------------------------------------------------------------------

Loc = list[str | int]


def validation_error(
    exc: ValidationError,
    *,
    file: Path | str,
    shot: str | None = None,
    split: Callable[[Loc], tuple[str | None, Loc]] | None = None,
    known_keys: Callable[[Loc], Sequence[str]] | None = None,
    line: Callable[[str | None, Loc], int | None] | None = None,
    template: str = "{}",
) -> UserError:
    """Pydantic's most telling complaint as one `UserError` line.

    `split` takes the shot out of an error's location (returning the shot and the field's
    location), `known_keys` lists the keys valid beside an unknown one (for a "did you mean"
    hint), `line` guesses the line in `file`, and `template` frames the message.
    """
    error = _most_specific(exc.errors())
    loc: Loc = [part for part in error["loc"] if not _is_union_branch(part)]
    field_loc = loc
    if split is not None:
        shot, field_loc = split(loc)
    message = _clean_message(error)
    if error["type"] == "extra_forbidden" and field_loc and known_keys is not None:
        key = str(field_loc[-1])
        message = f"unknown key {key!r}" + _did_you_mean(key, known_keys(loc))
    where = line(str(field_loc[-1]) if field_loc else None, loc) if line is not None else None
    return UserError(
        template.format(message),
        file=file,
        shot=shot,
        field=".".join(str(part) for part in field_loc) or None,
        line=where,
    )


def _most_specific(errors: list[Any]) -> Any:
    # Union types report one error per branch; the literal branch names the allowed values.
    for error in errors:
        if error["type"] in {"literal_error", "extra_forbidden", "missing"}:
            return error
    return errors[0]


def _is_union_branch(part: Any) -> bool:
    return isinstance(part, str) and (
        part.startswith(("literal[", "function-", "constrained-", "list[", "dict["))
        or part in {"str", "int", "float", "bool", "decimal"}
    )


def _clean_message(error: Any) -> str:
    message = str(error["msg"])
    if error["type"] == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return f"invalid value {error['input']!r}; expected {allowed}"
    if error["type"] == "missing":
        return "required key is missing"
    if error["type"] == "value_error":  # our own validators' messages say it all
        return str(error.get("ctx", {}).get("error", message))
    if "input" in error and error["type"] != "extra_forbidden":
        return f"{message} (got {error['input']!r})"
    return message


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
