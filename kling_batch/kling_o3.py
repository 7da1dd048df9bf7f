"""The kling-o3 request: a pydantic mirror of the model card, scene parsing and workflow rules.

`schemas/kling-o3.json` holds the same parameters as data; a test keeps the two in step.

One scene grammar serves pricing and sending: a prompt splits into scenes at `|` and at
every line break (LF, CR, CRLF, U+0085, U+2028, U+2029, VT, FF and the other separators
Python's `str.splitlines` knows), each optionally prefixed `Ns:` with N a whole number of
seconds 3–15. The request sent carries the prompt in its canonical form (scenes joined by
LF, prefixes written `5s: text`), and only the fields its resolved workflow uses, so any
reader of the documented form reads exactly what was priced.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kling_batch.canonical import canonical_json, fingerprint_of, sha256_text
from kling_batch.errors import RequestRuleError

MODEL_ID = "kling-o3"
MAX_SCENES = 6
MIN_SECONDS = 3
MAX_SECONDS = 15
VIDEO_INPUT_CAP_SECONDS = 10

Tier = Literal["standard", "pro", "4k"]
Workflow = Literal["auto", "t2v", "i2v", "video_edit", "reference"]
ResolvedWorkflow = Literal["t2v", "i2v", "video_edit", "reference"]
AspectRatio = Literal["16:9", "1:1", "9:16"]

MEDIA_FIELDS = ("image", "image_end", "video")
MEDIA_LIST_FIELDS = ("reference_images", "reference_videos")
VIDEO_FIELDS = frozenset({"video", "reference_videos"})

_SCENE_SPLIT = re.compile("\r\n|[|\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_SCENE_PREFIX = re.compile(r"(\d+)s:\s*")
_MOST_DIGITS = 3  # a length written with more digits is out of range whatever it says
# Anything a person may have meant as a length prefix: `4.5s:`, `10S :`, `10 s:`, `4,5s:`.
_LOOSE_PREFIX = re.compile(r"(\d+(?:[.,]\d+)?)\s*s\s*:", re.IGNORECASE)
# The fields each resolved workflow reads; the rest are not sent (a warning names them).
WORKFLOW_FIELDS: dict[str, frozenset[str]] = {
    "t2v": frozenset(),
    "i2v": frozenset({"image", "image_end"}),
    "video_edit": frozenset({"video", "keep_original_sound"}),
    "reference": frozenset({"reference_images", "reference_videos"}),
}
_OPTIONAL_FIELDS = frozenset().union(*WORKFLOW_FIELDS.values())


class KlingO3Request(BaseModel):
    """One request body for `POST /v1/videos/generations` with `model = "kling-o3"`.

    Media fields hold what the manifest gave (a local path, `https://` or `bunny://`);
    the executor swaps local paths for upload paths before sending.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    model: Literal["kling-o3"] = "kling-o3"
    prompt: str = Field(min_length=1)
    model_tier: Tier = "pro"
    workflow: Workflow = "auto"
    aspect_ratio: AspectRatio = "16:9"
    duration: int = Field(default=5, ge=MIN_SECONDS, le=MAX_SECONDS)
    sound: bool = True
    keep_original_sound: bool = True
    image: str | None = None
    image_end: str | None = None
    video: str | None = None
    reference_images: list[str] | None = None
    reference_videos: list[str] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is empty")
        return value

    @field_validator("duration", mode="before")
    @classmethod
    def _whole_seconds(cls, value: Any) -> Any:
        if isinstance(value, float | Decimal) and not isinstance(value, bool):
            if not math.isfinite(value) or abs(value) > 10**_MOST_DIGITS:
                raise ValueError(
                    f"duration {value} is not {MIN_SECONDS}-{MAX_SECONDS} whole seconds"
                )
            if value != int(value):
                raise ValueError(_not_whole(f"duration {value}", value))
            return int(value)
        return value

    @field_validator("reference_images", "reference_videos", mode="before")
    @classmethod
    def _split_comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and any(isinstance(v, str) and "," in v for v in value):
            raise ValueError("an item contains a comma; the API receives the list comma-separated")
        return value


@dataclass(frozen=True, slots=True)
class Scene:
    """One scene of a prompt: its text and its `Ns:` length, when given."""

    text: str
    seconds: int | None

    def __str__(self) -> str:
        return f"{self.seconds}s: {self.text}" if self.seconds is not None else self.text


