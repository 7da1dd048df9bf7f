"""`kling-batch status`: each render's state from the lockfile and the files, no network.

A `failed` entry whose job was cancelled (`Entry.cancelled`) is shown and counted as
`cancelled`, as `spend` says it; in the JSON its `state` stays the lockfile's and
`cancelled` is true (the key is false for every other entry).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from kling_batch import safefiles
from kling_batch.assets import AssetStore
from kling_batch.errors import UserError
from kling_batch.lockfile import Entry, load_lockfile
from kling_batch.lockname import emulator_only_hint, lock_path
from kling_batch.manifest import Manifest, read_document, require_manifest
from kling_batch.reports import usd
from kling_batch.tables import Columns
from kling_batch.ui import say, write_data

STATE_STYLES = {
    "done": "green",
    "failed": "red",
    "cancelled": "yellow",
    "uncertain": "magenta",
    "submitting": "magenta",
    "submitted": "cyan",
    "completed": "cyan",
}


def file_state(store: AssetStore, entry: Entry, output_dir: str | None = None) -> str:
    """`ok`, `missing`, `modified` for a done render's output; `-` before it is done;
    `invalid` (and never read) for an output outside `output_dir`."""
    if output_dir is not None and not safefiles.lies_inside(store.root, output_dir, entry.output):
        return "invalid"
    if entry.state != "done" or not entry.output_sha256:
        return "-"
    found = store.relative_hash(entry.output)
    if found is None:
        return "missing"
    return "ok" if found[0] == entry.output_sha256 else "modified"


def status_rows(manifest: Path, *, emulator: bool = False) -> list[dict[str, Any]]:
    """One row per lockfile entry, sorted by id."""
    lock = load_lockfile(lock_path(manifest, emulator=emulator))
    store = AssetStore(manifest.parent)
    output_dir = _output_dir(manifest, emulator=emulator)
    rows = []
    for shot_id in sorted(lock.shots):
        entry = lock.shots[shot_id]
        rows.append(
            {
                "id": shot_id,
                "state": entry.state,
                "cancelled": entry.cancelled,
                "file": file_state(store, entry, output_dir),
                "output": entry.output,
                "cost_usd": entry.cost_usd,
                "billed_usd": entry.billed_usd,
                "job_id": entry.job_id,
                "error": entry.error,
                "tags": list(entry.tags),
            }
        )
    store.save()
    return rows


def _output_dir(manifest: Path, *, emulator: bool) -> str:
    """The manifest's `output_dir` (the default when the manifest cannot be read)."""
    try:
        value = read_document(manifest).get("output_dir")
    except UserError:
        value = None
    output_dir = value if isinstance(value, str) else Manifest.model_fields["output_dir"].default
    return output_dir.rstrip("/") + "-emulator" if emulator else output_dir


def show_status(manifest: Path, *, fmt: str, emulator: bool, console: Console) -> None:
    """Print the status table (or JSON) of a manifest's lockfile."""
    require_manifest(manifest)
    rows = status_rows(manifest, emulator=emulator)
    hint = None if emulator else emulator_only_hint(manifest, "status")
    if hint is not None:
        say(hint)
    if fmt == "json":
        payload = {"manifest": manifest.name, "renders": rows}
        write_data(json.dumps(payload, indent=2, default=float) + "\n")
        return
    if not rows:
        console.print(f"No renders recorded for {manifest.name} yet.")
        return
    counts: dict[str, int] = {}
    for row in rows:
        counts[_said(row)] = counts.get(_said(row), 0) + 1
    console.print(
        f"{manifest.name}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    )
    tagged = any(row["tags"] for row in rows)
    columns = ["id", "state", "file", "output", "cost", "job", "note"] + (
        ["tags"] if tagged else []
    )
    table = Columns([(name, "left") for name in columns], overflow="fold")
    for row in rows:
        style = STATE_STYLES.get(_said(row), "")
        file_style = "red" if row["file"] in {"missing", "modified", "invalid"} else ""
        table.add_row(
            row["id"],
            Text(_said(row), style=style),
            Text(row["file"], style=file_style),
            row["output"],
            usd(row["cost_usd"]),
            row["job_id"] or "",
            row["error"] or "",
            *([", ".join(row["tags"])] if tagged else []),
        )
    console.print(table)


def _said(row: Mapping[str, Any]) -> str:
    """The row's state as people read it: `cancelled` for a failed entry whose job was."""
    return "cancelled" if row["cancelled"] else str(row["state"])
