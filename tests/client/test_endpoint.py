"""Base URL and key resolution, and the shape of the public API."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

from kling_batch import client as client_module
from kling_batch import errors as errors_module
from kling_batch.client import DEFAULT_BASE_URL, api_key_from_env, resolve_base_url
from kling_batch.errors import UserError

pytestmark = pytest.mark.anyio


def test_explicit_base_url_wins():
    """An explicit base URL beats the environment."""
    env = {"EMPIRIOLABS_BASE_URL": "http://127.0.0.1:9"}
    assert resolve_base_url("http://localhost:8765/", env) == "http://localhost:8765"


def test_base_url_from_the_environment():
    """Without an explicit URL the environment variable is used."""
    assert resolve_base_url(None, {"EMPIRIOLABS_BASE_URL": "http://127.0.0.1:9"}) == (
        "http://127.0.0.1:9"
    )


def test_base_url_defaults_to_the_public_api():
    """With nothing given, the public API is used."""
    assert resolve_base_url(None, {}) == DEFAULT_BASE_URL == "https://api.empiriolabs.ai"


@pytest.mark.parametrize("bad", ["ftp://x", "not a url", "https://"])
def test_unusable_base_url_is_a_user_error(bad):
    """A base URL that is not http(s)://host is a usage error naming where it came from:
    the option when given, else the environment variable."""
    with pytest.raises(UserError) as given:
        resolve_base_url(bad, {})
    assert given.value.field == "--api-base"
    with pytest.raises(UserError) as from_env:
        resolve_base_url(None, {"EMPIRIOLABS_BASE_URL": bad})
    assert from_env.value.field == "EMPIRIOLABS_BASE_URL"


def test_key_comes_from_the_environment():
    """The key is read from EMPIRIOLABS_API_KEY, stripped."""
    assert api_key_from_env({"EMPIRIOLABS_API_KEY": " sk-empiriolabs-abc\n"}) == (
        "sk-empiriolabs-abc"
    )


def test_missing_key_is_a_user_error():
    """No key set is a usage error that says which variable to set."""
    with pytest.raises(UserError, match="EMPIRIOLABS_API_KEY"):
        api_key_from_env({})


async def test_client_reads_the_base_url_from_the_environment(monkeypatch, make_client):
    """A client without base_url uses EMPIRIOLABS_BASE_URL."""
    monkeypatch.setenv("EMPIRIOLABS_BASE_URL", "http://127.0.0.1:8765")
    async with make_client(base_url=None) as client:
        assert client.base_url == "http://127.0.0.1:8765"


def test_public_api_names_exist_once():
    """Every name in `__all__` exists and appears once (ruff RUF022 keeps it sorted)."""
    names = client_module.__all__
    assert all(hasattr(client_module, name) for name in names)
    assert len(names) == len(set(names))


def test_every_error_class_is_drawn_and_documented_in_one_line():
    """Each class of the exception tree has a one-line docstring and a place in the drawing."""
    classes = [
        obj
        for obj in vars(errors_module).values()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and obj.__module__ == errors_module.__name__
    ]
    api_errors = [cls for cls in classes if issubclass(cls, errors_module.ApiError)]
    assert len(api_errors) == 17
    for cls in classes:
        assert cls.__doc__ and "\n" not in cls.__doc__.strip(), cls.__name__
        assert cls.__name__ in (errors_module.__doc__ or ""), cls.__name__


def test_no_exception_class_lives_outside_the_error_module():
    """The package defines exception classes only in `errors.py` (the emulator aside)."""
    package = Path(errors_module.__file__).parent
    for info in pkgutil.walk_packages([str(package)], prefix="kling_batch."):
        if info.name.startswith("kling_batch.emulator") or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseException):
                assert obj.__module__ in ("kling_batch.errors", *sys.builtin_module_names) or (
                    not obj.__module__.startswith("kling_batch")
                ), f"{info.name}: {obj.__name__}"