def parse_scenes(prompt: str) -> list[Scene]:
    """Split a prompt into scenes (see the module docstring), reading `Ns:` prefixes.

    Raises `RequestRuleError` for more than six scenes, a length outside 3–15 s, a
    fractional length, or a prefix not written `Ns:` (such as `10 s:` or `10S:`).
    """
    parts = [part.strip() for part in _SCENE_SPLIT.split(prompt)]
    scenes = [_scene(part, number) for number, part in enumerate(filter(None, parts), 1)]
    if not scenes:
        raise RequestRuleError("prompt", "prompt is empty")
    if len(scenes) > MAX_SCENES:
        raise RequestRuleError(
            "prompt", f"prompt has {len(scenes)} scenes; kling-o3 allows at most {MAX_SCENES}"
        )
    return scenes


def _scene(part: str, number: int) -> Scene:
    """One scene's text and length; refuses a malformed or out-of-range prefix."""
    loose = _LOOSE_PREFIX.match(part)
    if loose is None:
        return Scene(part, None)
    strict = _SCENE_PREFIX.match(part)
    written = part[: loose.end()]
    if len(loose.group(1).replace(",", ".").partition(".")[0]) > _MOST_DIGITS:
        # Never turned into a number: a 5,000-digit one would not even print.
        shown = written if len(written) <= 20 else written[:17] + "..."
        raise RequestRuleError(
            "prompt",
            f"scene {number} starts {shown!r}; scenes must be {MIN_SECONDS}-{MAX_SECONDS}s",
        )
    if strict is None or strict.end() < loose.end():
        value = Decimal(loose.group(1).replace(",", "."))
        if value != int(value):
            raise RequestRuleError("prompt", _not_whole(f"scene {number} lasts {value}s", value))
        raise RequestRuleError(
            "prompt", f"scene {number} starts {written!r}; write its length as '{int(value)}s:'"
        )
    seconds = int(strict.group(1))
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise RequestRuleError(
            "prompt",
            f"scene {number} is {seconds}s; scenes must be {MIN_SECONDS}-{MAX_SECONDS}s",
        )
    text = part[strict.end() :].strip()
    if not text:
        raise RequestRuleError("prompt", f"scene {number} has a length but no text")
    return Scene(text, seconds)


def _not_whole(what: str, value: Decimal | float) -> str:
    """`<what>; kling-o3 takes whole seconds 3–15: use 7 or 8`."""
    low, high = max(int(value), MIN_SECONDS), min(int(value) + 1, MAX_SECONDS)
    nearest = f"{low} or {high}" if low != high else str(low)
    return f"{what}: kling-o3 takes whole seconds {MIN_SECONDS}-{MAX_SECONDS}; use {nearest}"


def canonical_prompt(prompt: str) -> str:
    """The prompt as sent: its scenes joined by LF, each written `Ns: text` or `text`."""
    return _joined(parse_scenes(prompt))


def _joined(scenes: Iterable[Scene]) -> str:
    return "\n".join(str(scene) for scene in scenes)


def resolve_workflow(request: KlingO3Request) -> ResolvedWorkflow:
    """The workflow `auto` stands for, given the inputs; an explicit one is kept."""
    if request.workflow != "auto":
        return request.workflow
    if request.video:
        return "video_edit"
    if request.reference_images or request.reference_videos:
        return "reference"
    if request.image:
        return "i2v"
    return "t2v"


def has_video_input(request: KlingO3Request, workflow: ResolvedWorkflow) -> bool:
    """True when the render takes a video in: video_edit, or reference with videos."""
    if workflow == "video_edit":
        return True
    return workflow == "reference" and bool(request.reference_videos)


def check_rules(request: KlingO3Request, workflow: ResolvedWorkflow) -> list[str]:
    """Enforce the model card's cross-field rules; return the warnings it only infers.

    Raises `RequestRuleError` for an error; returns warning texts otherwise.
    """
    if workflow == "i2v" and not request.image:
        raise RequestRuleError("image", "workflow i2v needs an image")
    if request.image_end and not request.image:
        raise RequestRuleError("image_end", "image_end needs an image (the first frame)")
    if workflow == "video_edit" and not request.video:
        raise RequestRuleError("video", "workflow video_edit needs a video")
    if workflow == "reference" and not (request.reference_images or request.reference_videos):
        raise RequestRuleError(
            "reference_images", "workflow reference needs reference_images or reference_videos"
        )
    if request.model_tier == "4k":
        if workflow == "video_edit":
            raise RequestRuleError("model_tier", "4k takes no video input; use standard or pro")
        if workflow == "reference" and request.reference_videos:  # only sent for reference
            raise RequestRuleError(
                "model_tier", "4k takes no video input (reference_videos); use standard or pro"
            )
    warnings = [_ignored_warning(name, workflow) for name in ignored_inputs(request, workflow)]
    if request.reference_images and len(request.reference_images) > _max_reference_images(request):
        warnings.append(
            f"{len(request.reference_images)} reference images; kling-o3 is believed to accept "
            f"at most {_max_reference_images(request)} (inferred limit)"
        )
    return warnings


