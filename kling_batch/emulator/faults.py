"""Fault injection: the `--fault SPEC` syntax, its parser, and the seeded plan that applies it.

Syntax: ``KIND=WHEN[,OPTION=VALUE]...``

``WHEN`` is a probability per matching request (``0.1`` or ``10%``), ``firstN`` (the first
N matching requests, deterministic) or ``afterN`` (every matching request after the first
N). Storms take a length in modelled seconds instead.

======================  ==============================================================
``storm=SECONDS``       every matching request gets 429 + ``Retry-After`` for SECONDS
                        (modelled), starting ``at=`` seconds after start (default 0)
``5xx=WHEN``            answer 500, 502 or 503 (seeded pick; ``status=503`` fixes it);
                        ``500=WHEN``, ``502=WHEN``, ``503=WHEN`` are shorthands
``drop=WHEN``           close the connection without any response
``ambiguous=WHEN``      handle the request (a submit creates and bills its job), then
                        close the connection instead of answering; default ``on=submit``
``error-200=WHEN``      answer a submit 200 with the API's error envelope (``code=``,
                        default ``content_moderation``) and no job id; nothing is created
                        or billed; ``on=submit`` only
``truncate=WHEN``       send ``keep=`` (default 0.5) of a download's bytes, then close;
                        with ``length=none`` the download goes without a Content-Length
                        (chunked) and ends cleanly after those bytes, so nothing on the
                        wire tells that it was cut; ``on=download`` only
``swap=WHEN``           serve another, complete video lasting ``seconds=`` (default 3)
                        instead of the job's result; ``length=none`` as for truncate;
                        ``on=download`` only
``fail=WHEN``           the job ends ``failed`` with ``code=`` (default
                        ``content_moderation``); not billed unless
                        ``bill_failed`` (`EmulatorConfig`)
``stall=WHEN``          the job never ends: ``processing`` forever, never billed
``status-word=WHEN``    the job's status reads ``word=`` (default ``rendering``), a word
                        outside the API's vocabulary, in every answer; it renders and
                        bills as usual
``slow=WHEN``           delay the answer by ``delay=`` modelled seconds (default 5)
``revoke=WHEN``         answer 401 ``invalid_api_key`` as if the key had been revoked
                        (``revoke=after3``: the key works for three requests, then never)
======================  ==============================================================

``on=`` picks the requests a fault applies to: ``v1`` (every ``/v1`` request, the default
for all but ``ambiguous`` and ``truncate``), ``submit``, ``poll``, ``list``, ``cancel``,
``upload``, ``models``, ``download`` or ``any``. Examples: ``5xx=0.1``, ``drop=first1,on=poll``,
``storm=30,at=60``, ``slow=0.2,delay=10``, ``fail=0.05``, ``truncate=first1,length=none``,
``error-200=first1``,
``status-word=1,word=finished``, ``revoke=after3``. ``fail``, ``stall`` and ``status-word``
strike jobs as they are created (``on=`` does not apply).
"""

from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass

KINDS = (
    "storm",
    "5xx",
    "drop",
    "ambiguous",
    "error-200",
    "truncate",
    "swap",
    "fail",
    "stall",
    "status-word",
    "slow",
    "revoke",
)
TARGETS = ("v1", "submit", "poll", "list", "cancel", "upload", "models", "download", "any")
_V1_CLASSES = frozenset({"submit", "poll", "list", "cancel", "upload", "models", "v1"})
_DEFAULT_TARGET = {
    "ambiguous": "submit",
    "error-200": "submit",
    "truncate": "download",
    "swap": "download",
}
_DOWNLOAD_KINDS = frozenset({"truncate", "swap"})
JOB_KINDS = frozenset({"fail", "stall", "status-word"})
_STATUS_SHORTHANDS = {"500": 500, "502": 502, "503": 503}
_FIRST = re.compile(r"first(\d+)")
_AFTER = re.compile(r"after(\d+)")
_OPTIONS = ("on", "at", "status", "code", "delay", "keep", "length", "seconds", "word")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")


@dataclass(frozen=True)
class Fault:
    """One injected fault. Build it directly or with `parse_fault`."""

    kind: str
    rate: float = 1.0
    first: int | None = None
    after: int | None = None  # `afterN`: every matching request after the first N
    on: str | None = None
    at: float = 0.0
    length: float = 0.0
    status: int | None = None
    code: str = "content_moderation"
    delay: float = 5.0
    keep: float = 0.5
    declare_length: bool = True  # False: `length=none`, no Content-Length on the download
    seconds: float = 3.0  # swap: the length of the video served instead
    word: str = "rendering"  # status-word: what the job's status reads

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; expected one of {', '.join(KINDS)}"
            )
        if self.on is not None and self.on not in TARGETS:
            raise ValueError(
                f"unknown fault target {self.on!r}; expected one of {', '.join(TARGETS)}"
            )
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate {self.rate} is not within 0..1")
        if self.status is not None and self.status not in (500, 502, 503):
            raise ValueError("a 5xx fault's status must be 500, 502 or 503")
        if not 0.0 <= self.keep < 1.0:
            raise ValueError("truncate keep= must be within 0..1 (exclusive of 1)")
        if self.kind in _DOWNLOAD_KINDS and self.target != "download":
            raise ValueError(f"{self.kind} applies to downloads only")
        if self.kind == "error-200" and self.target != "submit":
            raise ValueError("error-200 applies to submits only")
        if not self.declare_length and self.kind not in _DOWNLOAD_KINDS:
            raise ValueError("length=none applies to truncate and swap only")
        if not 0.5 <= self.seconds <= 60:
            raise ValueError("swap seconds= must be within 0.5..60")
        if not _WORD.fullmatch(self.word):
            raise ValueError("status-word word= must be a word of letters, digits, _ or -")
        if min(self.at, self.length, self.delay) < 0:
            raise ValueError("fault times must not be negative")

    @property
    def target(self) -> str:
        """The request class this fault applies to."""
        return self.on or _DEFAULT_TARGET.get(self.kind, "v1")

    def matches(self, request_class: str) -> bool:
        """Whether a request of `request_class` (see `classify`) is subject to this fault."""
        if self.kind in JOB_KINDS:
            return request_class == "job"
        target = self.target
        if target == "any":
            return True
        if target == "v1":
            return request_class in _V1_CLASSES
        return target == request_class


