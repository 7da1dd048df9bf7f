"""`plan` of an edit to the manifest, planned against the up-to-date stamp (issue 13).

When only the manifest's files changed since a plan with nothing to do, `plan` plans the
shots the stamp does not know and counts the others unchanged (`plan.plan_edit`). Its
report must be the full plan's, byte for byte, and its exit code too: a render it called
unchanged that the full plan would render is a missed re-render, a money bug. So every
test here plans an edit through the command line, then removes the stamp and plans the
same project in full, and compares the two.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kling_batch import assets, uptodate
from kling_batch import manifest as manifest_module
from kling_batch import plan as plan_module
from kling_batch.cli import cli
from kling_batch.lockfile import load_lockfile
from kling_batch.lockname import lock_path
from kling_batch.state import StateDir
from tests.conftest import mark_done

MANIFEST = """
    budget_usd = 300
    include = ["shots/*.toml"]

    [vars]
    mood = "misty"

    [[shots]]
    id = "m-{{ n }}"
    matrix = { n = [LIST] }
    prompt = "{{ mood }} scene {{ n }}, {% include 'style.j2' %}"
    image = "img/a.png"
"""


def listed_shot(name: str, prompt: str, image: str = "img/a.png") -> str:
    return f'[[shots]]\nid = "{name}"\nprompt = "{prompt}"\nimage = "{image}"\n'


def shot_file(prefix: str, count: int) -> str:
    return "\n".join(listed_shot(f"{prefix}{n}", f"{prefix} shot {n}") for n in range(count))


class Counted:
    """Counts the full plans and the plans of an edit a command made, the shot tables an
    edit read, and the edits whose manifest could not be read shot by shot."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = self.edits = self.tables = self.unread = 0
        real_full, real_edit = plan_module.build_plan, plan_module.plan_edit
        real_table, real_unsettled = manifest_module._chunk_shot, plan_module.load_unsettled

        def table(*args: object, **kwargs: object) -> object:
            self.tables += 1
            return real_table(*args, **kwargs)  # type: ignore[arg-type]

        def unsettled(*args: object, **kwargs: object) -> object:
            read = real_unsettled(*args, **kwargs)  # type: ignore[arg-type]
            self.unread += read is None
            return read

        monkeypatch.setattr(manifest_module, "_chunk_shot", table)
        monkeypatch.setattr(plan_module, "load_unsettled", unsettled)

        def full(*args: object, **kwargs: object) -> object:
            self.full += 1
            return real_full(*args, **kwargs)  # type: ignore[arg-type]

        def edit(*args: object, **kwargs: object) -> object:
            planned = real_edit(*args, **kwargs)  # type: ignore[arg-type]
            self.edits += planned is not None
            return planned

        monkeypatch.setattr(plan_module, "build_plan", full)
        monkeypatch.setattr(plan_module, "plan_edit", edit)


@pytest.fixture(autouse=True)
def settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uptodate, "SETTLE_NS", 0)


@pytest.fixture
def stamped(project: Callable[..., Path], image: Callable[[str], Path], tmp_path: Path) -> Path:
    """100 matrix renders and 20 listed shots in two included files, one of whose prompts
    reads the render index, one with an input of a suffix that warns; all done, stamped."""
    image("img/a.png")
    image("img/b.png").write_bytes((tmp_path / "img" / "a.png").read_bytes() + b"b")
    image("img/odd.gif")
    (tmp_path / "style.j2").write_text("golden hour")
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots" / "a.toml").write_text(shot_file("a", 10))
    b_shots = shot_file("b", 9) + "\n" + listed_shot("b9", "number {{ shot.index }}", "img/odd.gif")
    (tmp_path / "shots" / "b.toml").write_text(b_shots)
    path = project(MANIFEST.replace("LIST", ", ".join(map(str, range(100)))))
    mark_done(path)
    first = plan(path)
    assert first.exit_code == 0, first.output
    assert "120 unchanged" in first.stdout
    assert "warning: b9: img/odd.gif" in first.stdout
    assert stamp_of(path).is_file()
    return path


def stamp_of(path: Path) -> Path:
    return StateDir(path.parent).uptodate(lock_path(path))


def plan(path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["plan", str(path), *args])


