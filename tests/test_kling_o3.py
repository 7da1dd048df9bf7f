"""The kling-o3 request mirror: in step with schemas/kling-o3.json, scenes and workflow rules."""

from __future__ import annotations

import re
import typing

import pytest
from pydantic import ValidationError

from kling_batch import kling_o3
from kling_batch.errors import RequestRuleError
from kling_batch.kling_o3 import KlingO3Request, Scene, parse_scenes
from kling_batch.model_data import model_schema


def _enum(annotation: object) -> list[str] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            return list(typing.get_args(arg))
    return None


def test_mirror_and_schema_file_name_the_same_parameters() -> None:
    """Every parameter in schemas/kling-o3.json is a field of the mirror, and vice versa."""
    names = {p["name"] for p in model_schema()["supported_parameters"]}
    assert names == set(KlingO3Request.model_fields) - {"model"}


@pytest.mark.parametrize("param", model_schema()["supported_parameters"], ids=lambda p: p["name"])
def test_mirror_matches_schema_file(param: dict[str, typing.Any]) -> None:
    """Enums, defaults, ranges and requiredness agree between the mirror and the data file."""
    field = KlingO3Request.model_fields[param["name"]]
    if "enum" in param:
        assert _enum(field.annotation) == param["enum"]
    if "default" in param:
        assert field.default == param["default"]
    else:
        assert field.is_required() or field.default is None
    assert field.is_required() == bool(param.get("required"))
    bounds = {type(m).__name__: m for m in field.metadata}
    if "min" in param:
        assert bounds["Ge"].ge == param["min"]
        assert bounds["Le"].le == param["max"]


def test_limits_agree_with_schema_file() -> None:
    """Scene count, scene length range and the video cap agree with the data file."""
    limits = model_schema()["limits"]
    assert limits["max_scenes"] == kling_o3.MAX_SCENES
    assert limits["scene_seconds"] == {"min": kling_o3.MIN_SECONDS, "max": kling_o3.MAX_SECONDS}
    assert limits["video_input_max_seconds"] == kling_o3.VIDEO_INPUT_CAP_SECONDS


def test_scenes_split_on_pipes_and_newlines() -> None:
    """Pipes and newlines both separate scenes; blank lines are not scenes."""
    assert parse_scenes("a | b\n\nc\n") == [Scene("a", None), Scene("b", None), Scene("c", None)]


def test_scene_prefixes_are_read() -> None:
    """`Ns:` sets a scene's length, with or without a space after the colon."""
    assert parse_scenes("5s: fox | 4s:owl | plain") == [
        Scene("fox", 5),
        Scene("owl", 4),
        Scene("plain", None),
    ]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("4.5s: owl", "scene 1 lasts 4.5s: kling-o3 takes whole seconds 3-15; use 4 or 5"),
        ("fox | 4,5s: owl", "scene 2 lasts 4.5s"),
        ("10 s: owl", "scene 1 starts '10 s:'; write its length as '10s:'"),
        ("10S: owl", "write its length as '10s:'"),
        ("5s : owl", "write its length as '5s:'"),
    ],
)
def test_loose_or_fractional_prefixes_are_refused(prompt: str, message: str) -> None:
    """A prefix the API might read differently is refused, naming the form to write."""
    with pytest.raises(RequestRuleError, match=re.escape(message)):
        parse_scenes(prompt)


@pytest.mark.parametrize(
    "separator", ["\n", "\r", "\r\n", "|", "\u2028", "\u2029", "\x85", "\x0b", "\x0c"]
)
def test_every_line_break_and_the_pipe_split_scenes(separator: str) -> None:
    """Whatever a spreadsheet or an editor wrote between scenes, they split the same way."""
    prompt = f"5s: fox{separator}4s: owl"
    assert parse_scenes(prompt) == [Scene("fox", 5), Scene("owl", 4)]
    assert kling_o3.canonical_prompt(prompt) == "5s: fox\n4s: owl"


def test_seven_scenes_are_refused() -> None:
    """More than six scenes is an error on the prompt."""
    with pytest.raises(RequestRuleError, match="at most 6"):
        parse_scenes(" | ".join("abcdefg"))


