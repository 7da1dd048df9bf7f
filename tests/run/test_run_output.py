"""What `kling-batch run` prints: one line per event off a terminal, JSON for scripts."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.run.conftest import Project

LONG_ID = "launch-" + "-".join(f"variant{n:02d}" for n in range(14))


def test_events_are_one_line_each_whatever_their_length(
    make_project: Callable[..., Project],
) -> None:
    """Off a terminal, a render id far wider than 80 columns stays on one line with its job id."""
    assert len(LONG_ID) > 120
    project = make_project(
        f'version = 1\nname = "wide"\n\n[[shots]]\nid = "{LONG_ID}"\nprompt = "p"\nduration = 3\n'
    )
    result = project.run(env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    tail = LONG_ID[-12:]
    assert [line for line in lines if tail in line] == [line for line in lines if LONG_ID in line]
    submitted = [line for line in lines if re.search(rf"submitted\s+{LONG_ID}  job_\w+$", line)]
    assert len(submitted) == 1
    done = [line for line in lines if re.search(rf"done\s+{LONG_ID}  renders/{LONG_ID}.mp4$", line)]
    assert len(done) == 1
