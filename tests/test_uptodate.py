"""`plan` answered from its up-to-date stamp (issue 13): fast when nothing changed, and
never when anything did.

Each test makes a project of 121 done renders (more than the table lists when
unchanged), plans it once so the stamp is written, changes one thing and plans again
through the command line. A spy on `build_plan` tells a stamped answer (no planning) from
a full plan. The stamp trusts only files whose change time is `SETTLE_NS` before a plan
began; the tests set that to zero (their files were all written a moment ago), except
where the rule itself is tested.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kling_batch import plan as plan_module
from kling_batch import uptodate
from kling_batch.cli import cli
from kling_batch.lockfile import load_lockfile
from kling_batch.lockname import lock_path
from kling_batch.plan import Plan
from kling_batch.state import StateDir
from tests.conftest import EXAMPLES, mark_done

RENDERS = 120  # matrix renders, plus one included shot
REAL_SETTLE_NS = uptodate.SETTLE_NS
SHOTS = f"""
    budget_usd = 500
    include = ["more/**/*.toml"]

    [vars]
    mood = "misty"

    [[shots]]
    id = "c-{{{{ n }}}}"
    matrix = {{ n = {list(range(RENDERS))} }}
    prompt = "{{{{ mood }}}} scene {{{{ n }}}}, {{% include 'style.j2' %}}"
    image = "{{{{ 'img/a.png' if n < 60 else 'img/b.png' }}}}"
    output = "{{{{ n // 10 }}}}/{{{{ n }}}}.mp4"
"""


class Spy:
    """Counts the full plans made (`build_plan` calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, after: Callable[[], None] | None) -> None:
        self.plans = 0
        real = plan_module.build_plan

        def spied(*args: object, **kwargs: object) -> Plan:
            self.plans += 1
            plan = real(*args, **kwargs)  # type: ignore[arg-type]
            if after is not None:
                after()
            return plan

        monkeypatch.setattr(plan_module, "build_plan", spied)


@pytest.fixture(autouse=True)
def settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uptodate, "SETTLE_NS", 0)


@pytest.fixture
def stamped(
    project: Callable[..., Path], image: Callable[[str], Path], tmp_path: Path
) -> Iterator[Path]:
    """A project whose 121 renders are done, planned once since: its stamp is written."""
    image("img/a.png")
    shutil.copy(image("img/a.png"), tmp_path / "img" / "b.png")
    (tmp_path / "img" / "b.png").write_bytes(b"another picture")
    (tmp_path / "style.j2").write_text("golden hour")
    (tmp_path / "more" / "deeper").mkdir(parents=True)
    (tmp_path / "more" / "x.toml").write_text('[[shots]]\nid = "x"\nprompt = "a fox"\n')
    path = project(SHOTS)
    mark_done(path)
    first = plan(path)
    assert first.exit_code == 0, first.output
    assert "121 unchanged" in first.stdout
    assert StateDir(tmp_path).uptodate(lock_path(path)).is_file()
    yield path


def plan(path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["plan", str(path), *args])


def plan_spied(
    path: Path, monkeypatch: pytest.MonkeyPatch, *args: str, after: Callable[[], None] | None = None
) -> tuple[Result, int]:
    """`plan` through the command line, and how many full plans it made."""
    with monkeypatch.context() as patch:
        spy = Spy(patch, after)
        result = plan(path, *args)
    return result, spy.plans


def refused_in_full(path: Path, monkeypatch: pytest.MonkeyPatch, needle: str) -> None:
    """`plan --check` planned in full (the stamp did not answer) and refused the project
    with exit 2, saying `needle`."""
    result, plans = plan_spied(path, monkeypatch, "--check")
    assert (result.exit_code, plans) == (2, 1), result.output
    assert needle in result.output