@pytest.mark.parametrize("prefix", ["2s", "16s", "0s"])
def test_scene_prefix_out_of_range(prefix: str) -> None:
    """A scene prefix outside 3–15 s is an error."""
    with pytest.raises(RequestRuleError, match="3-15s"):
        parse_scenes(f"{prefix}: too short or long")


@pytest.mark.parametrize(
    ("fields", "workflow"),
    [
        ({"video": "v.mp4", "image": "i.png"}, "video_edit"),
        ({"reference_videos": "a.mp4", "image": "i.png"}, "reference"),
        ({"reference_images": ["a.png"]}, "reference"),
        ({"image": "i.png"}, "i2v"),
        ({}, "t2v"),
        ({"workflow": "t2v", "image": "i.png"}, "t2v"),
    ],
)
def test_auto_workflow_resolution(fields: dict[str, typing.Any], workflow: str) -> None:
    """`auto` resolves video → video_edit, references → reference, image → i2v, else t2v."""
    request = KlingO3Request(prompt="x", **fields)
    assert kling_o3.resolve_workflow(request) == workflow


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"workflow": "i2v"}, "image"),
        ({"image_end": "e.png"}, "image_end"),
        ({"workflow": "video_edit"}, "video"),
        ({"workflow": "reference"}, "reference_images"),
        ({"model_tier": "4k", "video": "v.mp4"}, "model_tier"),
        ({"model_tier": "4k", "reference_videos": ["v.mp4"]}, "model_tier"),
    ],
)
def test_cross_field_rules(fields: dict[str, typing.Any], field: str) -> None:
    """Each cross-field rule of the model card names the field at fault."""
    request = KlingO3Request(prompt="x", **fields)
    with pytest.raises(RequestRuleError) as caught:
        kling_o3.check_rules(request, kling_o3.resolve_workflow(request))
    assert caught.value.field == field


def test_keep_original_sound_outside_edit_warns() -> None:
    """keep_original_sound set on a text-to-video render is a warning, not an error."""
    request = KlingO3Request(prompt="x", keep_original_sound=False)
    assert any("keep_original_sound" in w for w in kling_o3.check_rules(request, "t2v"))


def test_4k_reference_with_images_is_allowed() -> None:
    """4K takes image-only references."""
    request = KlingO3Request(prompt="x", model_tier="4k", reference_images=["a.png"])
    assert kling_o3.check_rules(request, "reference") == []


def test_4k_with_reference_videos_it_does_not_send_warns_only() -> None:
    """4K i2v naming reference_videos, which i2v does not send: allowed with the usual
    "not sent" warning (the request sent has no video), as an unsent `video` is."""
    request = KlingO3Request(
        prompt="x", model_tier="4k", workflow="i2v", image="a.png", reference_videos=["c.mp4"]
    )
    assert "reference_videos" not in kling_o3.wire_request(request, "i2v")
    assert any("reference_videos" in w for w in kling_o3.check_rules(request, "i2v"))


def test_wire_request_writes_defaults_and_resolved_workflow() -> None:
    """The body sent names every default and the resolved workflow, lists comma-joined."""
    request = KlingO3Request(prompt="x", reference_images="a.png, b.png")
    assert kling_o3.wire_request(request, "reference") == {
        "model": "kling-o3",
        "prompt": "x",
        "model_tier": "pro",
        "workflow": "reference",
        "aspect_ratio": "16:9",
        "duration": 5,
        "sound": True,
        "reference_images": "a.png,b.png",
    }


def test_explicit_and_implicit_defaults_send_the_same_body() -> None:
    """Writing a default explicitly does not change the request."""
    implicit = KlingO3Request(prompt="x")
    explicit = KlingO3Request(prompt="x", model_tier="pro", duration=5.0, aspect_ratio="16:9")
    assert kling_o3.wire_request(implicit, "t2v") == kling_o3.wire_request(explicit, "t2v")


def test_string_values_from_templates_are_coerced() -> None:
    """Templates render strings; numbers and booleans are read from them."""
    request = KlingO3Request.model_validate({"prompt": "x", "duration": "7", "sound": "false"})
    assert (request.duration, request.sound) == (7, False)


def test_unknown_field_is_refused() -> None:
    """The mirror forbids fields the model does not document."""
    with pytest.raises(ValidationError):
        KlingO3Request.model_validate({"prompt": "x", "seed": 3})
