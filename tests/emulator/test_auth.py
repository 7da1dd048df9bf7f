"""Authentication: bearer or x-api-key, and the two 401 codes."""

from __future__ import annotations

import httpx

SUBMIT = "/v1/videos/generations"


def test_bearer_key_is_accepted(api):
    """A correct `Authorization: Bearer` key reaches the endpoint."""
    assert api.client.get("/v1/models").status_code == 200


def test_x_api_key_is_accepted(api):
    """A correct `x-api-key` header reaches the endpoint."""
    response = httpx.get(
        f"{api.served.base_url}/v1/models", headers={"x-api-key": api.served.api_key}
    )
    assert response.status_code == 200


def test_missing_key_is_401_missing_api_key(api):
    """No key at all answers 401 `missing_api_key` in the error envelope."""
    response = httpx.post(f"{api.served.base_url}{SUBMIT}", json={})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    assert response.json()["error"]["type"] == "authentication_error"


def test_wrong_key_is_401_invalid_api_key(api):
    """A key other than the configured one answers 401 `invalid_api_key`."""
    response = httpx.get(
        f"{api.served.base_url}/v1/jobs", headers={"Authorization": "Bearer sk-empiriolabs-x"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_non_bearer_authorization_is_invalid(api):
    """An Authorization header with another scheme is `invalid_api_key`, not missing."""
    response = httpx.get(
        f"{api.served.base_url}/v1/models", headers={"Authorization": "Basic dXNlcjpwYXNz"}
    )
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_configured_key_replaces_the_default(make_api):
    """`api_key` changes which key is accepted."""
    api = make_api(api_key="sk-empiriolabs-custom")
    default = {"x-api-key": "sk-empiriolabs-emulator"}
    response = httpx.get(f"{api.served.base_url}/v1/models", headers=default)
    assert response.status_code == 401
    custom = {"x-api-key": "sk-empiriolabs-custom"}
    assert httpx.get(f"{api.served.base_url}/v1/models", headers=custom).status_code == 200


def test_health_needs_no_key(api):
    """`/livez` answers without a key."""
    response = httpx.get(f"{api.served.base_url}/livez")
    assert response.json() == {"status": "ok"}
