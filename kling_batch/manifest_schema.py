"""The manifest's JSON Schema, generated from the pydantic model for editor completion."""

from __future__ import annotations

import json
from typing import Any

from kling_batch.manifest import Manifest


def manifest_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a manifest file."""
    schema = Manifest.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "kling-batch manifest",
        **schema,
    }


def manifest_schema_text() -> str:
    """The schema as checked in at `schemas/manifest.schema.json`."""
    return json.dumps(manifest_schema(), indent=2, sort_keys=True) + "\n"