def same_size_edit(path: Path, data: bytes) -> None:
    """Rewrite a file with other bytes of the same length, its modification time put back
    (as a careless copy or a tool that keeps times would)."""
    info = path.stat()
    assert len(data) == info.st_size
    path.write_bytes(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_nothing_changed_is_answered_from_the_stamp(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same report, the budget line too, without planning; `--check` says 0."""
    full = plan(stamped)
    result, plans = plan_spied(stamped, monkeypatch, "--check")
    assert (result.exit_code, plans) == (0, 0)
    assert result.stdout == full.stdout
    assert "Budget: $0.00 to run of $500.00" in result.stdout


def test_other_reports_and_options_plan_in_full(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JSON, `--only`, `--emulator` and another `--max-renders` are not the stamped answer."""
    for args in (["--format", "json"], ["--only", "c-1"], ["--emulator"], ["--max-renders", "9"]):
        result, plans = plan_spied(stamped, monkeypatch, *args)
        assert plans == 1, args
    result, _ = plan_spied(stamped, monkeypatch, "--max-renders", "9")
    assert result.exit_code == 2
    assert "over the limit of 9" in result.output


def _edit_asset(root: Path) -> None:
    data = (root / "img" / "b.png").read_bytes()
    same_size_edit(root / "img" / "b.png", data.upper())


def _edit_output(root: Path) -> None:
    same_size_edit(root / "renders" / "3" / "35.mp4", b"c-99")


def _delete_output(root: Path) -> None:
    (root / "renders" / "3" / "35.mp4").unlink()


def _edit_lockfile(root: Path) -> None:
    """c-35 recorded as failed, by hand."""
    lock = load_lockfile(root / "manifest.lock")
    lock.shots["c-35"] = lock.shots["c-35"].model_copy(update={"state": "failed"})
    lock.save(root / "manifest.lock")


def _edit_manifest(root: Path) -> None:
    manifest = root / "manifest.toml"
    manifest.write_text(manifest.read_text().replace("scene {{ n }}", "shot {{ n }}"))


def _edit_partial(root: Path) -> None:
    same_size_edit(root / "style.j2", b"golden HOUR")


def _add_included_file(root: Path) -> None:
    (root / "more" / "y.toml").write_text('[[shots]]\nid = "y"\nprompt = "an owl"\n')


def _add_included_file_deeper(root: Path) -> None:
    """A match in a folder no stamped file is in: only matching the glob again finds it."""
    (root / "more" / "deeper" / "y.toml").write_text('[[shots]]\nid = "y"\nprompt = "an owl"\n')


def _repoint_asset_folder(root: Path) -> None:
    """`img` becomes a link to a copy whose b.png differs (its own facts unchanged)."""
    shutil.copytree(root / "img", root / "img-v2", copy_function=shutil.copy2)
    same_size_edit(root / "img-v2" / "b.png", b"ANOTHER PICTURE")
    shutil.rmtree(root / "img")
    (root / "img").symlink_to("img-v2")


def listed(stdout: str, symbol: str, render_id: str) -> bool:
    """True when the table lists `render_id` with the action `symbol`."""
    return re.search(rf"^{re.escape(symbol)}\s+{re.escape(render_id)}\s", stdout, re.M) is not None


@pytest.mark.parametrize(
    ("change", "symbol", "render_id", "in_full"),
    [
        (_edit_asset, "~", "c-60", 1),
        (_edit_output, "~", "c-35", 1),
        (_delete_output, "~", "c-35", 1),
        (_edit_lockfile, "!", "c-35", 1),
        (_edit_partial, "~", "c-0", 1),
        (_repoint_asset_folder, "~", "c-60", 1),
        (_edit_manifest, "~", "c-0", 0),
        (_add_included_file, "+", "y", 0),
        (_add_included_file_deeper, "+", "y", 0),
    ],
)
def test_every_change_is_planned(
    stamped: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Path], None],
    symbol: str,
    render_id: str,
    in_full: int,
) -> None:
    """A change the stamp's file facts must notice: the plan is made and reports it. A
    change to the manifest's files alone is planned as an edit against the stamp
    (`plan.plan_edit`, tested against the full plan in test_edit_plan.py), the others in
    full."""
    change(stamped.parent)
    result, plans = plan_spied(stamped, monkeypatch, "--check")
    assert (result.exit_code, plans) == (1, in_full), result.output
    assert listed(result.stdout, symbol, render_id), result.stdout


@pytest.mark.parametrize("change", [None, _edit_output], ids=["nothing", "an output"])
def test_file_facts_digested_in_pieces_read_as_digested_whole(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None] | None
) -> None:
    """The stamp's facts digested a few files at a time (seven here; the stamp was written
    with all of them in one piece) still answer an unchanged project from the stamp, and
    still notice an output edited among the others."""
    monkeypatch.setattr(uptodate, "_DIGESTED", 7)
    if change is not None:
        change(stamped.parent)
    result, plans = plan_spied(stamped, monkeypatch, "--check")
    assert (result.exit_code, plans) == ((0, 0) if change is None else (1, 1)), result.output


