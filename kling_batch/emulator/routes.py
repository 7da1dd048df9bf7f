"""Routes: the Starlette app behind the gateway (the EmpirioLabs endpoints, CDN and introspection).

==========================================  ============================================
``POST /v1/videos/generations``             validate, create a job (200, 201 or 202; with
                                            ``poll_url_style="location"`` the job is named
                                            by ``Location`` only)
``GET  /v1/jobs/{job_id}``                  the job; 404 once dropped (1 h after the end)
``GET  /v1/jobs?status=&limit=&after=``     newest first; limit 25 by default, 100 at most;
                                            ``last_id`` + ``has_more``, ``after=<last_id>``
                                            (or ``starting_after=``) for the next page
``POST /v1/jobs/{job_id}/cancel``           cancel a queued or processing job (not billed
                                            unless ``bill_cancelled=True``); 404 with
                                            ``cancel_route=False``
``POST /v1/files/upload``                   multipart ``file`` → a ``bunny://`` path
``GET  /v1/models``, ``/v1/models/{id}``    the model list; kling-o3's schema file (a
                                            drifted one with ``drifted_schema=True``)
``GET  /livez``                             ``{"status": "ok"}``
``GET  /cdn/{sig}/{job_id}.mp4?expires=``   signed result file (no auth, not rate limited)
``GET  /cdn/{sig}/uploads/{uid}/{name}``    signed uploaded file
``GET  /_emulator/journal?since=N``         journal entries after seq N (no auth)
``GET  /_emulator/ledger``                  charges, holds and credits (no auth)
``POST /_emulator/advance``                 body ``{"seconds": S}``: move the clock S modelled s
==========================================  ============================================

Every ``/v1`` answer is JSON; errors use ``{"error": {"message", "type", "code", "param"}}``.
A submit always answers ``status: "queued"`` (with ``Latency.zero()`` the first poll shows
it completed). ``/_emulator/*`` needs no key, is not rate limited and is not journaled;
``/cdn/*`` needs no key and is journaled with ``counted=False``. Range requests are not
supported (no ``Accept-Ranges``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kling_batch.emulator.clock import iso
from kling_batch.emulator.drift import drifted_model_text
from kling_batch.emulator.errors import ApiError, invalid
from kling_batch.emulator.gateway import CONTEXT_KEY, SWAP_KEY, RequestContext
from kling_batch.emulator.jobs import STATUSES, Job
from kling_batch.emulator.media import padded_size, render_mp4, stream_output
from kling_batch.emulator.signing import expires_text
from kling_batch.emulator.validation import validate_submission
from kling_batch.model_data import MODEL_ID, model_json_text, model_schema

if TYPE_CHECKING:
    from kling_batch.emulator.app import Emulator

_LIST_DEFAULT, _LIST_MAX = 25, 100
_UPLOAD_CHUNK = 1 << 20
_HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}


def make_app(emulator: Emulator) -> Starlette:
    """The routes app for one emulator."""
    routes = _Routes(emulator)
    return Starlette(
        routes=[
            Route("/v1/videos/generations", routes.submit, methods=["POST"]),
            Route("/v1/jobs", routes.list_jobs, methods=["GET"]),
            Route("/v1/jobs/{job_id}", routes.poll, methods=["GET"]),
            Route("/v1/jobs/{job_id}/cancel", routes.cancel, methods=["POST"]),
            Route("/v1/files/upload", routes.upload, methods=["POST"]),
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/models/{model_id}", routes.model, methods=["GET"]),
            Route("/livez", routes.livez, methods=["GET"]),
            Route("/cdn/{signature}/{rest:path}", routes.cdn, methods=["GET"]),
            Route("/_emulator/journal", routes.journal, methods=["GET"]),
            Route("/_emulator/ledger", routes.ledger, methods=["GET"]),
            Route("/_emulator/advance", routes.advance, methods=["POST"]),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    error = ApiError(exc.status_code, code, str(exc.detail))
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


def _number(value: Decimal) -> int | float:
    """A Decimal as the JSON number it prints as (5, not 5.0)."""
    return int(value) if value == value.to_integral_value() else float(value)


def _context(request: Request) -> RequestContext:
    context = request.scope.get(CONTEXT_KEY)
    if not isinstance(context, RequestContext):
        raise ApiError(401, "missing_api_key", "No API key.")
    return context


class _Routes:
    """Endpoint functions bound to one emulator's state."""

    def __init__(self, emulator: Emulator) -> None:
        self.emu = emulator
        self.config = emulator.config

    # -- videos and jobs ---------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        context = _context(request)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise invalid("The request body is not valid JSON.", None) from None
        submission = validate_submission(
            body, self.emu.uploads.get, reject_unknown=self.config.unknown_fields == "reject"
        )
        now = self.emu.clock.now()
        job = self.emu.jobs.create(submission, now)
        context.job_id = job.id
        payload: dict[str, Any] = {
            "job_id": job.id,
            "status": "queued",
            "created_at": iso(self.emu.clock.wall(job.created)),
        }
        if self.config.poll_url_style == "absolute":
            payload["poll_url"] = f"{_base(request)}/v1/jobs/{job.id}"
        elif self.config.poll_url_style == "relative":
            payload["poll_url"] = f"/v1/jobs/{job.id}"
        elif self.config.poll_url_style == "location":
            del payload["job_id"]  # named by the Location header alone
            headers = {"Location": f"/v1/jobs/{job.id}"}
            return JSONResponse(payload, status_code=self.config.submit_status, headers=headers)
        return JSONResponse(payload, status_code=self.config.submit_status)

    async def poll(self, request: Request) -> Response:
        now = self.emu.clock.now()
        job = self.emu.jobs.get(request.path_params["job_id"], now)
        if job is None:
            raise _job_not_found(request.path_params["job_id"])
        return JSONResponse(self._job_json(job, now, _base(request)))

    async def list_jobs(self, request: Request) -> Response:
        style = self.config.job_list
        if style == "absent":
            raise ApiError(404, "not_found", "Not Found")
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            raise invalid(f"'status' must be one of {', '.join(STATUSES)}.", "status")
        raw_limit = request.query_params.get("limit") or str(_LIST_DEFAULT)
        try:
            limit = int(raw_limit)
        except ValueError:
            raise invalid("'limit' must be an integer.", "limit") from None
        if not 1 <= limit <= _LIST_MAX:
            raise invalid(f"'limit' must be within 1–{_LIST_MAX}.", "limit")
        query = request.query_params
        after = (query.get("after") or query.get("starting_after")) if style == "cursor" else None
        now = self.emu.clock.now()
        listed = self.emu.jobs.recent(now, status=status, limit=limit, after=after or None)
        if listed is None:
            raise invalid(f"No job {after!r} to list after (it may have expired).", "after")
        jobs, more = listed
        base = _base(request)
        data = [self._job_json(job, now, base) for job in jobs]
        payload: dict[str, Any] = {"object": "list", "data": data, "has_more": more}
        if style == "cursor":
            payload["first_id"] = jobs[0].id if jobs else None
            payload["last_id"] = jobs[-1].id if jobs else None
        return JSONResponse(payload)

    async def cancel(self, request: Request) -> Response:
        if not self.config.cancel_route:  # as an API that does not offer it: no such route
            raise ApiError(404, "not_found", "Not Found")
        now = self.emu.clock.now()
        job = self.emu.jobs.cancel(request.path_params["job_id"], now)
        if job is None:
            raise _job_not_found(request.path_params["job_id"])
        return JSONResponse(self._job_json(job, now, _base(request)))

    def _job_json(self, job: Job, now: float, base: str) -> dict[str, Any]:
        view = job.view(now)
        wall = self.emu.clock.wall
        result: dict[str, Any] | None = None
        billing: dict[str, Any] | None = None
        if view.status == "completed":
            expires = expires_text(self.emu.jobs.expires_wall(job))
            path = f"{job.id}.mp4"
            url = f"{base}/cdn/{self.emu.signer.sign(path, expires)}/{path}?expires={expires}"
            result = {
                "video_url": url,
                "data": [{"url": url, "content_type": "video/mp4"}],
                "duration": _number(job.submission.seconds),
                "expires_at": iso(float(expires)),
            }
        if self.emu.jobs.billed(job, now):
            billing = {
                "amount_usd": _number(job.amount),
                "seconds": _number(job.submission.seconds),
                "rate_usd_per_s": _number(job.row.rate),
                "label": job.row.label,
            }
        payload: dict[str, Any] = {
            "job_id": job.id,
            "object": "job",
            "model": job.model,
            "status": job.status_word or view.status,
            "progress": view.progress,
            "created_at": iso(wall(job.created)),
            "completed_at": iso(wall(view.ended)) if view.ended is not None else None,
            "result": result,
            "error": job.error() if view.status == "failed" else None,
            "request": job.submission.request,
        }
        if billing is not None:
            payload["billing"] = billing
        return payload

    # -- uploads ----------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        context = _context(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise invalid("Send multipart/form-data with the file in field 'file'.", "file")
        async with request.form(max_files=1, max_fields=16) as form:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise invalid("Missing multipart file field 'file'.", "file")
            upload = await self.emu.uploads.save(
                context.account,
                part.filename or "upload",
                part.content_type,
                _chunks(part),
            )
        now = self.emu.clock.now()
        expires = expires_text(
            self.emu.clock.wall(now) + self.config.scaled(self.config.url_ttl_seconds)
        )
        path = f"uploads/{upload.uid}/{upload.filename}"
        url = f"{_base(request)}/cdn/{self.emu.signer.sign(path, expires)}/{path}?expires={expires}"
        return JSONResponse(
            {
                "path": upload.path,
                "url": url,
                "size": upload.size,
                "content_type": upload.content_type,
            }
        )

    # -- models and health --------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        schema = model_schema()
        keys = ("id", "object", "display_name", "owned_by", "category", "description")
        entry = {key: schema[key] for key in keys}
        return JSONResponse({"object": "list", "data": [entry]})

    async def model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        if model_id != MODEL_ID:
            raise ApiError(
                404, "model_not_found", f"The model {model_id!r} does not exist.", param="model"
            )
        text = drifted_model_text() if self.config.drifted_schema else model_json_text()
        return Response(text, media_type="application/json")

    async def livez(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    # -- CDN --------------------------------------------------------------------------

    async def cdn(self, request: Request) -> Response:
        rest = request.path_params["rest"]
        expires = request.query_params.get("expires", "")
        if not expires or not self.emu.signer.verify(
            rest, expires, request.path_params["signature"]
        ):
            raise ApiError(403, "invalid_signature", "The URL signature is not valid.")
        try:
            deadline = float(expires)
        except ValueError:
            raise ApiError(403, "invalid_signature", "The URL signature is not valid.") from None
        if deadline <= self.emu.clock.wall(self.emu.clock.now()):
            raise ApiError(403, "url_expired", "The signed URL has expired.")
        if rest.startswith("uploads/"):
            upload = self.emu.uploads.by_uid(rest.split("/")[1])
            if upload is None:
                raise ApiError(404, "not_found", "No such file.")
            return FileResponse(upload.file, media_type=upload.content_type)
        output = self.emu.jobs.output(rest.removesuffix(".mp4"))
        if output is None:
            raise ApiError(404, "not_found", "No such file.")
        swap = request.scope.get(SWAP_KEY)  # a `swap` fault: another video of this length
        seconds = output.seconds if swap is None else Decimal(str(swap))
        mp4 = render_mp4(output.aspect, seconds)
        total = padded_size(len(mp4), self.config.large_output_bytes)
        if total == len(mp4):
            return Response(mp4, media_type="video/mp4")
        return StreamingResponse(
            stream_output(mp4, total),
            media_type="video/mp4",
            headers={"content-length": str(total)},
        )

    # -- introspection ----------------------------------------------------------------

    async def journal(self, request: Request) -> Response:
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            raise invalid("'since' must be an integer.", "since") from None
        entries = self.emu.journal.entries(since=since)
        return JSONResponse({"object": "list", "data": [e.to_json() for e in entries]})

    async def ledger(self, request: Request) -> Response:
        return JSONResponse(self.emu.ledger.to_json())

    async def advance(self, request: Request) -> Response:
        try:
            seconds = float(json.loads(await request.body())["seconds"])
        except (ValueError, KeyError, TypeError):
            raise invalid('Send {"seconds": <modelled seconds>}.', "seconds") from None
        if seconds < 0:
            raise invalid("The clock only moves forward.", "seconds")
        self.emu.advance(seconds)
        return JSONResponse({"advanced_seconds": seconds})


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _job_not_found(job_id: str) -> ApiError:
    return ApiError(
        404, "job_not_found", f"No job {job_id!r} (jobs are kept 1 hour after they end)."
    )


async def _chunks(part: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await part.read(_UPLOAD_CHUNK):
        yield chunk
