"""State-folder files a stranger may have shaped (a repository that commits
`.kling-batch/`): a line of the result-URL journal or a remembered job nested too deep
for the JSON parser is a damaged cache entry, skipped, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from kling_batch.recall import read_job
from kling_batch.state import StateDir
from kling_batch.urls import ResultUrls

DEEP = "[" * 2_000 + "]" * 2_000  # past the parser's depth, within every size limit
SHA = "sha256:" + "a" * 64
GOOD = {"sha256": SHA, "url": "https://cdn.example/a.mp4", "expires_at": "2099-01-01T00:00:00Z"}


def test_a_deep_line_of_the_url_journal_is_skipped(tmp_path: Path) -> None:
    """The journal's other lines are still read."""
    journal = tmp_path / "urls.jsonl"
    journal.write_text(f"{DEEP}\n{json.dumps(GOOD)}\n")
    known = ResultUrls(journal).get(SHA)
    assert known is not None and known.url == GOOD["url"]


def test_a_deep_remembered_job_is_no_job(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    lock_file = tmp_path / "shots.lock"
    fingerprint = "sha256:" + "b" * 64
    path = state.remembered_job(lock_file, fingerprint)
    path.parent.mkdir(parents=True)
    path.write_text(DEEP)
    assert read_job(state, lock_file, fingerprint) is None