def counted(path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[Result, Counted]:
    with monkeypatch.context() as patch:
        counts = Counted(patch)
        result = plan(path, *args)
    return result, counts


def same_as_full(path: Path, monkeypatch: pytest.MonkeyPatch, *, edit: bool = True) -> Result:
    """`plan --check` of the project as it is, then again with the stamp removed: the same
    output and exit code. `edit`: the first was planned as an edit (else in full)."""
    first, counts = counted(path, monkeypatch, "--check")
    assert (counts.edits, counts.full) == ((1, 0) if edit else (0, 1)), first.output
    stamp_of(path).unlink(missing_ok=True)
    full, counts = counted(path, monkeypatch, "--check")
    assert counts.full == 1
    assert (first.exit_code, first.output) == (full.exit_code, full.output)
    return first


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def listed(stdout: str, symbol: str, render_id: str) -> bool:
    """True when the table lists `render_id` with the action `symbol`."""
    return re.search(rf"^{re.escape(symbol)}\s+{re.escape(render_id)}\s", stdout, re.M) is not None


def test_a_prompt_edited_is_planned_alone(stamped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The edited shot changed, every other render unchanged, as the full plan says."""
    rewrite(stamped.parent / "shots" / "a.toml", "a shot 3", "a shot 3 at dawn")
    result = same_as_full(stamped, monkeypatch)
    assert result.exit_code == 1
    assert listed(result.stdout, "~", "a3")
    assert "Plan: 1 to render ($1.40), 119 unchanged" in result.stdout


def test_an_edit_reads_only_the_shots_the_stamp_does_not_know(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of the 21 shot tables, the edit reads and validates the edited one alone."""
    rewrite(stamped.parent / "shots" / "a.toml", "a shot 3", "a shot 3 at dawn")
    result, counts = counted(stamped, monkeypatch, "--check")
    assert (counts.edits, counts.tables, counts.unread) == (1, 1, 0), result.output
    assert listed(result.stdout, "~", "a3")


def test_an_edit_keeps_the_hash_cache_whole(stamped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The edit reads only its own files' rows of the hash cache and hashes the image no
    render used before, but leaves the cache whole: the full plan after it hashes no other
    file."""
    monkeypatch.setattr(assets, "_RACY_NS", 0)  # the files were written a moment ago
    hashed: list[str | Path] = []
    real_hash = assets.sha256_file
    monkeypatch.setattr(assets, "sha256_file", lambda path: hashed.append(path) or real_hash(path))
    EDITS["another image"](stamped.parent)
    result = same_as_full(stamped, monkeypatch)
    assert listed(result.stdout, "~", "a6")
    assert hashed and {Path(path).name for path in hashed} == {"b.png"}


def test_an_edit_finds_its_files_in_the_hash_cache(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The edit searches the hash cache for its shot's image and output rather than read
    it whole (once, after its shots are expanded), and finds them: it hashes no file."""
    monkeypatch.setattr(assets, "_RACY_NS", 0)  # the files were written a moment ago
    hashed: list[str | Path] = []
    real_hash = assets.sha256_file
    monkeypatch.setattr(assets, "sha256_file", lambda path: hashed.append(path) or real_hash(path))
    searched: list[list[str]] = []
    real_search = assets._rows_of
    monkeypatch.setattr(
        assets,
        "_rows_of",
        lambda data, keys: searched.append(sorted(keys)) or real_search(data, keys),
    )
    rewrite(stamped.parent / "shots" / "a.toml", "a shot 3", "a shot 3 at dawn")
    result, counts = counted(stamped, monkeypatch, "--check")
    assert counts.edits == 1 and listed(result.stdout, "~", "a3"), result.output
    assert len(searched) == 1 and {"img/a.png", "renders/a3.mp4"} <= set(searched[0])
    assert hashed == []


def test_a_stamped_shot_whose_index_moved_is_read_to_be_planned(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shot added to the file before b9's, whose prompt reads the render index: b9 is
    read after all (its text and place are the stamp's, its index is not), planned afresh
    and changed. Read: a10, a9 (its table's text gained the line before a10) and b9."""
    shots = stamped.parent / "shots" / "a.toml"
    shots.write_text(shots.read_text() + "\n" + listed_shot("a10", "a shot 10"))
    result, counts = counted(stamped, monkeypatch, "--check")
    assert (counts.edits, counts.tables, counts.unread) == (1, 3, 0), result.output
    assert listed(result.stdout, "~", "b9") and listed(result.stdout, "+", "a10")
    same_as_full(stamped, monkeypatch)


def test_a_shot_file_not_cut_into_tables_is_read_whole_for_an_edit(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt holding a `[[shots]]` line in a multi-line string: the file cannot be cut
    at its headers, so the edit reads the manifest whole, and plans as the full plan."""
    (stamped.parent / "shots" / "c.toml").write_text(
        '[[shots]]\nid = "c0"\nprompt = """one\n[[shots]]\ntwo"""\nimage = "img/a.png"\n'
    )
    result, counts = counted(stamped, monkeypatch, "--check")
    assert (counts.edits, counts.unread) == (1, 1), result.output
    assert listed(result.stdout, "+", "c0")
    same_as_full(stamped, monkeypatch)


def test_a_touched_manifest_is_stamped_again_by_its_edit(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shot file written again as it was, and a comment added to the manifest: the first
    check plans it as an edit (nothing to do), the next is answered from the stamp again,
    and a real edit after that is still planned and flagged."""
    shots = stamped.parent / "shots" / "a.toml"
    shots.write_text(shots.read_text())
    stamped.write_text("# reviewed\n" + stamped.read_text())
    result, counts = counted(stamped, monkeypatch, "--check")
    assert (counts.edits, counts.full, result.exit_code) == (1, 0, 0), result.output
    again, counts = counted(stamped, monkeypatch, "--check")
    assert (counts.edits, counts.full, again.output) == (0, 0, result.output)
    rewrite(shots, "a shot 3", "a shot 3 at dawn")
    edited, counts = counted(stamped, monkeypatch, "--check")
    assert (counts.edits, edited.exit_code) == (1, 1) and listed(edited.stdout, "~", "a3")


def test_a_manifest_changed_just_before_its_edit_is_not_stamped_again(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file changed within the settling time of the plan that read it: the edit is not
    stamped (the file may change again unseen in the same clock tick), so the next check
    plans it as an edit again."""
    shots = stamped.parent / "shots" / "a.toml"
    shots.write_text(shots.read_text())
    monkeypatch.setattr(uptodate, "SETTLE_NS", 3600 * 10**9)
    for _ in range(2):
        result, counts = counted(stamped, monkeypatch, "--check")
        assert (counts.edits, counts.full, result.exit_code) == (1, 0, 0), result.output


def test_an_edit_with_a_shot_removed_is_not_stamped_again(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last shot removed leaves its render an orphan and nothing to do: not the stamped
    plan, so not stamped as it; each check plans it as an edit again, orphan and all."""
    b9 = listed_shot("b9", "number {{ shot.index }}", "img/odd.gif")
    in_file("shots/b.toml", "\n" + b9, "")(stamped.parent)
    for _ in range(2):
        result, counts = counted(stamped, monkeypatch, "--check")
        assert (counts.edits, counts.full, result.exit_code) == (1, 0, 0), result.output
        assert "b9 (done): in the lockfile, no longer in the manifest" in result.stdout


def test_the_stamp_stays_for_the_next_edit(stamped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An edit planned against the stamp leaves it: a second edit is planned so too, and
    the edit undone is nothing to do."""
    shots = stamped.parent / "shots" / "a.toml"
    rewrite(shots, "a shot 3", "a shot 3 at dawn")
    assert counted(stamped, monkeypatch, "--check")[1].edits == 1
    rewrite(shots, "a shot 5", "a shot 5 at dusk")
    result, counts = counted(stamped, monkeypatch, "--check")
    assert (counts.edits, result.exit_code) == (1, 1)
    assert listed(result.stdout, "~", "a3") and listed(result.stdout, "~", "a5")
    shots.write_text(shot_file("a", 10))
    result, counts = counted(stamped, monkeypatch, "--check")
    assert (counts.edits, counts.full, result.exit_code) == (1, 0, 0), result.output
    assert "Plan: 0 to render ($0.00), 120 unchanged" in result.stdout


Edit = Callable[[Path], None]


def in_file(name: str, old: str, new: str) -> Edit:
    """An edit: `old` replaced by `new` in the project's file `name`."""
    return lambda root: rewrite(root / name, old, new)


def shot_in_a(name: str, *, then: str) -> Edit:
    """An edit: shot `name` of shots/a.toml given the lines `then` after its id."""
    return in_file("shots/a.toml", f'id = "{name}"', f'id = "{name}"\n{then}')


def _same_request_twice(root: Path) -> None:
    """a2 asks for b7's request; b7's source edited too (both planned afresh)."""
    rewrite(root / "shots" / "a.toml", "a shot 2", "b shot 7")
    rewrite(root / "shots" / "b.toml", "b shot 7", "b shot 7 ")


def _image_of(name: str, image: str) -> Edit:
    return in_file(
        "shots/a.toml",
        f'id = "{name}"\nprompt = "a shot {name[1:]}"\nimage = "img/a.png"',
        f'id = "{name}"\nprompt = "a shot {name[1:]}"\nimage = "{image}"',
    )


def _write(name: str, text: str) -> Edit:
    return lambda root: (root / name).write_text(text)


EDITS: dict[str, Edit] = {
    "shot renamed": in_file("shots/a.toml", 'id = "a4"', 'id = "a4x"'),
    "shot removed": in_file("shots/a.toml", listed_shot("a9", "a shot 9"), ""),
    "shot added": in_file(
        "shots/a.toml", 'id = "a0"', 'id = "new"\nprompt = "new"\n\n[[shots]]\nid = "a0"'
    ),
    "shot disabled": shot_in_a("a2", then="enabled = false"),
    "two shots swapped": _write(
        "shots/a.toml",
        "\n".join(listed_shot(f"a{n}", f"a shot {n}") for n in (1, 0, *range(2, 10))),
    ),
    "request of another shot": in_file("shots/a.toml", "a shot 2", "a shot 1"),
    "the same request twice": _same_request_twice,
    "another image": _image_of("a6", "img/b.png"),
    "a warned input added": _image_of("a8", "img/odd.gif"),
    "index of a later shot moved": in_file(
        "shots/b.toml", 'id = "b0"', 'id = "b00"\nprompt = "x"\n\n[[shots]]\nid = "b0"'
    ),
    "shot file removed": lambda root: (root / "shots" / "a.toml").unlink(),
    "shot file added": _write("shots/c.toml", shot_file("c", 3)),
    "over the budget": _write("shots/c.toml", shot_file("c", 300)),
    "every listed shot": _write("shots/a.toml", shot_file("a", 10).replace(" shot ", " take ")),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_an_edit_plans_as_the_full_plan_does(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, edit: Edit
) -> None:
    edit(stamped.parent)
    same_as_full(stamped, monkeypatch)


FULL: dict[str, Edit] = {
    "a var": in_file("manifest.toml", 'mood = "misty"', 'mood = "sunny"'),
    "the budget": in_file("manifest.toml", "budget_usd = 300", "budget_usd = 1"),
    "a partial": _write("style.j2", "blue hour"),
    "an input": lambda root: (root / "img" / "odd.gif").write_bytes(b"another picture"),
    "an output": lambda root: (root / "renders" / "a1.mp4").unlink(),
    "the lockfile": lambda root: _forget(root, "a1"),
    "a duplicate id": in_file("shots/a.toml", 'id = "a4"', 'id = "a5"'),
    "a shared output": shot_in_a("a4", then='output = "a5.mp4"'),
    "a template error": in_file("shots/a.toml", "a shot 4", "{{ nope }}"),
}


def _forget(root: Path, render_id: str) -> None:
    lock = load_lockfile(root / "manifest.lock")
    del lock.shots[render_id]
    lock.save(root / "manifest.lock")


@pytest.mark.parametrize("edit", FULL.values(), ids=FULL.keys())
def test_a_change_beyond_the_manifest_or_an_error_plans_in_full(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, edit: Edit
) -> None:
    """What the stamped shots depend on changed (the shared context, a partial, a file
    the stamp watches), or the manifest has an error: planned (or refused) in full."""
    rewrite(stamped.parent / "shots" / "a.toml", "a shot 3", "a shot 3 at dawn")
    edit(stamped.parent)
    same_as_full(stamped, monkeypatch, edit=False)


def test_more_renders_than_an_edit_plans_afresh_plans_in_full(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan_module, "EDIT_RENDERS", 2)
    (stamped.parent / "shots" / "c.toml").write_text(shot_file("c", 3))
    same_as_full(stamped, monkeypatch, edit=False)


@pytest.fixture
def seeded() -> Iterator[random.Random]:
    yield random.Random(13)


def test_random_edits_plan_as_the_full_plan_does(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, seeded: random.Random
) -> None:
    """Edits drawn at random, one after another on the same stamp (shots renamed,
    reordered, retitled, given another image, duplicated, removed): each planned as an
    edit or in full, always as the full plan plans it."""
    root = stamped.parent
    shots = {"a": [(f"a{n}", f"a shot {n}", "img/a.png") for n in range(10)]}
    edits = 0
    for _ in range(12):
        rows = shots["a"]
        n = seeded.randrange(len(rows))
        name, prompt, picture = rows[n]
        choice = seeded.randrange(5)
        if choice == 0:
            rows[n] = (name + "x", prompt, picture)
        elif choice == 1:
            rows.insert(seeded.randrange(len(rows) + 1), rows.pop(n))
        elif choice == 2:
            rows[n] = (name, seeded.choice(["a shot 1", "b shot 2", prompt + "!"]), picture)
        elif choice == 3:
            rows[n] = (name, prompt, seeded.choice(["img/a.png", "img/b.png", "img/odd.gif"]))
        elif len(rows) > 3:
            del rows[n]
        text = "\n".join(listed_shot(*row) for row in rows)
        (root / "shots" / "a.toml").write_text(text)
        first, counts = counted(stamped, monkeypatch, "--check")
        edits += counts.edits
        kept = stamp_of(stamped).read_bytes()
        stamp_of(stamped).unlink()
        full, _ = counted(stamped, monkeypatch, "--check")
        assert (first.exit_code, first.output) == (full.exit_code, full.output), text
        stamp_of(stamped).write_bytes(kept)  # the next edit against the first stamp
    assert edits >= 6, "most edits were not planned as edits"


def test_a_lockfile_written_while_an_edit_is_planned_plans_in_full(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run writing the lockfile after the stamp was looked at, before the edit's plan
    read it: the stamp's shots would be counted unchanged by the lockfile they were
    stamped with and the edited ones decided by the new one. m-5, failed meanwhile, was
    counted unchanged where the full plan retries it (and charges for it)."""
    root = stamped.parent
    rewrite(root / "shots" / "a.toml", "a shot 3", "a shot 3 at dawn")
    real, raced = plan_module._Project.read_lock, []

    def racing(self: plan_module._Project) -> object:
        if not raced:
            raced.append(True)
            lock = load_lockfile(root / "manifest.lock")
            failed = lock.shots["m-5"].model_copy(update={"state": "failed", "error": "boom"})
            lock.shots["m-5"] = failed
            lock.save(root / "manifest.lock")
        return real(self)

    monkeypatch.setattr(plan_module._Project, "read_lock", racing)
    result = same_as_full(stamped, monkeypatch, edit=False)
    assert raced and listed(result.stdout, "!", "m-5")
    assert "Plan: 2 to render ($2.80), 118 unchanged" in result.stdout


def test_an_edit_over_max_renders_counted_as_the_full_plan_is_refused(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--max-renders` counts a matrix's `exclude`d combinations too: a stamped shot of 3
    combinations, 1 excluded, counts 3, so one shot added goes over the limit and is
    refused (exit 2) as the full plan refuses it, not planned with the 2 it renders."""
    root = stamped.parent
    (root / "shots" / "c.toml").write_text(
        '[[shots]]\nid = "c-{{ k }}"\nprompt = "c {{ k }}"\nimage = "img/a.png"\n'
        "matrix = { k = [1, 2, 3], exclude = [{ k = 3 }] }\n"
    )
    mark_done(stamped)
    stamp_of(stamped).unlink()
    assert plan(stamped, "--max-renders", "123").exit_code == 0
    assert stamp_of(stamped).is_file()
    (root / "shots" / "d.toml").write_text(listed_shot("d0", "d shot 0"))
    first, _ = counted(stamped, monkeypatch, "--check", "--max-renders", "123")
    stamp_of(stamped).unlink()
    full = plan(stamped, "--check", "--max-renders", "123")
    assert full.exit_code == 2, full.output
    assert (first.exit_code, first.output) == (full.exit_code, full.output)