def parse_fault(spec: str) -> Fault:
    """Parse one ``KIND=WHEN[,OPTION=VALUE]...`` string (see the module docstring)."""
    head, *options = [part.strip() for part in spec.split(",")]
    kind, sep, when = (s.strip() for s in head.partition("="))
    kind = kind.lower()
    if not sep or not when:
        raise ValueError(f"fault {spec!r}: expected KIND=WHEN, e.g. 5xx=0.1")
    status = _STATUS_SHORTHANDS.get(kind)
    if status is not None:
        kind = "5xx"
    rate, first, after, length = 1.0, None, None, 0.0
    if kind == "storm":
        length = _number(spec, "storm length", when)
    elif match := _FIRST.fullmatch(when):
        first = int(match.group(1))
    elif match := _AFTER.fullmatch(when):
        after = int(match.group(1))
    elif when.endswith("%"):
        rate = _number(spec, "rate", when[:-1]) / 100
    else:
        rate = _number(spec, "rate", when)
    opts: dict[str, str] = {}
    for option in options:
        key, sep, value = (s.strip() for s in option.partition("="))
        if not sep or key not in _OPTIONS:
            raise ValueError(
                f"fault {spec!r}: bad option {option!r}; options are {', '.join(_OPTIONS)}"
            )
        opts[key] = value
    try:
        return Fault(
            kind=kind,
            rate=rate,
            first=first,
            after=after,
            length=length,
            on=opts.get("on"),
            code=opts.get("code", "content_moderation"),
            status=int(_number(spec, "status", opts["status"])) if "status" in opts else status,
            at=_number(spec, "at", opts.get("at", "0")),
            delay=_number(spec, "delay", opts.get("delay", "5")),
            keep=_number(spec, "keep", opts.get("keep", "0.5")),
            declare_length=_declared(spec, opts.get("length")),
            seconds=_number(spec, "seconds", opts.get("seconds", "3")),
            word=opts.get("word", "rendering"),
        )
    except ValueError as exc:
        if str(exc).startswith("fault "):
            raise
        raise ValueError(f"fault {spec!r}: {exc}") from None


def _declared(spec: str, value: str | None) -> bool:
    """`length=none` → False (no Content-Length); absent → True."""
    if value is None:
        return True
    if value.lower() == "none":
        return False
    raise ValueError(f"fault {spec!r}: length= takes only none (serve without Content-Length)")


def _number(spec: str, what: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"fault {spec!r}: {what} {text!r} is not a number") from None


def classify(method: str, path: str) -> str:
    """The request class of a method and path, as `on=` names it."""
    if path.startswith("/cdn/"):
        return "download"
    if not path.startswith("/v1/"):
        return "other"
    if path == "/v1/videos/generations":
        return "submit"
    if path == "/v1/files/upload":
        return "upload"
    if path.startswith("/v1/models"):
        return "models"
    if path == "/v1/jobs":
        return "list"
    if path.startswith("/v1/jobs/"):
        return "cancel" if method == "POST" and path.endswith("/cancel") else "poll"
    return "v1"


class FaultPlan:
    """Decides, request by request, which fault strikes; seeded, so runs repeat."""

    def __init__(self, faults: tuple[Fault, ...], seed: int) -> None:
        self._faults = faults
        self._rng = random.Random(seed)
        self._hits: dict[int, int] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._faults)

    def storm_left(self, request_class: str, modelled_elapsed: float) -> float | None:
        """Modelled seconds left in a 429 storm covering this request, or None."""
        left: float | None = None
        for fault in self._faults:
            if fault.kind == "storm" and fault.matches(request_class):
                end = fault.at + fault.length
                if fault.at <= modelled_elapsed < end:
                    left = max(left or 0.0, end - modelled_elapsed)
        return left

    def strike(self, kind: str, request_class: str) -> Fault | None:
        """The first fault of `kind` that strikes this request (each one draws in turn)."""
        hit: Fault | None = None
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.kind != kind or not fault.matches(request_class):
                    continue
                if self._draw(index, fault) and hit is None:
                    hit = fault
        return hit

    def pick_status(self) -> int:
        """A seeded choice among 500, 502 and 503."""
        with self._lock:
            return self._rng.choice((500, 502, 503))

    def job_failure(self) -> Fault | None:
        """The `fail` fault that strikes a newly created job, or None."""
        return self.strike("fail", "job")

    def job_stall(self) -> Fault | None:
        """The `stall` fault that strikes a newly created job, or None."""
        return self.strike("stall", "job")

    def job_status_word(self) -> Fault | None:
        """The `status-word` fault that strikes a newly created job, or None."""
        return self.strike("status-word", "job")

    def _draw(self, index: int, fault: Fault) -> bool:
        if fault.first is not None or fault.after is not None:
            seen = self._hits.get(index, 0)
            self._hits[index] = seen + 1
            return seen < fault.first if fault.first is not None else seen >= (fault.after or 0)
        return self._rng.random() < fault.rate
