"""Request validation for `POST /v1/videos/generations`, driven by `schemas/kling-o3.json`.

Field names, types, enums, ranges, defaults and limits are read from the model data; the
rules that tie fields together (workflow inputs, scenes, 4K without video) are the model
card's. Nothing here imports the client's pydantic mirror: the two check each other.

Leniencies, on purpose: JSON `null` means "not given"; an empty media string or list means
"not given"; `seed` (an integer) is accepted though the current model page omits it.
Unknown fields are a 400 by default (`EmulatorConfig.unknown_fields="ignore"` drops them).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from kling_batch.emulator.errors import ApiError, invalid
from kling_batch.emulator.media import probe_seconds
from kling_batch.emulator.uploads import Upload
from kling_batch.model_data import MODEL_ID, model_schema

_EXTRA_FIELDS = ("model", "seed")
_SCENE_SPLIT = re.compile(r"[|\r\n]")
_SCENE_PREFIX = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*s\s*:", re.IGNORECASE)
_REFERENCE_FIELDS = ("reference_images", "reference_videos")

UploadLookup = Callable[[str], Upload | None]


@dataclass(frozen=True)
class Submission:
    """A valid request with everything billing and rendering need resolved."""

    request: dict[str, Any]
    workflow: str
    tier: str
    aspect: str
    sound: bool
    video_input: bool
    seconds: Decimal
    scenes: int


@dataclass(frozen=True)
class _Rules:
    params: dict[str, dict[str, Any]]
    max_scenes: int
    scene_min: Decimal
    scene_max: Decimal
    video_cap: Decimal


@cache
def _rules() -> _Rules:
    schema = model_schema()
    limits = schema["limits"]
    return _Rules(
        params={p["name"]: p for p in schema["supported_parameters"]},
        max_scenes=int(limits["max_scenes"]),
        scene_min=Decimal(limits["scene_seconds"]["min"]),
        scene_max=Decimal(limits["scene_seconds"]["max"]),
        video_cap=Decimal(limits["video_input_max_seconds"]),
    )


def validate_submission(
    body: Any, uploads: UploadLookup, *, reject_unknown: bool = True
) -> Submission:
    """Check a request body; raise `ApiError` (400, or 404 for the model) naming the field."""
    rules = _rules()
    given = _given(body, rules, reject_unknown=reject_unknown)
    values = {
        name: _check_field(name, spec, given.get(name), uploads)
        for name, spec in rules.params.items()
    }
    prompt: str | None = values["prompt"]
    if not prompt or not prompt.strip():
        raise invalid("'prompt' must not be empty.", "prompt")
    duration = _decimal(values["duration"])
    scene_seconds = _scene_seconds(prompt, duration, rules)
    workflow = _workflow(values)
    video_input = workflow == "video_edit" or (
        workflow == "reference" and bool(values["reference_videos"])
    )
    tier = values["model_tier"]
    if tier == "4k" and video_input:
        raise invalid(
            "model_tier '4k' takes no video input; use 'standard' or 'pro' for "
            "video_edit or reference_videos.",
            "model_tier",
        )
    if workflow == "video_edit":
        seconds = min(_video_seconds(values["video"], uploads) or duration, rules.video_cap)
    else:
        seconds = sum(scene_seconds, Decimal(0))
    return Submission(
        request=dict(body),
        workflow=workflow,
        tier=tier,
        aspect=values["aspect_ratio"],
        sound=bool(values["sound"]),
        video_input=video_input,
        seconds=seconds,
        scenes=len(scene_seconds),
    )


def _given(body: Any, rules: _Rules, *, reject_unknown: bool) -> dict[str, Any]:
    """The body's non-null fields, once the body, the model and unknown names are checked."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None)
    model = body.get("model")
    if model is None or model == "":
        raise invalid("Missing required parameter 'model'.", "model")
    if model != MODEL_ID:
        raise ApiError(
            404, "model_not_found", f"The model {model!r} does not exist.", param="model"
        )
    given = {k: v for k, v in body.items() if v is not None}
    for name in given:
        if name not in rules.params and name not in _EXTRA_FIELDS and reject_unknown:
            raise invalid(f"Unknown parameter {name!r} for model {MODEL_ID}.", name)
    if "seed" in given and (not isinstance(given["seed"], int) or isinstance(given["seed"], bool)):
        raise invalid("'seed' must be an integer.", "seed")
    return given


