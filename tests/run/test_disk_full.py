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
    assert f"  a: job {job}; recorded in {where}\n" in said.err
    assert "not recorded: cannot write" in said.out  # the run's summary, "a" pending
