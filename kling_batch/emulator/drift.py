"""A drifted kling-o3 description: what `GET /v1/models/kling-o3` would serve after the API
changed under a client (`EmulatorConfig(drifted_schema=True)`, `--drifted-schema`).

Only the description drifts; the emulator still validates and bills by the bundled data.
The drift touches each kind of thing `kling-batch doctor` compares: a parameter added and
one removed, an enum value added, a range narrowed, a default moved and a price raised.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from kling_batch.model_data import model_json_text


@cache
def drifted_model_text() -> str:
    """The drifted description as JSON text."""
    data: dict[str, Any] = json.loads(model_json_text())
    parameters = {entry["name"]: entry for entry in data["supported_parameters"]}
    parameters["aspect_ratio"]["enum"].append("4:3")
    parameters["duration"]["max"] = 10
    parameters["model_tier"]["default"] = "standard"
    del parameters["image_end"]
    parameters["seed"] = {
        "name": "seed",
        "type": "integer",
        "required": False,
        "description": "Seed for reproducible renders.",
    }
    data["supported_parameters"] = list(parameters.values())
    for row in data["pricing_rows"]:
        if row["label"] == "Pro T2V/I2V Sound":
            row["price"] = 0.308
    return json.dumps(data, indent=2) + "\n"
