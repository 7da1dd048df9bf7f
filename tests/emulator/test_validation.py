"""Request validation: every rule answers 400 `invalid_request` naming its field."""

from __future__ import annotations

import base64
from decimal import Decimal

import pytest

from kling_batch.emulator.errors import ApiError
from kling_batch.emulator.validation import validate_submission

HTTPS = "https://example.com/a.png"
VIDEO = "https://example.com/a.mp4"

REJECTED = [
    pytest.param({"prompt": ""}, "prompt", id="empty-prompt"),
    pytest.param({"prompt": " | \n |"}, "prompt", id="blank-scenes-only"),
    pytest.param({"prompt": None}, "prompt", id="null-prompt"),
    pytest.param({"prompt": 5}, "prompt", id="prompt-not-string"),
    pytest.param({"model_tier": "ultra"}, "model_tier", id="tier-enum"),
    pytest.param({"workflow": "i2i"}, "workflow", id="workflow-enum"),
    pytest.param({"aspect_ratio": "4:3"}, "aspect_ratio", id="aspect-enum"),
    pytest.param({"duration": 2}, "duration", id="duration-below-3"),
    pytest.param({"duration": 16}, "duration", id="duration-above-15"),
    pytest.param({"duration": "5"}, "duration", id="duration-not-number"),
    pytest.param({"duration": True}, "duration", id="duration-bool"),
    pytest.param({"sound": "yes"}, "sound", id="sound-not-bool"),
    pytest.param({"prompt": "a|b|c|d|e|f|g"}, "prompt", id="seven-scenes-pipe"),
    pytest.param({"prompt": "a\nb\nc\nd\ne\nf\ng"}, "prompt", id="seven-scenes-newline"),
    pytest.param({"prompt": "2s: a | 5s: b"}, "prompt", id="scene-prefix-below-3"),
    pytest.param({"prompt": "16s: a"}, "prompt", id="scene-prefix-above-15"),
    pytest.param({"workflow": "i2v"}, "image", id="i2v-without-image"),
    pytest.param({"workflow": "video_edit"}, "video", id="video-edit-without-video"),
    pytest.param({"workflow": "reference"}, "reference_images", id="reference-without-refs"),
    pytest.param({"image_end": HTTPS}, "image_end", id="image-end-without-image"),
    pytest.param({"model_tier": "4k", "video": VIDEO}, "model_tier", id="4k-video-edit"),
    pytest.param(
        {"model_tier": "4k", "reference_videos": VIDEO}, "model_tier", id="4k-reference-videos"
    ),
    pytest.param({"image": "ftp://example.com/a.png"}, "image", id="media-scheme"),
    pytest.param({"image": "a.png"}, "image", id="media-local-path"),
    pytest.param({"reference_images": [HTTPS, 3]}, "reference_images", id="ref-list-items"),
    pytest.param({"reference_images": {"a": 1}}, "reference_images", id="ref-not-list"),
    pytest.param({"video": "bunny://uploads/acct_emulator/nope/a.mp4"}, "video", id="bunny-gone"),
    pytest.param({"fps": 24}, "fps", id="unknown-field"),
    pytest.param({"seed": 1.5}, "seed", id="seed-not-integer"),
]


@pytest.mark.parametrize(("fields", "param"), REJECTED)
def test_invalid_request_names_the_field(shared_api, fields, param):
    """Each broken rule answers 400 `invalid_request` with `param` set to the field."""
    response = shared_api.submit(**fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "invalid_request",
        param,
        "invalid_request_error",
    )


def test_unknown_model_is_404_model_not_found(shared_api):
    """A model id other than kling-o3 answers 404 `model_not_found`."""
    response = shared_api.submit(model="kling-o9")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert response.json()["error"]["param"] == "model"


def test_missing_model_is_400(shared_api):
    """A body without `model` is a 400 naming `model`."""
    response = shared_api.client.post("/v1/videos/generations", json={"prompt": "x"})
    assert response.json()["error"]["param"] == "model"


def test_body_that_is_not_json_is_400(shared_api):
    """A body that does not parse as JSON is a 400."""
    response = shared_api.client.post("/v1/videos/generations", content=b"{nope")
    assert response.status_code == 400


