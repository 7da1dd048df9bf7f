"""Older lockfiles read as the current version: what each version changed, undone on load.

A lockfile records money spent, so an upgrade must never turn a done render into a paid
`changed` one. Each step rewrites what the newer version records differently and leaves
the rest alone; the file on disk is rewritten in the new version by the next run (a plan
never writes it).

Version 2 (from 1): requests are recorded in their wire form as sent since then: the
prompt canonical (scenes joined by LF, prefixes written `Ns: text`) and only the fields
the resolved workflow reads (no `duration` on a video_edit). Each entry's request and
fingerprint are recomputed from the recorded request, its assets' hashes and its take,
so a render that was done stays done. Fingerprints in an entry's history cannot be
recomputed (their requests were not recorded); where the wire form did not change they
still match. Entries now list every submission (`submissions`): a v1 entry's one known
submission (its job, estimate and bill) becomes the first. Uploads are kept per API and
account (`[uploads."<scope>"."<sha256>"]`); v1's unscoped ones go under `unscoped`, where
they still help match an uncertain submission in the job list but are never reused.

Git mixes versions: a branch rendered by a kling-batch before version 2 merges its v1
entries into a lockfile that another branch brought to version 2, often without a
conflict. An entry of a v2 file with no submissions whose request is not in the wire form,
or done and still holding its result URL (a v2 run moves it out of the lockfile), is such
an entry, and is migrated as a v1 file's would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kling_batch import kling_o3
from kling_batch.errors import RequestRuleError

Migration = Callable[[dict[str, Any]], dict[str, Any]]


def migrate(data: dict[str, Any], current: int) -> dict[str, Any]:
    """`data` (parsed TOML of any older version) brought to version `current`."""
    version = int(data.get("version", current))
    if version >= 2:
        _merged_v1_entries(data)
    while version < current:
        data = _STEPS[version](data)
        version += 1
        data["version"] = version
    return data


def _merged_v1_entries(data: dict[str, Any]) -> None:
    """Migrate the v1 entries git merged into a v2 file (see the module docstring): read
    as they were, one planned as changed (paid again) and their bills left out of spend."""
    shots, uploads = data.get("shots"), data.get("uploads")
    unscoped = uploads.get("unscoped") if isinstance(uploads, dict) else None
    paths = {
        sha: item["path"]
        for sha, item in (unscoped.items() if isinstance(unscoped, dict) else ())
        if isinstance(item, dict) and isinstance(item.get("path"), str)
    }
    for entry in shots.values() if isinstance(shots, dict) else ():
        if not isinstance(entry, dict) or "submissions" in entry:
            continue  # every v2 entry that was ever submitted lists its submissions
        request = entry.get("request")
        wired = _wire_form(request) if isinstance(request, dict) else request
        v1_url = entry.get("state") == "done" and entry.get("result_url") is not None
        if wired != request or v1_url:
            sent = _sent_v1(entry, paths)
            _rewire_entry(entry)
            _first_charge(entry, sent)


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    uploads = data.get("uploads")
    paths = {
        sha: item["path"]
        for sha, item in (uploads.items() if isinstance(uploads, dict) else ())
        if isinstance(item, dict) and isinstance(item.get("path"), str)
    }
    if isinstance(uploads, dict) and uploads:
        data["uploads"] = {"unscoped": uploads}
    shots = data.get("shots")
    if isinstance(shots, dict):
        for entry in shots.values():
            if isinstance(entry, dict):
                sent = _sent_v1(entry, paths)
                _rewire_entry(entry)
                _first_charge(entry, sent)
    return data


def _sent_v1(entry: dict[str, Any], paths: dict[str, str]) -> str | None:
    """The digest of the body a v1 entry's POST carried: its recorded request with its
    local inputs as the upload paths v1 kept (matched against the job list if unanswered)."""
    request, assets = entry.get("request"), entry.get("assets", {})
    if not isinstance(request, dict) or not isinstance(assets, dict):
        return None
    media = {key: paths[sha] for key, sha in assets.items() if sha in paths}
    try:
        return kling_o3.sent_digest(kling_o3.with_media(request, media))
    except (KeyError, IndexError, AttributeError, TypeError):
        return None


def _rewire_entry(entry: dict[str, Any]) -> None:
    """Rewrite one entry's request in the v2 wire form and recompute its fingerprint."""
    request, assets, take = entry.get("request"), entry.get("assets", {}), entry.get("take")
    if not isinstance(request, dict) or not isinstance(assets, dict) or not isinstance(take, int):
        return  # damaged: validation says so with the shot and field
    wired = _wire_form(request)
    if wired is None:
        return  # no longer a valid prompt: the plan will price the manifest's version
    sent = {key: value for key, value in assets.items() if key.partition(".")[0] in wired}
    entry["request"] = wired
    entry["assets"] = sent
    entry["fingerprint"] = kling_o3.request_fingerprint(wired, sent, take)


def _wire_form(request: dict[str, Any]) -> dict[str, Any] | None:
    """A recorded request in the v2 wire form; None when its prompt is no longer valid."""
    try:
        prompt = kling_o3.canonical_prompt(str(request.get("prompt", "")))
    except RequestRuleError:
        return None
    return kling_o3.workflow_body({**request, "prompt": prompt})


def _first_charge(entry: dict[str, Any], sent: str | None) -> None:
    """The v1 entry's submission, if it made one, as its first recorded charge."""
    when = entry.get("submitted_at") or entry.get("updated_at")
    submitted = entry.get("job_id") or entry.get("state") in ("uncertain", "submitting")
    if "submissions" in entry or not submitted or when is None:
        return
    charge = {"fingerprint": entry["fingerprint"], "submitted_at": when}
    charge["cost_usd"] = entry.get("cost_usd")
    for key in ("job_id", "billed_usd"):
        if entry.get(key) is not None:
            charge[key] = entry[key]
    if sent is not None:
        charge["sent"] = sent
    entry["submissions"] = [charge]


_STEPS: dict[int, Migration] = {1: _v1_to_v2}
