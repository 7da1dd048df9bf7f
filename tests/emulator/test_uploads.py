"""Uploads: bunny:// paths, size and type limits, and their use as media inputs."""

from __future__ import annotations

import httpx
import pytest

PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


def test_upload_returns_a_bunny_path_and_a_url(api):
    """An image upload answers its bunny:// path, a signed URL, its size and type."""
    body = api.upload_ok("my shot.png", PNG, "image/png")
    assert body["path"].startswith("bunny://uploads/acct_emulator/")
    assert body["path"].endswith("/my_shot.png")
    assert (body["size"], body["content_type"]) == (len(PNG), "image/png")
    assert httpx.get(body["url"]).content == PNG


def test_upload_type_is_guessed_from_the_name(api):
    """application/octet-stream with a .png name is stored as image/png."""
    body = api.upload_ok("a.png", PNG, "application/octet-stream")
    assert body["content_type"] == "image/png"


def test_unsupported_type_is_415(api):
    """A text file answers 415 naming the `file` field."""
    response = api.upload("notes.txt", b"hello", "text/plain")
    assert response.status_code == 415
    assert response.json()["error"]["param"] == "file"


def test_image_over_its_limit_is_413(make_api):
    """An image larger than the image limit answers 413."""
    api = make_api(max_image_bytes=1000)
    response = api.upload("big.png", PNG + bytes(1000), "image/png")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"


def test_video_limit_is_separate_from_the_image_limit(make_api, clip):
    """A video under the video limit is accepted though larger than the image limit."""
    api = make_api(max_image_bytes=100)
    assert api.upload("c.mp4", clip("3"), "video/mp4").status_code == 200


def test_video_over_its_limit_is_413(make_api, clip):
    """A video larger than the video limit answers 413."""
    api = make_api(max_video_bytes=100)
    assert api.upload("c.mp4", clip("3"), "video/mp4").status_code == 413


def test_missing_file_field_is_400(api):
    """A multipart body without a `file` part is a 400 naming `file`."""
    response = api.client.post("/v1/files/upload", files={"other": ("a.png", PNG, "image/png")})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "file")


def test_non_multipart_upload_is_400(api):
    """A JSON body on the upload endpoint is a 400."""
    assert api.client.post("/v1/files/upload", json={"file": "x"}).status_code == 400


def test_bunny_image_is_accepted_as_image_and_image_end(api):
    """Uploaded images work as `image` and `image_end`."""
    first = api.upload_ok("a.png", PNG, "image/png")["path"]
    last = api.upload_ok("b.png", PNG, "image/png")["path"]
    assert api.submit(image=first, image_end=last).status_code == 200


@pytest.mark.parametrize("as_list", [False, True], ids=["comma-separated", "array"])
def test_bunny_paths_are_accepted_in_reference_lists(api, clip, as_list):
    """bunny:// paths work inside reference_images and reference_videos."""
    images = [api.upload_ok(f"{n}.png", PNG, "image/png")["path"] for n in "ab"]
    video = api.upload_ok("r.mp4", clip("4"), "video/mp4")["path"]
    refs = images if as_list else ",".join(images)
    job = api.render(reference_images=refs, reference_videos=[video] if as_list else video)
    assert job["billing"]["label"] == "Pro Video Input"


def test_unknown_bunny_path_in_a_reference_list_is_400(api):
    """A bunny:// path nobody uploaded is a 400 naming its field."""
    response = api.submit(reference_videos="bunny://uploads/acct_emulator/x/y.mp4")
    assert (response.status_code, response.json()["error"]["param"]) == (400, "reference_videos")
