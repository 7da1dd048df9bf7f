"""Caps that keep `plan` finite on a hostile manifest; each is far above any real project.

Manifests travel between people, and `plan` is promised safe to run on a stranger's. Each
cap turns a resource bomb (a hang, or memory exhausted) into a one-line error in seconds.
"""

from __future__ import annotations

_MB = 1024 * 1024

# Files read while planning. A manifest or included shot file of 10,000 shots is ~3 MB; a
# lockfile holds ~1 KB per render, so 512 MB is room for ~500,000 renders.
MANIFEST_MAX_BYTES = 10 * _MB
LOCKFILE_MAX_BYTES = 512 * _MB
# An `{% include %}`d template partial: prompt text, not data.
PARTIAL_MAX_BYTES = 1 * _MB
# The picks file `review` and `pick` keep beside the manifest: a line per picked render.
PICKS_MAX_BYTES = 64 * _MB

# Shot files one `include` glob may match: a file per render of the largest plan
# benchmarked (10,000 renders).
INCLUDE_MAX_FILES = 10_000

# Renders one plan may expand to (matrix × takes, summed over shots) unless
# `--max-renders` raises it: 10× the largest plan benchmarked (10,000 renders).
MAX_RENDERS = 100_000

# Characters of one rendered field (a prompt, an id, a path). The model reads prompts of a
# few hundred words; 100,000 characters is a short novel. Strings a template builds on the
# way (`'x' * n`, `a ~ b`, a filter's result) are held to the same size.
FIELD_MAX_CHARS = 100_000
# Items of one `range()` (Jinja's own sandbox allows 100,000) and of a list a template
# builds with `*` or `+`.
RANGE_MAX = 10_000
# Digits of an integer a template computes (`9 ** 999999999` would take minutes and GBs).
INT_MAX_DIGITS = 1_000
# Work one filter or method call may do, as (size of its input + 1) × (1 + its largest
# numeric or text argument): bounds `indent`, `center`, `replace`, `join` and the like,
# whose results grow with the product of the two.
CALL_MAX_WORK = 10_000_000
# Words `lipsum()` may generate (paragraphs × maximum words per paragraph).
LIPSUM_MAX_WORDS = 10_000
# Seconds one template may spend rendering (loops and calls check the clock), and all the
# templates of one plan together: a 100,000-render plan renders its templates in seconds.
RENDER_SECONDS = 1.0
TEMPLATES_SECONDS = 60.0

# A file name component as most file systems hold it (ext4, APFS, NTFS: 255 bytes).
NAME_MAX_BYTES = 255