def _ignored_warning(name: str, workflow: ResolvedWorkflow) -> str:
    if name == "keep_original_sound":
        return "keep_original_sound only applies to video_edit; it is not sent"
    if name == "duration":
        return "duration is not used by video_edit (it lasts as long as its source clip); not sent"
    return f"{name} is not used by workflow {workflow}; it is not sent"


def _max_reference_images(request: KlingO3Request) -> int:
    # Inferred from other hosts of the same model (API reference §7): 7 without a video, 4 with.
    return 4 if request.reference_videos or request.video else 7


def scene_seconds(scenes: list[Scene], duration: int) -> Decimal:
    """Total length: each scene's `Ns:` prefix, else the per-scene `duration`."""
    return Decimal(
        sum(scene.seconds if scene.seconds is not None else duration for scene in scenes)
    )


def wire_request(
    request: KlingO3Request, workflow: ResolvedWorkflow, scenes: Sequence[Scene] | None = None
) -> dict[str, Any]:
    """The request as sent: `auto` resolved, every field the workflow reads made explicit.

    Defaults are written out so an explicit default and an implicit one fingerprint alike,
    and so what was priced is what renders even if the API's defaults move. Inputs the
    workflow ignores are left out (`ignored_inputs` names them for a warning). `scenes`:
    the prompt's, when the caller parsed them already (`canonical_prompt` otherwise).
    """
    prompt = _joined(scenes) if scenes is not None else canonical_prompt(request.prompt)
    body: dict[str, Any] = {
        "model": request.model,
        "prompt": prompt,
        "model_tier": request.model_tier,
        "workflow": workflow,
        "aspect_ratio": request.aspect_ratio,
        "duration": request.duration,
        "sound": request.sound,
        "keep_original_sound": request.keep_original_sound,
    }
    for name in MEDIA_FIELDS:
        body[name] = getattr(request, name)
    for name in MEDIA_LIST_FIELDS:
        values = getattr(request, name)
        body[name] = ",".join(values) if values else None
    return workflow_body(body)


def workflow_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` with only what its workflow reads: optional inputs of other workflows, empty
    fields, and the `duration` of a video_edit (its length is the source clip's) dropped."""
    workflow = str(body.get("workflow", ""))
    kept = WORKFLOW_FIELDS.get(workflow, _OPTIONAL_FIELDS)
    return {
        key: value
        for key, value in body.items()
        if value is not None
        and (key not in _OPTIONAL_FIELDS or key in kept)
        and not (key == "duration" and workflow == "video_edit")
    }


def ignored_inputs(request: KlingO3Request, workflow: ResolvedWorkflow) -> list[str]:
    """The inputs given that `workflow` does not read (they are not sent)."""
    given = [
        name
        for name in (*MEDIA_FIELDS, *MEDIA_LIST_FIELDS)
        if getattr(request, name) and name not in WORKFLOW_FIELDS[workflow]
    ]
    if workflow != "video_edit" and "keep_original_sound" in request.model_fields_set:
        given.append("keep_original_sound")
    if workflow == "video_edit" and "duration" in request.model_fields_set:
        given.append("duration")
    return given


def request_fingerprint(body: Mapping[str, Any], media: Mapping[str, str], take: int) -> str:
    """What identifies a render: the model, the request with each local input replaced by
    its content hash (`media`: `image` → `sha256:…`, `reference_images.1` → …), the take."""
    request = with_media(body, {key: value for key, value in media.items() if _sent(key, body)})
    return fingerprint_of({"model": MODEL_ID, "request": request, "take": take})


def _sent(key: str, body: Mapping[str, Any]) -> bool:
    return key.partition(".")[0] in body


def with_media(body: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """`body` with media references replaced: keys are `image`, `video`, ... for single
    fields and `reference_images.0`, `reference_videos.1`, ... for items of list fields."""
    replaced = dict(body)
    for key, value in values.items():
        name, _, index = key.partition(".")
        if not index:
            replaced[name] = value
            continue
        items = replaced[name].split(",")
        items[int(index)] = value
        replaced[name] = ",".join(items)
    return replaced


def sent_digest(body: Mapping[str, Any]) -> str:
    """`sha256:` of a request body as the job list compares it (`comparable`)."""
    return sha256_text(comparable(body))


def comparable(request: Mapping[str, Any]) -> str:
    """Canonical text of a listed job's request; list fields compared comma-joined."""
    normal = {
        key: ",".join(value) if isinstance(value, list) else value for key, value in request.items()
    }
    return canonical_json(normal)
