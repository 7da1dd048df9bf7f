"""The kling-o3 model description (`schemas/kling-o3.json`): parameters and price rows as data.

This is the shape `GET /v1/models/kling-o3` serves. Prices are read from here and
nowhere else; numbers are parsed as `Decimal` so no price ever passes through a float.
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

MODEL_ID = "kling-o3"
_FILE = "kling-o3.json"


def data_file(name: str) -> Path:
    """Path of a file from `schemas/`: packaged in a wheel, or the source tree when editable."""
    packaged = resources.files("kling_batch").joinpath("_data", name)
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "schemas" / name


@cache
def model_schema() -> dict[str, Any]:
    """The parsed model description; floats become `Decimal`. Do not mutate."""
    text = data_file(_FILE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text, parse_float=Decimal)
    return data


def parameter(name: str) -> dict[str, Any]:
    """One entry of `supported_parameters` by name."""
    for entry in model_schema()["supported_parameters"]:
        if entry["name"] == name:
            return dict(entry)
    raise KeyError(name)


def model_json_text() -> str:
    """The file as served over HTTP (plain JSON, prices as numbers)."""
    return data_file(_FILE).read_text(encoding="utf-8")
