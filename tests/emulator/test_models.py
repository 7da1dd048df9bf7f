"""Models, health and unknown routes."""

from __future__ import annotations

import json

import httpx

from kling_batch.model_data import model_json_text


def test_model_list_holds_kling_o3(api):
    """`GET /v1/models` is an OpenAI-style list holding kling-o3."""
    body = api.client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["kling-o3"]


def test_model_detail_is_the_schema_file(api):
    """`GET /v1/models/kling-o3` serves schemas/kling-o3.json."""
    response = api.client.get("/v1/models/kling-o3")
    assert response.json() == json.loads(model_json_text())


def test_unknown_model_detail_is_404_model_not_found(api):
    """Another model id answers 404 `model_not_found`."""
    response = api.client.get("/v1/models/sora-9")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "model_not_found")


def test_unknown_route_is_a_404_envelope(api):
    """A path nobody serves answers 404 in the error envelope."""
    response = api.client.get("/v1/nothing")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_wrong_method_is_a_405_envelope(api):
    """GET on the submit endpoint answers 405 in the error envelope."""
    response = api.client.get("/v1/videos/generations")
    assert (response.status_code, response.json()["error"]["code"]) == (405, "method_not_allowed")


def test_livez_is_ok(api):
    """`GET /livez` answers `{"status": "ok"}`."""
    assert httpx.get(f"{api.served.base_url}/livez").json() == {"status": "ok"}