def test_output_folder_swapped_for_a_link_outside_is_refused(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The outputs moved out of the project and linked back (every file as it was): the
    full plan refuses the folder, as without a stamp."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    (tmp_path / "renders" / "3").rename(outside)
    (tmp_path / "renders" / "3").symlink_to(outside)
    refused_in_full(stamped, monkeypatch, "must be a relative file path inside output_dir")


def test_a_twin_manifest_is_refused(stamped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`manifest.json` beside `manifest.toml` would share its lockfile: refused, stamp or
    not."""
    (stamped.parent / "manifest.json").write_text("{}")
    result, _ = plan_spied(stamped, monkeypatch, "--check")
    assert result.exit_code == 2
    assert "would share one lockfile" in result.output


def test_a_file_saved_while_planning_is_not_stamped(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image saved (same size, same modification time) after the plan read it and
    before the stamp is written: the stamp is not written, so the next plan sees it."""
    (stamped.parent / "renders" / "3" / "35.mp4").unlink()  # a plan with work: no stamp
    result, plans = plan_spied(stamped, monkeypatch, "--check")
    assert (result.exit_code, plans) == (1, 1)
    mark_done(stamped)
    result, plans = plan_spied(
        stamped, monkeypatch, "--check", after=lambda: _edit_asset(stamped.parent)
    )
    assert (result.exit_code, plans) == (0, 1)  # what it read was all done
    result, plans = plan_spied(stamped, monkeypatch, "--check")
    assert (result.exit_code, plans) == (1, 1), "the image saved during the plan was missed"
    assert listed(result.stdout, "~", "c-60"), result.stdout


def test_files_changed_just_before_the_plan_are_not_stamped(
    stamped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the real rule, files written a moment ago (this test's) are not trusted: the
    plan is made in full each time and no stamp is kept."""
    monkeypatch.setattr(uptodate, "SETTLE_NS", REAL_SETTLE_NS)
    _edit_manifest(stamped.parent)
    mark_done(stamped)
    for _ in range(2):
        result, plans = plan_spied(stamped, monkeypatch, "--check")
        assert (result.exit_code, plans) == (0, 1)
    assert not StateDir(stamped.parent).uptodate(lock_path(stamped)).exists()


def test_orphans_are_in_the_stamped_answer(stamped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A done render no longer in the manifest is listed by the stamped answer as by the
    full plan that made it."""
    lock = load_lockfile(lock_path(stamped))
    (stamped.parent / "more" / "x.toml").write_text('[[shots]]\nid = "z"\nprompt = "a fox"\n')
    entry = lock.shots["x"]
    assert entry.state == "done"
    full, _ = plan_spied(stamped, monkeypatch)
    assert "- x (done): in the lockfile, no longer in the manifest" in full.stdout
    mark_done(stamped)
    full, plans = plan_spied(stamped, monkeypatch)
    again, stamped_plans = plan_spied(stamped, monkeypatch)
    assert (plans, stamped_plans) == (1, 0)
    assert again.stdout == full.stdout
    assert "- x (done): in the lockfile, no longer in the manifest" in again.stdout


LOADED = """
import sys
from kling_batch import uptodate
uptodate.SETTLE_NS = 0
from kling_batch.cli import main
sys.argv = ["kling-batch", "plan", sys.argv[1]]
try:
    main()
except SystemExit:
    pass
print(" ".join(name for name in ("kling_batch.plan", "httpx") if name in sys.modules))
"""


def loaded_by_plan(path: Path) -> set[str]:
    """Which of planning's and the HTTP client's modules a `plan` process loaded."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED, str(path)], capture_output=True, text=True, check=True
    )
    return set(done.stdout.splitlines()[-1].split())


def test_a_stamped_answer_loads_no_planning_and_an_edit_no_http_client(stamped: Path) -> None:
    """What keeps `plan` on every save cheap: answered from the stamp, it does not load
    the planning modules; planning an edit does not load the HTTP client (it is loaded
    only to tell which API made a cached render there is to restore)."""
    assert loaded_by_plan(stamped) == set()
    _edit_manifest(stamped.parent)
    assert loaded_by_plan(stamped) == {"kling_batch.plan"}


def _restamp(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan in full (nothing to do) so the stamp holds the project as it now is."""
    result, plans = plan_spied(path, monkeypatch, "--check")
    assert (result.exit_code, plans) == (0, 1), result.output
    result, plans = plan_spied(path, monkeypatch, "--check")
    assert (result.exit_code, plans) == (0, 0), "not stamped"


@pytest.mark.parametrize("folder", ["img", "renders"])
def test_a_linked_folder_whose_target_moves_out_is_refused(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, folder: str
) -> None:
    """`img` (or `renders`) is a link to `pool`, a folder of the project; `pool` is moved
    out of the project and linked back, every file in it as it was: refused, as a full
    plan refuses it."""
    (tmp_path / folder).rename(tmp_path / "pool")
    (tmp_path / folder).symlink_to("pool")
    _restamp(stamped, monkeypatch)
    outside = tmp_path.parent / f"{tmp_path.name}-pool"
    (tmp_path / "pool").rename(outside)
    (tmp_path / "pool").symlink_to(outside)
    refused_in_full(stamped, monkeypatch, "outside")


def test_an_input_named_through_a_link_and_dotdot_is_checked(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`link/../b.png` where `link` leads into `img/deeper`: the file read is
    `img/b.png` (the link first, then `..`), and its change is caught."""
    (tmp_path / "img" / "deeper").mkdir()
    (tmp_path / "link").symlink_to("img/deeper")
    stamped.write_text(stamped.read_text().replace("'img/b.png'", "'link/../b.png'"))
    mark_done(stamped)
    plan_spied(stamped, monkeypatch, "--check")
    _edit_asset(tmp_path)
    result, _ = plan_spied(stamped, monkeypatch, "--check")
    assert result.exit_code == 1, result.output
    assert listed(result.stdout, "~", "c-60"), result.stdout


def test_a_missing_input_the_workflow_does_not_send_is_refused(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A text-to-video shot that names an image (not sent, a warning says), alone in its
    folder: the image deleted is refused by the next plan, stamped, cached or cold alike."""
    (tmp_path / "more" / "x.toml").write_text(
        '[[shots]]\nid = "x"\nprompt = "a fox"\nworkflow = "t2v"\nimage = "spare/unused.png"\n'
    )
    (tmp_path / "spare").mkdir()
    shutil.copy(tmp_path / "img" / "a.png", tmp_path / "spare" / "unused.png")
    mark_done(stamped)
    _restamp(stamped, monkeypatch)
    (tmp_path / "spare" / "unused.png").unlink()
    refused_in_full(stamped, monkeypatch, "spare/unused.png")


def test_a_stale_stamp_of_a_removed_include_does_not_stand_in_the_way(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The included shot moved into the manifest and its folder removed: the stamp's
    old globs match nothing, and the plan goes on without them."""
    text = stamped.read_text().replace('include = ["more/**/*.toml"]\n', "")
    stamped.write_text(text + '\n[[shots]]\nid = "x"\nprompt = "a fox"\n')
    shutil.rmtree(tmp_path / "more")
    result, _ = plan_spied(stamped, monkeypatch, "--check")
    assert result.exit_code == 0, result.output
    assert "121 unchanged" in result.stdout


def test_a_manifest_named_relative_to_the_working_folder_is_answered(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`plan manifest.toml` from the project's folder uses the stamp (its partials are
    found from the same folder, however it is named)."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result, plans = plan_spied(Path("manifest.toml"), monkeypatch, "--check")
        assert (result.exit_code, plans) == (0, 0), result.output


def test_a_link_met_halfway_pointed_elsewhere_is_refused(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`img/b.png` links to `../lnk/b.png` and `lnk` to `store`. `lnk` is then pointed
    outside the project, at a folder holding the same file (a hard link made before the
    stamp, so its facts are the same): the link met halfway is stamped too, and the plan
    refuses the image as a full plan does."""
    (tmp_path / "store").mkdir()
    (tmp_path / "img" / "b.png").rename(tmp_path / "store" / "b.png")
    (tmp_path / "lnk").symlink_to("store")
    (tmp_path / "img" / "b.png").symlink_to("../lnk/b.png")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    os.link(tmp_path / "store" / "b.png", outside / "b.png")
    _restamp(stamped, monkeypatch)
    (tmp_path / "lnk").unlink()
    (tmp_path / "lnk").symlink_to(outside)
    refused_in_full(stamped, monkeypatch, "outside")


def test_an_input_not_sent_is_still_read_and_checked(
    stamped: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A text-to-video shot names a reference video it does not send; its length is still
    read (and warned about). Overwritten with what is no video, it is refused by the next
    plan, as a cold plan refuses it: the cached plan does not keep the old answer."""
    (tmp_path / "more" / "x.toml").write_text(
        '[[shots]]\nid = "x"\nprompt = "a fox"\nworkflow = "t2v"\n'
        'reference_videos = ["spare/r.mp4"]\n'
    )
    (tmp_path / "spare").mkdir()
    shutil.copy(EXAMPLES / "edit" / "clips" / "long-take.mp4", tmp_path / "spare" / "r.mp4")
    mark_done(stamped)
    _restamp(stamped, monkeypatch)
    (tmp_path / "spare" / "r.mp4").write_bytes(b"not a video at all")
    refused_in_full(stamped, monkeypatch, "reference_videos")


def test_resolving_a_stamped_path_ends_on_loops_and_outside(tmp_path: Path) -> None:
    """The walk that finds every link on a stamped path: links met and where it leads;
    nothing for links that go round in a loop or out of the project."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "a.png").write_bytes(b"a")
    (tmp_path / "lnk").symlink_to("store")
    (tmp_path / "via").symlink_to("lnk/a.png")
    (tmp_path / "p").symlink_to("q")
    (tmp_path / "q").symlink_to("p")
    (tmp_path / "out").symlink_to(tmp_path.parent)
    base = str(tmp_path.resolve())
    assert uptodate._way(base, "via") == ({"via", "lnk"}, "store/a.png")
    assert uptodate._way(base, "p/x.png") is None
    assert uptodate._way(base, "out/x.png") is None
    assert uptodate._way(base, "store/../lnk/a.png") == ({"lnk"}, "store/a.png")