def _workflow(values: dict[str, Any]) -> str:
    """The workflow `auto` stands for, or the explicit one once its inputs are checked."""
    refs_given = any(values[f] for f in _REFERENCE_FIELDS)
    workflow: str = values["workflow"]
    if workflow == "auto":
        if values["video"]:
            workflow = "video_edit"
        elif refs_given:
            workflow = "reference"
        elif values["image"]:
            workflow = "i2v"
        else:
            workflow = "t2v"
    elif workflow == "i2v" and not values["image"]:
        raise invalid("workflow 'i2v' needs an 'image'.", "image")
    elif workflow == "video_edit" and not values["video"]:
        raise invalid("workflow 'video_edit' needs a 'video'.", "video")
    elif workflow == "reference" and not refs_given:
        raise invalid(
            "workflow 'reference' needs 'reference_images' or 'reference_videos'.",
            "reference_images",
        )
    if values["image_end"] and not values["image"]:
        raise invalid("'image_end' needs an 'image' (the first frame).", "image_end")
    return workflow


def _check_field(name: str, spec: dict[str, Any], value: Any, uploads: UploadLookup) -> Any:
    kind = spec["type"]
    fmt = spec.get("format")
    if fmt == "media_url_list":
        items = _media_list(name, value)
        for item in items:
            _check_media(name, item, uploads)
        return items
    if value is None or (fmt == "media_url" and value == ""):
        if spec.get("required"):
            raise invalid(f"Missing required parameter {name!r}.", name)
        return spec.get("default")
    if kind in ("string", "enum") and not isinstance(value, str):
        raise invalid(f"{name!r} must be a string.", name)
    if kind == "enum" and value not in spec["enum"]:
        allowed = ", ".join(spec["enum"])
        raise invalid(f"{name!r} must be one of {allowed}; got {value!r}.", name)
    if kind == "boolean" and not isinstance(value, bool):
        raise invalid(f"{name!r} must be true or false.", name)
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid(f"{name!r} must be a number.", name)
        low, high = spec.get("min"), spec.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            raise invalid(f"{name!r} must be within {low}–{high}; got {value}.", name)
    if fmt == "media_url":
        _check_media(name, value, uploads)
    return value


def _media_list(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise invalid(f"{name!r} must be a comma-separated string or an array of strings.", name)


def _check_media(name: str, value: str, uploads: UploadLookup) -> None:
    if value.startswith("bunny://"):
        if uploads(value) is None:
            raise invalid(f"{name!r}: unknown or expired upload path {value!r}.", name)
        return
    if value.startswith("data:"):
        if "," not in value:
            raise invalid(f"{name!r}: malformed data URI.", name)
        return
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc:
        return
    raise invalid(f"{name!r} must be an http(s) URL, a data URI or a bunny:// path.", name)


def _scene_seconds(prompt: str, duration: Decimal, rules: _Rules) -> list[Decimal]:
    scenes = [s for s in (part.strip() for part in _SCENE_SPLIT.split(prompt)) if s]
    if not scenes:
        raise invalid("'prompt' has no scene text.", "prompt")
    if len(scenes) > rules.max_scenes:
        raise invalid(
            f"'prompt' has {len(scenes)} scenes; at most {rules.max_scenes} are allowed.",
            "prompt",
        )
    seconds: list[Decimal] = []
    for number, scene in enumerate(scenes, start=1):
        match = _SCENE_PREFIX.match(scene)
        if match is None:
            seconds.append(duration)
            continue
        length = Decimal(match.group(1))
        if not rules.scene_min <= length <= rules.scene_max:
            raise invalid(
                f"'prompt' scene {number} lasts {length}s; scenes last "
                f"{rules.scene_min}–{rules.scene_max}s.",
                "prompt",
            )
        seconds.append(length)
    return seconds


def _video_seconds(value: str, uploads: UploadLookup) -> Decimal | None:
    """The source video's probed length, when the emulator holds its bytes."""
    if value.startswith("bunny://"):
        upload = uploads(value)
        return upload.seconds if upload is not None else None
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if header.endswith(";base64"):
            try:
                return probe_seconds(base64.b64decode(payload, validate=True))
            except binascii.Error:
                return None
    return None


def _decimal(value: int | float | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))
