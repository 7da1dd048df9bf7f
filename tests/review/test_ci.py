"""CI provides the browser the gallery tests drive."""

from __future__ import annotations

import re

from tests.review.conftest import CHROMIUM, ROOT


def test_ci_installs_chromium_when_it_is_missing() -> None:
    """`.ci/run` installs Debian's chromium with apt-get, guarded by the path the tests launch."""
    script = (ROOT / ".ci" / "run").read_text()
    guard = script.index(f"if [ ! -x {CHROMIUM} ]")
    install = re.search(r"apt-get install -y -q chromium", script)
    assert install is not None and guard < install.start() < script.index("pytest")
