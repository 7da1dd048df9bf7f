"""A run whose lockfile cannot be written (a full disk) stops, and says which jobs it
submitted and where each is recorded: none may be lost unseen. In process, against the
bundled emulator."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kling_batch.atomic import atomic_write
from kling_batch.errors import RunError
from kling_batch.runner import RunRequest, run_command

ONE = '[[shots]]\nid = "a"\nprompt = "a lighthouse"\nmodel_tier = "standard"\nduration = 3\n'


def test_a_run_that_cannot_record_its_job_names_it_and_where_it_is_remembered(
    project: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The disk fills as the job of shot "a" is answered: the run exits 1 ("cannot write to
    disk") after its summary, naming the job and the remembered-jobs file that holds it."""
    path = project(ONE)

    def full_disk(target: Path, data: str | list[str], **options: int | None) -> None:
        if 'state = "submitted"' in "".join(data):
            raise OSError(28, "No space left on device")
        atomic_write(target, data, **options)

    monkeypatch.setattr("kling_batch.lockfile.atomic_write", full_disk)
    with pytest.raises(RunError, match="cannot write to disk") as raised:
        run_command(RunRequest(path, emulator=True, yes=True))
    assert raised.value.exit_code == 1
    (memo,) = (path.parent / ".kling-batch" / "jobs").glob("*/*")
    job = json.loads(memo.read_text())["job_id"]
    said = capsys.readouterr()
    where = memo.relative_to(path.parent).as_posix()
    unanswered = "unanswered in manifest.emulator.lock (the next run looks for its job in"
    assert f"  a: job {job}; recorded in {where}; {unanswered} the job list)\n" in said.err
    assert "not recorded: cannot write" in said.out  # the run's summary, "a" pending


def test_a_job_whose_answer_could_not_be_written_is_named_as_its_submission_is_recorded(
    project: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The disk fills after `submitting` was saved: neither the lockfile nor the remembered
    job can take the answer, but both record the submission (unanswered, which the next run
    looks up in the job list), and the run says so rather than "nowhere on disk"."""
    path = project(ONE)

    def full_disk(target: Path, data: str | list[str], **options: int | None) -> None:
        text = "".join(data)
        if 'state = "submitted"' in text or '"job_id": "' in text:
            raise OSError(28, "No space left on device")
        atomic_write(target, data, **options)

    monkeypatch.setattr("kling_batch.lockfile.atomic_write", full_disk)
    monkeypatch.setattr("kling_batch.recall.atomic_write", full_disk)
    with pytest.raises(RunError, match="cannot write to disk"):
        run_command(RunRequest(path, emulator=True, yes=True))
    (memo,) = (path.parent / ".kling-batch" / "jobs").glob("*/*")
    assert json.loads(memo.read_text())["job_id"] is None  # the unanswered submission
    said = capsys.readouterr().err
    where = memo.relative_to(path.parent).as_posix()
    places = f"manifest.emulator.lock, {where}"
    assert f"; recorded unanswered in {places} (the next run looks for its job in" in said
