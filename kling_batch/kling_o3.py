"""The kling-o3 request: a pydantic mirror of the model card, scene parsing and workflow rules.

`schemas/kling-o3.json` holds the same parameters as data; a test keeps the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

_SCENE_SPLIT = re.compile(r"\||\r?\n")
_SCENE_PREFIX = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*s\s*:\s*", re.IGNORECASE)


class KlingO3Request(BaseModel):
    """One request body for `POST /v1/videos/generations` with `model = "kling-o3"`.

    Media fields hold what the manifest gave (a local path, `https://` or `bunny://`);
    the executor swaps local paths for upload paths before sending.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["kling-o3"] = "kling-o3"
    prompt: str = Field(min_length=1)
    model_tier: Tier = "pro"
    workflow: Workflow = "auto"
    aspect_ratio: AspectRatio = "16:9"
    duration: int | float = Field(default=5, ge=MIN_SECONDS, le=MAX_SECONDS)
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

    @field_validator("duration")
    @classmethod
    def _whole_when_possible(cls, value: int | float) -> int | float:
        return int(value) if float(value).is_integer() else value

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
    seconds: Decimal | None


def parse_scenes(prompt: str) -> list[Scene]:
    """Split a prompt into scenes on `|` or newlines, reading optional `Ns:` prefixes.

    Raises `RequestRuleError` for more than six scenes or a prefix outside 3–15 s.
    """
    parts = [part.strip() for part in _SCENE_SPLIT.split(prompt)]
    scenes: list[Scene] = []
    for part in filter(None, parts):
        match = _SCENE_PREFIX.match(part)
        if match is None:
            scenes.append(Scene(part, None))
            continue
        seconds = Decimal(match.group(1))
        if not MIN_SECONDS <= seconds <= MAX_SECONDS:
            raise RequestRuleError(
                "prompt",
                f"scene {len(scenes) + 1} is {seconds}s; scenes must be "
                f"{MIN_SECONDS}-{MAX_SECONDS}s",
            )
        text = part[match.end() :].strip()
        if not text:
            raise RequestRuleError("prompt", f"scene {len(scenes) + 1} has a length but no text")
        scenes.append(Scene(text, seconds))
    if not scenes:
        raise RequestRuleError("prompt", "prompt is empty")
    if len(scenes) > MAX_SCENES:
        raise RequestRuleError(
            "prompt", f"prompt has {len(scenes)} scenes; kling-o3 allows at most {MAX_SCENES}"
        )
    return scenes


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
        if request.reference_videos:
            raise RequestRuleError(
                "model_tier", "4k takes no video input (reference_videos); use standard or pro"
            )
    warnings: list[str] = []
    if workflow != "video_edit" and "keep_original_sound" in request.model_fields_set:
        warnings.append("keep_original_sound only applies to video_edit; it is ignored")
    if request.reference_images and len(request.reference_images) > _max_reference_images(request):
        warnings.append(
            f"{len(request.reference_images)} reference images; kling-o3 is believed to accept "
            f"at most {_max_reference_images(request)} (inferred limit)"
        )
    return warnings


def _max_reference_images(request: KlingO3Request) -> int:
    # Inferred from other hosts of the same model (API reference §7): 7 without a video, 4 with.
    return 4 if request.reference_videos or request.video else 7


def scene_seconds(scenes: list[Scene], duration: int | float) -> Decimal:
    """Total length: each scene's `Ns:` prefix, else the per-scene `duration`."""
    default = Decimal(str(duration))
    return sum(
        (scene.seconds if scene.seconds is not None else default for scene in scenes), Decimal(0)
    )


def wire_request(request: KlingO3Request, workflow: ResolvedWorkflow) -> dict[str, Any]:
    """The request as sent: every field explicit, `auto` resolved, lists comma-joined later.

    Defaults are written out so an explicit default and an implicit one fingerprint alike,
    and so what was priced is what renders even if the API's defaults move.
    """
    body: dict[str, Any] = {
        "model": request.model,
        "prompt": request.prompt,
        "model_tier": request.model_tier,
        "workflow": workflow,
        "aspect_ratio": request.aspect_ratio,
        "duration": request.duration,
        "sound": request.sound,
    }
    if workflow == "video_edit" or "keep_original_sound" in request.model_fields_set:
        body["keep_original_sound"] = request.keep_original_sound
    for name in MEDIA_FIELDS:
        value = getattr(request, name)
        if value:
            body[name] = value
    for name in MEDIA_LIST_FIELDS:
        values = getattr(request, name)
        if values:
            body[name] = ",".join(values)
    return body


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
