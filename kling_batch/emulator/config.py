"""EmulatorConfig and Latency: every knob of the emulator, as frozen data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from kling_batch.emulator.faults import Fault

# "location": a 201/202 whose body names no job (no `job_id`, no `poll_url`); its Location
# header does (`/v1/jobs/{id}`).
PollUrlStyle = Literal["absolute", "relative", "absent", "location"]
UnknownFields = Literal["reject", "ignore"]
# The job list: pages with `last_id` and `after=` ("cursor"), pages that say `has_more` but
# offer no way on ("no-cursor"), or no list at all, 404 ("absent").
JobListStyle = Literal["cursor", "no-cursor", "absent"]

DEFAULT_API_KEY = "sk-empiriolabs-emulator"

_HOUR = 3600.0
_DAY = 24 * _HOUR


@dataclass(frozen=True)
class Latency:
    """How long a job waits and renders, in modelled seconds (before `time_scale`).

    Queue wait is uniform in `queue_seconds`; render time is the billed video seconds times
    the tier's factor. Both get a seeded jitter of ±`jitter` (a fraction).
    """

    queue_seconds: tuple[float, float] = (5.0, 20.0)
    render_factor: Mapping[str, float] = field(
        default_factory=lambda: {"standard": 8.0, "pro": 14.0, "4k": 36.0}
    )
    jitter: float = 0.2

    @classmethod
    def realistic(cls) -> Latency:
        """Minutes of render time, standard < pro < 4k (the default)."""
        return cls()

    @classmethod
    def zero(cls) -> Latency:
        """Every job is completed the moment it is submitted (throughput benchmarks)."""
        return cls(queue_seconds=(0.0, 0.0), render_factor={}, jitter=0.0)


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator can be told.

    Durations are modelled seconds; real seconds are those times `time_scale`, for every
    one of them: latency, retention, URL lifetime, the RPM window, storms, slow answers.
    Headers the client acts on (`Retry-After`) are in real seconds.
    """

    api_key: str = DEFAULT_API_KEY  # the one key accepted (Bearer or x-api-key)
    account: str = "acct_emulator"  # appears in bunny:// paths
    time_scale: float = 1.0  # > 0; 0.01 runs a hundred times faster
    rpm: int = 50  # requests per rate window per account, polls included; 0 = no limit
    credits: Decimal | None = None  # USD balance; None = unlimited
    faults: tuple[Fault, ...] = ()  # see `kling_batch.emulator.faults` for `parse_fault`
    seed: int = 0  # seeds fault draws and latency jitter
    latency: Latency = field(default_factory=Latency)  # Latency.zero() for benchmarks
    submit_status: int = 200  # 200, 201 or 202
    poll_url_style: PollUrlStyle = "absolute"  # or "relative", "absent" (no key), "location"
    unknown_fields: UnknownFields = "reject"  # a 400 naming the field, or "ignore"
    job_list: JobListStyle = "cursor"  # or "no-cursor", or "absent" (GET /v1/jobs is 404)
    large_output_bytes: int | None = None  # pad every result to this size (streamed)
    job_retention_seconds: float = _HOUR  # job state kept after its end, then 404
    url_ttl_seconds: float = 7 * _DAY  # result and upload URLs stop working after this
    # A `bunny://` upload path is refused (400, unknown or expired) this long after upload;
    # the real lifetime is unknown, so clients must upload again when a path is refused.
    upload_ttl_seconds: float = _DAY
    rate_window_seconds: float = 60.0  # the sliding window of `rpm`
    max_image_bytes: int = 10 * 1024 * 1024  # upload limits: 413 above them
    max_video_bytes: int = 200 * 1024 * 1024
    max_audio_bytes: int = 50 * 1024 * 1024
    journal_max_entries: int | None = 200_000  # oldest entries fall off past this
    cancel_route: bool = True  # False: cancelling answers 404, as an API without the route
    # Whether a cancelled or a failed job is billed is unknown: True charges such a job its
    # price, and its answers carry the bill as a completed job's do.
    bill_cancelled: bool = False
    bill_failed: bool = False
    drifted_schema: bool = False  # serve a kling-o3 description unlike schemas/kling-o3.json
    rate_limit_headers: bool = False  # x-ratelimit-limit/remaining-requests on counted answers

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError("time_scale must be > 0 (use Latency.zero() for instant jobs)")
        if self.rpm < 0:
            raise ValueError("rpm must be >= 0 (0 disables the limit)")
        if self.submit_status not in (200, 201, 202):
            raise ValueError("submit_status must be 200, 201 or 202")
        if self.poll_url_style == "location" and self.submit_status == 200:
            raise ValueError("poll_url_style 'location' needs submit_status 201 or 202")
        if self.credits is not None and not isinstance(self.credits, Decimal):
            object.__setattr__(self, "credits", Decimal(str(self.credits)))

    def scaled(self, modelled_seconds: float) -> float:
        """Real seconds for a modelled duration."""
        return modelled_seconds * self.time_scale