def test_body_that_is_not_an_object_is_400(shared_api):
    """A JSON array body is a 400."""
    response = shared_api.client.post("/v1/videos/generations", json=["kling-o3"])
    assert response.status_code == 400


def test_unknown_fields_can_be_ignored(make_api):
    """With `unknown_fields="ignore"` an unknown field is accepted and echoed back."""
    api = make_api(unknown_fields="ignore")
    job = api.submit_ok(fps=24)
    assert api.job(job["job_id"])["request"]["fps"] == 24


def test_seed_is_accepted(shared_api):
    """`seed`, absent from the current model page, is still accepted."""
    assert shared_api.submit(seed=42).status_code == 200


def test_six_scenes_are_accepted(shared_api):
    """Exactly six scenes is within the limit."""
    assert shared_api.submit(prompt="a|b|c|d|e|f").status_code == 200


def test_null_optional_fields_count_as_absent(shared_api):
    """`null` for an optional field is the same as leaving it out."""
    assert shared_api.submit(image=None, duration=None, reference_images=None).status_code == 200


@pytest.mark.parametrize(
    "value",
    [
        HTTPS,
        "http://example.com/a.png",
        "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode(),
    ],
    ids=["https", "http", "data-uri"],
)
def test_media_forms_are_accepted(shared_api, value):
    """https and plain http URLs and data URIs are accepted as media."""
    assert shared_api.submit(image=value).status_code == 200


@pytest.mark.parametrize(
    "refs",
    [f"{HTTPS}, {HTTPS}", [HTTPS, HTTPS]],
    ids=["comma-separated", "array"],
)
def test_reference_lists_take_both_shapes(shared_api, refs):
    """reference_images is accepted as a comma-separated string or a JSON array."""
    assert shared_api.submit(reference_images=refs).status_code == 200


def _submission(**fields):
    body = {"model": "kling-o3", "prompt": "a fox", **fields}
    return validate_submission(body, lambda path: None)


@pytest.mark.parametrize(
    ("fields", "workflow"),
    [
        ({}, "t2v"),
        ({"image": HTTPS}, "i2v"),
        ({"image": HTTPS, "reference_images": HTTPS}, "reference"),
        ({"reference_videos": VIDEO}, "reference"),
        ({"video": VIDEO, "reference_images": HTTPS, "image": HTTPS}, "video_edit"),
        ({"workflow": "t2v", "image": HTTPS}, "t2v"),
    ],
    ids=["text", "image", "refs-over-image", "ref-videos", "video-over-all", "explicit"],
)
def test_auto_workflow_resolves_from_inputs(fields, workflow):
    """`auto` picks video_edit, then reference, then i2v, else t2v; explicit stays."""
    assert _submission(**fields).workflow == workflow


def test_scene_seconds_sum_prefixes_and_duration():
    """Billed seconds sum each scene's `Ns:` prefix, else `duration`."""
    submission = _submission(prompt="4s: a | b\n\n7.5s: c", duration=6)
    assert (submission.seconds, submission.scenes) == (Decimal("17.5"), 3)


def test_default_duration_is_five_seconds():
    """A single unprefixed scene without `duration` bills the default 5 s."""
    assert _submission().seconds == Decimal(5)


def test_4k_accepts_reference_images():
    """4K with image-only references is allowed (no video input)."""
    assert _submission(model_tier="4k", reference_images=HTTPS).tier == "4k"


def test_remote_video_edit_bills_duration_capped_at_ten():
    """A remote source video bills its `duration` value, capped at the 10 s input limit."""
    assert _submission(video=VIDEO, duration=7).seconds == Decimal(7)
    assert _submission(video=VIDEO, duration=14).seconds == Decimal(10)


def test_data_uri_video_is_probed(clip):
    """A base64 data-URI source video bills its real length."""
    uri = "data:video/mp4;base64," + base64.b64encode(clip("6.5")).decode()
    assert _submission(video=uri, duration=3).seconds == Decimal("6.5")


def test_validation_raises_api_error_not_pydantic():
    """Validation errors are `ApiError`s carrying status, code and param."""
    with pytest.raises(ApiError) as caught:
        _submission(aspect_ratio="21:9")
    assert (caught.value.status, caught.value.param) == (400, "aspect_ratio")
