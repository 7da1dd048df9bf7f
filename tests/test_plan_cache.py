"""Plans with warm caches (issue 13): every change is still caught, with its reason.

Each test plans once to fill the caches (the plan cache, the TOML parse cache, the
lockfile's facts, the hash cache), marks everything done, plans again so the caches hold
the done state, changes one thing and plans a third time.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kling_batch import lock_facts, safefiles
from kling_batch import lockfile as lockfile_module
from kling_batch import plan as plan_module
from kling_batch.cli import cli
from kling_batch.errors import UserError
from kling_batch.lock_facts import LockFacts, LockRecords, read_facts
from kling_batch.lockfile import Charge, Lockfile, PastRender, load_lockfile, read_lockfile
from kling_batch.lockname import lock_path
from kling_batch.plan import Plan, build_plan
from kling_batch.state import StateDir
from tests.conftest import NOW, mark_done
from tests.hostile.test_state_dir import kling, read_only
from tests.test_lockfile import sample_entry

SHOTS = """
    [vars]
    mood = "misty"

    [[shots]]
    id = "a"
    prompt = "{{ mood }} lighthouse, {% include 'style.j2' %}"
    image = "a.png"

    [[shots]]
    id = "b"
    prompt = "a fox in the snow"
    image = "b.png"

    [[shots]]
    id = "c-{{ n }}"
    matrix = { n = [1, 2, 3] }
    prompt = "scene {{ n }} of three"
"""

Actions = dict[str, tuple[str, tuple[str, ...]]]


def actions(plan: Plan) -> Actions:
    """id → (action, reasons)."""
    return {item.render.id: (item.action, item.reasons) for item in plan.items}


def write(path: Path, content: bytes) -> None:
    """Write a file and move its mtime on, as an edit seconds later would."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_bytes(content)
    os.utime(path, ns=(before + 5_000_000_000, before + 5_000_000_000))


@pytest.fixture
def warm(project: Callable[..., Path], image: Callable[[str], Path], tmp_path: Path) -> Path:
    """A manifest whose renders are all done, planned twice since so every cache is warm."""
    image("a.png")
    write(image("b.png"), b"another picture")
    (tmp_path / "style.j2").write_text("golden hour")
    path = project(SHOTS)
    mark_done(path)
    assert set(actions(build_plan(path, now=NOW)).values()) == {("unchanged", ())}
    return path


def plan_again(path: Path) -> Plan:
    """A plan with every cache warm: the renders it did not replan come from the plan cache."""
    state = StateDir(path.parent)
    assert state.plan_cache(lock_path(path)).is_file()
    assert state.lock_facts(lock_path(path)).is_file()
    assert state.parse_cache(path).is_file()
    return build_plan(path, now=NOW)


def test_unchanged_renders_come_from_the_cache(warm: Path) -> None:
    """A warm no-op plan builds no request model: its renders come from the plan cache."""
    plan = plan_again(warm)
    assert all(item.action == "unchanged" for item in plan.items)
    assert all(item.render.model is None for item in plan.items)
    assert plan.items[0].render.request.prompt == "misty lighthouse, golden hour"
    assert plan.items[0].render.tier == "pro"


def test_one_edit_is_flagged_with_its_reason(warm: Path) -> None:
    """Editing one shot's prompt changes that render only, with the reason."""
    text = warm.read_text().replace("a fox in the snow", "a fox in the rain")
    warm.write_text(text)
    plan = plan_again(warm)
    assert actions(plan)["b"] == ("changed", ("prompt changed",))
    others = {key: value for key, value in actions(plan).items() if key != "b"}
    assert set(others.values()) == {("unchanged", ())}
    assert [item.render.model is None for item in plan.items] == [True, False, True, True, True]


def test_a_date_var_is_not_taken_for_a_string_that_reads_like_it(warm: Path) -> None:
    """A var changed from a string to a TOML date whose text the cache once used for dates
    alike: the renders reading it are planned again with the date's text."""
    text = warm.read_text()
    write(warm, text.replace('mood = "misty"', 'mood = "date:datetime.date(2024, 6, 1)"').encode())
    assert actions(plan_again(warm))["a"][0] == "changed"
    write(warm, text.replace('mood = "misty"', "mood = 2024-06-01").encode())
    plan = plan_again(warm)
    assert plan.items[0].render.request.prompt == "2024-06-01 lighthouse, golden hour"


def test_changed_asset_content_is_caught(warm: Path, tmp_path: Path) -> None:
    """An input image whose content changed changes its render, naming the file."""
    write(tmp_path / "b.png", b"yet another picture")
    assert actions(plan_again(warm))["b"] == ("changed", ("content of b.png changed (image)",))


def test_missing_output_is_caught(warm: Path, tmp_path: Path) -> None:
    """A deleted output is no longer unchanged."""
    (tmp_path / "renders" / "c-2.mp4").unlink()
    action, reasons = actions(plan_again(warm))["c-2"]
    assert action == "changed"
    assert reasons[0].startswith("output missing or modified")


def test_modified_output_is_caught(warm: Path, tmp_path: Path) -> None:
    """An output edited in place (same size) is no longer unchanged."""
    write(tmp_path / "renders" / "a.mp4", b"x")
    action, reasons = actions(plan_again(warm))["a"]
    assert action == "changed"
    assert reasons[0].startswith("output missing or modified")


def test_lockfile_edited_by_hand_is_read_again(warm: Path) -> None:
    """A lockfile edited by hand is read again, not its cached facts."""
    lock = lock_path(warm)
    text = lock.read_text()
    assert 'state = "done"' in text
    lock.write_text(text.replace('state = "done"', 'state = "failed"', 1))
    action, reasons = actions(plan_again(warm))["a"]
    assert action == "retry"
    assert reasons == ("last attempt failed: unknown",)


def test_damaged_lockfile_is_refused_even_warm(warm: Path) -> None:
    """A lockfile damaged by hand is an error, whatever the caches hold."""
    lock = lock_path(warm)
    lock.write_text(lock.read_text().replace('state = "done"', 'state = "finished"', 1))
    with pytest.raises(Exception, match="damaged lockfile"):
        plan_again(warm)


def test_edited_variable_is_caught(warm: Path) -> None:
    """A var the templates read, edited in the manifest's head, changes what reads it."""
    warm.write_text(warm.read_text().replace('mood = "misty"', 'mood = "stormy"'))
    assert actions(plan_again(warm))["a"] == ("changed", ("prompt changed",))


def test_edited_partial_is_caught(warm: Path, tmp_path: Path) -> None:
    """An included template edited changes the prompts that include it."""
    (tmp_path / "style.j2").write_text("blue hour")
    plan = plan_again(warm)
    assert actions(plan)["a"] == ("changed", ("prompt changed",))
    assert plan.items[0].render.body["prompt"] == "misty lighthouse, blue hour"


def test_partial_created_where_one_was_missing_is_caught(
    project: Callable[..., Path], tmp_path: Path
) -> None:
    """A partial that did not exist and then does: the shot that included it plans again."""
    path = project('[[shots]]\nid = "a"\nprompt = "{% include \'x.j2\' ignore missing %}sea"\n')
    assert build_plan(path, now=NOW).items[0].render.body["prompt"] == "sea"
    (tmp_path / "x.j2").write_text("calm ")
    assert build_plan(path, now=NOW).items[0].render.body["prompt"] == "calm sea"


def test_edited_included_shot_file_is_caught(project: Callable[..., Path], tmp_path: Path) -> None:
    """A shot file named by `include` is cached like the manifest and caught when edited."""
    (tmp_path / "shots").mkdir()
    shots = tmp_path / "shots" / "more.toml"
    shots.write_text('[[shots]]\nid = "x"\nprompt = "one"\n[[shots]]\nid = "y"\nprompt = "two"\n')
    path = project('include = ["shots/*.toml"]\n')
    build_plan(path, now=NOW)
    assert build_plan(path, now=NOW).items[1].render.model is None
    shots.write_text(shots.read_text().replace('"two"', '"three"'))
    plan = build_plan(path, now=NOW)
    assert plan.items[1].render.body["prompt"] == "three"
    assert plan.items[0].render.model is None


def test_render_index_moves_with_the_shots_before(project: Callable[..., Path]) -> None:
    """A template that reads `shot.index` is planned again when a shot before it is added."""
    body = '[[shots]]\nid = "z"\nprompt = "render number {{ shot.index }}"\n'
    path = project(body)
    assert build_plan(path, now=NOW).items[0].render.body["prompt"] == "render number 0"
    path.write_text(
        path.read_text().replace("[[shots]]", '[[shots]]\nid = "y"\nprompt = "p"\n\n[[shots]]', 1)
    )
    plan = build_plan(path, now=NOW)
    assert [item.render.id for item in plan.items] == ["y", "z"]
    assert plan.items[1].render.body["prompt"] == "render number 1"


def _cold(path: Path) -> Plan:
    """The same plan with the plan cache and the TOML parse cache gone: the reference."""
    state = StateDir(path.parent)
    state.plan_cache(lock_path(path)).unlink()
    state.parse_cache(path).unlink(missing_ok=True)
    return build_plan(path, now=NOW)


def _prompts(plan: Plan) -> dict[str, str]:
    return {item.render.id: item.render.body["prompt"] for item in plan.items}


def test_reordered_var_table_is_caught(project: Callable[..., Path]) -> None:
    """A table's key order is what `.items()` renders: reordering it changes the prompt,
    warm or cold (a cache keyed by sorted keys would keep the old prompt)."""
    path = project(
        '[vars]\nstyle = { a = "red", b = "blue" }\n\n[[shots]]\nid = "fox"\n'
        'prompt = "fox, {% for k, v in style.items() %}{{ v }} {% endfor %}"\n'
    )
    build_plan(path, now=NOW)
    assert _prompts(build_plan(path, now=NOW)) == {"fox": "fox, red blue"}
    path.write_text(path.read_text().replace('a = "red", b = "blue"', 'b = "blue", a = "red"'))
    assert _prompts(build_plan(path, now=NOW)) == {"fox": "fox, blue red"}


def test_reordered_matrix_axes_of_a_json_shot_file_are_caught(
    project: Callable[..., Path], tmp_path: Path
) -> None:
    """The axes' order sets the order of a matrix's renders and so each one's
    `shot.index`: a warm plan after reordering them in a JSON shot file renders what a
    cold plan renders."""
    shots = tmp_path / "shots.json"
    shot = {"id": "s-{{ x }}-{{ y }}", "prompt": "render number {{ shot.index }}"}
    shots.write_text(json.dumps({"shots": [{**shot, "matrix": {"x": [1, 2], "y": ["p", "q"]}}]}))
    path = project('include = ["shots.json"]\n')
    build_plan(path, now=NOW)
    before = _prompts(build_plan(path, now=NOW))
    shots.write_text(json.dumps({"shots": [{**shot, "matrix": {"y": ["p", "q"], "x": [1, 2]}}]}))
    warm = _prompts(build_plan(path, now=NOW))
    assert warm != before
    assert warm == _prompts(_cold(path))


def test_asset_replaced_by_a_link_outside_is_refused(warm: Path, tmp_path: Path) -> None:
    """An image swapped for a symlink leading out of the project is refused, warm or not."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    shutil.copy(tmp_path / "b.png", outside)
    (tmp_path / "b.png").unlink()
    (tmp_path / "b.png").symlink_to(outside)
    with pytest.raises(Exception, match="lies outside the manifest's folder"):
        plan_again(warm)


def test_output_turned_folder_is_refused(warm: Path, tmp_path: Path) -> None:
    """An output path that became a folder is an error, warm or not."""
    output = tmp_path / "renders" / "b.mp4"
    output.unlink()
    output.mkdir()
    with pytest.raises(Exception, match="is an existing folder"):
        plan_again(warm)


def test_damaged_caches_are_ignored(warm: Path) -> None:
    """Caches cut short or scribbled over are no caches: the plan is the same."""
    state = StateDir(warm.parent)
    before = actions(build_plan(warm, now=NOW))
    for cache in (state.plan_cache(lock_path(warm)), state.lock_facts(lock_path(warm))):
        data = cache.read_bytes()
        cache.write_bytes(data[: len(data) // 2])
    state.parse_cache(warm).write_text("{not json")
    assert actions(build_plan(warm, now=NOW)) == before


def test_forged_cache_with_a_wrong_checksum_is_ignored(warm: Path) -> None:
    """A cache whose content does not match its checksum line is not believed."""
    cache = StateDir(warm.parent).plan_cache(lock_path(warm))
    first, _, rest = cache.read_bytes().partition(b"\n")
    cache.write_bytes(first + b"\n" + rest.replace(b"a fox in the snow", b"a fox in the sand"))
    plan = build_plan(warm, now=NOW)
    assert plan.items[1].render.body["prompt"] == "a fox in the snow"
    assert actions(plan)["b"] == ("unchanged", ())


def test_bad_manifest_writes_no_cache(project: Callable[..., Path], tmp_path: Path) -> None:
    """A manifest that fails to plan leaves no cache behind."""
    path = project('[[shots]]\nid = "a"\nprompt = "{{ nope }}"\n')
    with pytest.raises(Exception, match="undefined"):
        build_plan(path, now=NOW)
    assert not (tmp_path / ".kling-batch").exists()


def test_read_only_checkout_plans_with_its_warm_caches(warm: Path, tmp_path: Path) -> None:
    """A read-only checkout reads its caches, catches the edit and writes nothing."""
    warm.write_text(warm.read_text().replace("a fox in the snow", "a fox in the rain"))
    state = tmp_path / ".kling-batch"
    before = {path.name: path.read_bytes() for path in state.iterdir()}
    result = kling("plan", warm.name, "--check", cwd=tmp_path, prefix=read_only(tmp_path))
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("Plan: 1 to render"), result.stdout
    assert "prompt changed" in result.stdout
    assert {path.name: path.read_bytes() for path in state.iterdir()} == before


def test_one_edit_through_the_command_line(warm: Path) -> None:
    """`plan --format json` with warm caches names the edited render and its reason."""
    warm.write_text(warm.read_text().replace("scene {{ n }} of three", "scene {{ n }} of 3"))
    result = CliRunner().invoke(cli, ["plan", str(warm), "--format", "json"])
    assert result.exit_code == 0, result.output
    shots = {shot["id"]: shot for shot in json.loads(result.stdout)["shots"]}
    assert {key: shot["action"] for key, shot in shots.items()} == {
        "a": "unchanged",
        "b": "unchanged",
        "c-1": "changed",
        "c-2": "changed",
        "c-3": "changed",
    }
    assert shots["c-2"]["reasons"] == ["prompt changed"]
    assert shots["c-2"]["request"]["prompt"] == "scene 2 of 3"
    check = CliRunner().invoke(cli, ["plan", str(warm), "--check"])
    assert check.exit_code == 1


def test_one_image_of_a_matrix_changed_replans_only_its_renders(
    project: Callable[..., Path], image: Callable[[str], Path], tmp_path: Path
) -> None:
    """In a matrix over images, editing one image flags only the renders that use it;
    the others still come from the cache."""
    image("x.png")
    write(image("y.png"), b"a picture of y")
    body = '[[shots]]\nid = "m-{{ i }}-{{ n }}"\nmatrix = { i = ["x", "y"], n = [1, 2] }\n'
    path = project(body + 'prompt = "take {{ n }}"\nimage = "{{ i }}.png"\n')
    mark_done(path)
    build_plan(path, now=NOW)
    write(tmp_path / "y.png", b"y, edited")
    plan = plan_again(path)
    assert actions(plan) == {
        "m-x-1": ("unchanged", ()),
        "m-x-2": ("unchanged", ()),
        "m-y-1": ("changed", ("content of y.png changed (image)",)),
        "m-y-2": ("changed", ("content of y.png changed (image)",)),
    }
    assert [item.render.model is None for item in plan.items] == [True, True, False, False]
    assert actions(build_plan(path, now=NOW)) == actions(plan)


def _rewrite_entry(path: Path, render_id: str, **fields: object) -> None:
    """Change one lockfile entry, as a run or a push would."""
    lock = build_plan(path, now=NOW).lock
    lock.shots[render_id] = lock.shots[render_id].model_copy(update=fields)
    lock.save(lock_path(path))


def test_warm_facts_know_what_the_shared_store_holds(warm: Path, tmp_path: Path) -> None:
    """`in_remote` is among the lockfile's cached facts: with a store configured, a warm plan
    restores a missing output from it for free, as a plan from the whole lockfile does."""
    _rewrite_entry(warm, "b", in_remote=True)
    (tmp_path / "renders" / "b.mp4").unlink()
    store = f"file://{tmp_path / 'store'}"
    cold = build_plan(warm, now=NOW, remote=store)
    plan = plan_again_with(warm, remote=store)
    assert isinstance(plan.records, LockFacts) and not isinstance(cold.records, LockFacts)
    for made in (cold, plan):
        item = next(item for item in made.items if item.render.id == "b")
        assert item.action == "restore"
        assert item.restore is not None and item.restore.kind == "remote"
    assert actions(build_plan(warm, now=NOW, remote="none"))["b"][0] == "changed"


def test_warm_facts_hand_a_renamed_shots_job_over(warm: Path) -> None:
    """A job in flight whose shot was renamed is taken over from the cached facts too:
    never a second submission of the same request."""
    _rewrite_entry(warm, "b", state="submitted", job_id="job-b")
    build_plan(warm, now=NOW)  # the facts of the edited lockfile, cached
    warm.write_text(warm.read_text().replace('id = "b"', 'id = "b-renamed"'))
    plan = plan_again(warm)
    assert isinstance(plan.records, LockFacts)
    item = next(item for item in plan.items if item.render.id == "b-renamed")
    assert (item.action, item.adopt) == ("resume", "b")
    assert item.reasons == ("job of renamed shot b, in flight: no new cost",)
    assert not plan.followups and not plan.totals.to_run_cost


def plan_again_with(path: Path, *, remote: str) -> Plan:
    """`plan_again` with a shared store named."""
    plan_again(path)
    return build_plan(path, now=NOW, remote=remote)


def test_lockfile_rewritten_while_read_leaves_no_wrong_facts(
    warm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run rewriting the lockfile while a plan reads it (a plan on save during a run):
    the facts cached are those of the bytes their digest was taken from, so when the
    lockfile comes back to those bytes (`git checkout`) the warm plan is the cold one."""
    lock_file = lock_path(warm)
    original = lock_file.read_bytes()
    state = StateDir(warm.parent)
    state.lock_facts(lock_file).unlink()
    state.lock_cache(lock_file).unlink()
    failed = original.replace(b'state = "done"', b'state = "failed"', 1)
    assert failed != original
    read_bytes = safefiles.read_bytes
    reads: list[Path] = []

    def rewritten_after_first_read(path: Path, **kwargs: Any) -> bytes:
        raw = read_bytes(path, **kwargs)
        if path == lock_file and not reads:
            reads.append(path)
            lock_file.write_bytes(failed)  # the run's next write lands after our read
        return raw

    monkeypatch.setattr(safefiles, "read_bytes", rewritten_after_first_read)
    build_plan(warm, now=NOW)
    monkeypatch.undo()
    lock_file.write_bytes(original)
    plan = plan_again(warm)
    assert isinstance(plan.records, LockFacts)
    assert set(actions(plan).values()) == {("unchanged", ())}


def test_facts_of_another_kling_batch_are_not_believed(
    warm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The facts cache is keyed by what kling-batch is made of: after an upgrade the
    lockfile is read in full again (and its facts written anew)."""
    assert isinstance(plan_again(warm).records, LockFacts)
    monkeypatch.setattr(plan_module, "tool_identity", lambda: "another kling-batch")
    assert not isinstance(build_plan(warm, now=NOW).records, LockFacts)
    assert isinstance(build_plan(warm, now=NOW).records, LockFacts)


def test_warm_facts_restore_an_earlier_render_from_history(warm: Path) -> None:
    """A shot edited back to an earlier request restores that render from the entry's
    history (here by its result URL) with the lockfile read through its cached facts too."""
    first = build_plan(warm, now=NOW).lock.shots["b"]
    earlier = PastRender(
        fingerprint=first.fingerprint,
        output_sha256=first.output_sha256 or "",
        output_size=first.output_size or 0,
        result_url="https://cdn.example.com/b-earlier.mp4",
        result_expires_at=NOW + timedelta(days=3),
    )
    _rewrite_entry(warm, "b", fingerprint="sha256:" + "0" * 64, history=[earlier])
    build_plan(warm, now=NOW)  # the facts of the edited lockfile, cached
    plan = plan_again(warm)
    assert isinstance(plan.records, LockFacts)
    item = next(item for item in plan.items if item.render.id == "b")
    assert item.action == "restore"
    assert item.restore is not None and item.restore.kind == "url"
    assert item.restore.url == "https://cdn.example.com/b-earlier.mp4"


def test_planning_leaves_the_garbage_collector_as_it_found_it(
    warm: Path, project: Callable[..., Path]
) -> None:
    """A plan pauses the garbage collector while it runs (speed) and resumes it after,
    also when the manifest is refused: a run goes on collecting as Python does."""
    before = gc.get_threshold()
    assert gc.isenabled()
    build_plan(warm, now=NOW)
    assert gc.isenabled()
    broken = project('[[shots]]\nid = "x"\nprompt = "p"\nmodel_tier = "ultra"\n', name="bad.toml")
    with pytest.raises(UserError):
        build_plan(broken, now=NOW)
    assert gc.isenabled()
    assert gc.get_threshold() == before


def test_shots_copied_from_cache_to_cache_keep_their_requests(
    project: Callable[..., Path],
) -> None:
    """Shots reused whole are copied into the next cache as they are (their texts moved,
    not re-encoded). After edits around them, twice over, every render's request read
    back from the cache is still the one a cold plan makes: a wrong offset would send
    another render's body."""
    shots = "".join(
        f'[[shots]]\nid = "s{n}-{{{{ k }}}}"\nmatrix = {{ k = [1, 2] }}\n'
        f'prompt = "shot {n} take {{{{ k }}}}"\nduration = {5 + n % 6}\n\n'
        for n in range(8)
    )
    path = project(shots)
    build_plan(path, now=NOW)
    for edit in ("shot 3 take", "shot 6 take", "shot 0 take"):
        path.write_text(path.read_text().replace(edit, edit.replace("take", "part")))
        build_plan(path, now=NOW)  # one shot planned again, the others copied
        warm = build_plan(path, now=NOW)  # every shot read back from the copied cache
        assert all(item.render.model is None for item in warm.items)
        read_back = {i.render.id: (i.render.body, i.render.fields) for i in warm.items}
        cold = _cold(path)
        assert read_back == {i.render.id: (i.render.body, i.render.fields) for i in cold.items}
        assert "shot 3 part 1" in str(read_back["s3-1"])


def test_lockfile_parse_cache_of_another_kling_batch_is_not_believed(
    warm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lockfile's parse cache holds what a kling-batch made of it (migrated,
    validated): another kling-batch reads the lockfile itself again."""
    lock_file = lock_path(warm)
    cache = StateDir(warm.parent).lock_cache(lock_file)
    assert cache.is_file()
    parsed: list[Path] = []
    parse = lockfile_module.parse_lockfile

    def counted(text: str, path: Path) -> Lockfile:
        parsed.append(path)
        return parse(text, path)

    monkeypatch.setattr(lockfile_module, "parse_lockfile", counted)
    read_lockfile(lock_file, cache=cache)
    assert parsed == []  # the same kling-batch: the cache is believed
    monkeypatch.setattr(lockfile_module, "tool_identity", lambda: "another kling-batch")
    read_lockfile(lock_file, cache=cache)
    assert parsed == [lock_file]


def _plant(cache: Path, edit: Callable[[bytes], bytes], key: str) -> None:
    """Rewrite a cache file's payload and blob with `edit`, behind a valid checksum and the
    key `key` (what a stranger could commit in `.kling-batch/`)."""
    _, rest = cache.read_bytes().split(b"\n", 1)
    rest = edit(rest)
    cache.write_bytes(f"{hashlib.sha256(rest).hexdigest()} {key}\n".encode() + rest)


def test_a_cache_made_elsewhere_is_never_believed(project: Callable[..., Path]) -> None:
    """A parse cache committed to a repository, checksum and all, that says the shot is a
    4k render: it was not made by this installation, so the plan prices what the manifest
    says. (The same file under this installation's key would be read: the key is what
    keeps it out.)"""
    path = project('[[shots]]\nid = "a"\nprompt = "a calm sea"\nmodel_tier = "standard"\n')
    build_plan(path, now=NOW)
    cache = StateDir(path.parent).parse_cache(path)
    first = cache.read_bytes().split(b"\n", 1)[0].decode()
    version, ours = first.split(" ")[1:]
    planted = lambda rest: rest.replace(b'"standard"', b'"4k"')  # noqa: E731
    plans = StateDir(path.parent).plan_cache(lock_path(path))
    _plant(cache, planted, f"{version} {'0' * len(ours)}")
    plans.unlink()
    assert build_plan(path, now=NOW).items[0].render.tier == "standard"
    _plant(cache, planted, f"{version} {ours}")
    plans.unlink()
    assert build_plan(path, now=NOW).items[0].render.tier == "4k"


def test_a_big_cache_is_not_rewritten_for_one_edit_and_stays_right(
    project: Callable[..., Path],
) -> None:
    """1,200 shots: one edited prompt is planned (and parsed) again by every plan rather
    than rewriting both caches; each plan still says what changed and sends what a cold
    plan sends. Editing a tenth of the shots rewrites them."""
    shots = "".join(f'[[shots]]\nid = "s{n}"\nprompt = "shot {n} at dusk"\n\n' for n in range(1200))
    path = project(shots)
    build_plan(path, now=NOW)
    state = StateDir(path.parent)
    caches = [state.plan_cache(lock_path(path)), state.parse_cache(path)]
    written = [cache.read_bytes() for cache in caches]
    path.write_text(path.read_text().replace("shot 7 at dusk", "shot 7 at dawn"))
    for _ in range(2):
        plan = build_plan(path, now=NOW)
        assert [cache.read_bytes() for cache in caches] == written
        assert _prompts(plan)["s7"] == "shot 7 at dawn"
    text = path.read_text()
    for n in range(100, 220):  # a tenth of the shots
        text = text.replace(f"shot {n} at dusk", f"shot {n} at noon")
    path.write_text(text)
    plan = build_plan(path, now=NOW)
    assert all(cache.read_bytes() != old for cache, old in zip(caches, written, strict=True))
    assert _prompts(plan) == _prompts(build_plan(path, now=NOW)) == _prompts(_cold(path))
    assert _prompts(plan)["s150"] == "shot 150 at noon"
    assert _prompts(plan)["s7"] == "shot 7 at dawn"


_ENTRY_FIELDS = (
    "fingerprint",
    "state",
    "shot",
    "take",
    "output",
    "output_sha256",
    "output_size",
    "job_id",
    "error",
    "request",
    "assets",
    "cost_usd",
    "tags",
)


def _past_facts(records: LockRecords) -> list[tuple[object, ...]]:
    """What planning reads of each finished render on record."""
    return [
        (p.fingerprint, p.sha256, p.size, p.result_url, p.result_expires_at, p.in_remote)
        for _, p in records.finished()
    ]


def test_cached_facts_read_each_entry_as_the_lockfile_records_it(tmp_path: Path) -> None:
    """Every field planning reads of an entry and of its earlier renders comes out of the
    facts cache as the lockfile records it: a fact read wrong decides a render wrong."""
    earlier = PastRender(
        fingerprint="sha256:" + "e" * 64,
        output_sha256="sha256:" + "f" * 64,
        output_size=9,
        result_url="https://cdn.example.com/earlier.mp4",
        result_expires_at=NOW + timedelta(days=3),
        in_remote=True,
    )
    entry = sample_entry(3).model_copy(
        update={"error": "timed out", "tags": ["hero"], "history": [earlier], "in_remote": False}
    )
    lock_file, facts, cache = tmp_path / "m.lock", tmp_path / "facts.json", tmp_path / "l.json"
    lock = Lockfile(shots={"s": entry, "t": sample_entry(4, state="failed")})
    lock.save(lock_file)
    _, save = read_facts(lock_file, facts, cache, tool="this")
    save()
    records, _ = read_facts(lock_file, facts, cache, tool="this")
    assert isinstance(records, LockFacts)
    for key, recorded in lock.shots.items():
        got = records.shots[key]
        assert [getattr(got, name) for name in _ENTRY_FIELDS] == [
            getattr(recorded, name) for name in _ENTRY_FIELDS
        ]
    assert _past_facts(records) == _past_facts(lock)


def test_cached_facts_in_many_chunks_hold_every_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Facts read back a chunk of rows at a time (two rows a chunk here) hold every entry
    of the lockfile, each as recorded, none twice."""
    monkeypatch.setattr(lock_facts, "_CHUNK_ROWS", 2)
    lock_file, facts, cache = tmp_path / "m.lock", tmp_path / "facts.json", tmp_path / "l.json"
    lock = Lockfile(shots={f"s{n}": sample_entry(n) for n in range(5)})
    lock.save(lock_file)
    _, save = read_facts(lock_file, facts, cache, tool="this")
    save()
    records, _ = read_facts(lock_file, facts, cache, tool="this")
    assert isinstance(records, LockFacts)
    assert sorted(records.shots) == sorted(lock.shots)
    for key, recorded in lock.shots.items():
        got = records.shots[key]
        assert [getattr(got, name) for name in _ENTRY_FIELDS] == [
            getattr(recorded, name) for name in _ENTRY_FIELDS
        ]


def _facts_and_full(lock_file: Path, tmp_path: Path) -> tuple[LockFacts, Lockfile]:
    """The lockfile through its warm facts cache, and read in full."""
    facts, cache = tmp_path / "facts.json", tmp_path / "l.json"
    _, save = read_facts(lock_file, facts, cache, tool="this")
    save()
    records, _ = read_facts(lock_file, facts, cache, tool="this")
    assert isinstance(records, LockFacts)
    return records, read_lockfile(lock_file)[0]


def test_cached_facts_name_every_submission_of_a_migrated_lockfile(tmp_path: Path) -> None:
    """A v1 lockfile's submissions (migrated: their job ids and what was sent) are named
    alike through the facts cache and read in full, so a remembered job of one of them is
    never resumed from either."""
    lock_file = tmp_path / "shots.lock"
    shutil.copy(Path(__file__).parent / "fixtures" / "lock_v1" / "shots.lock", lock_file)
    records, lock = _facts_and_full(lock_file, tmp_path)
    assert any("@" in mark for mark in lock.submitted())  # what was sent, and when
    assert records.submitted() == lock.submitted()


def test_cached_facts_name_unanswered_submissions_and_earlier_jobs(tmp_path: Path) -> None:
    """Submissions without a job id (named by what was sent and when, in a time zone other
    than UTC) and an entry's earlier jobs are named alike through the facts cache and read
    in full."""
    zone = timezone(timedelta(hours=5, minutes=30))
    when = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=zone)
    unanswered = Charge(
        fingerprint="sha256:" + "a" * 64,
        submitted_at=when,
        cost_usd=Decimal("1.120"),
        sent="sha256:" + "b" * 64,
    )
    earlier = unanswered.model_copy(update={"job_id": "job_1", "billed_usd": Decimal("0.8965")})
    lock = Lockfile(
        api="emulator",
        shots={
            "u": sample_entry(1, state="uncertain").model_copy(
                update={"job_id": None, "submissions": [unanswered]}
            ),
            "d": sample_entry(2).model_copy(update={"submissions": [earlier]}),
        },
    )
    lock.save(tmp_path / "m.lock")
    records, full = _facts_and_full(tmp_path / "m.lock", tmp_path)
    assert {"job_1", unanswered.sending} <= full.submitted()
    assert records.submitted() == full.submitted()


def _dated_request_lockfile(lock_file: Path) -> None:
    """A lockfile whose request was edited by hand to hold TOML dates and times."""
    entry = sample_entry(5)
    request = {
        **entry.request,
        "at": datetime(2026, 3, 1, 9, 30, 0, 250, tzinfo=timezone(timedelta(hours=-7))),
        "local": datetime(2026, 3, 1, 9, 30),
        "day": date(2026, 3, 1),
        "hour": time(9, 30, 15),
    }
    Lockfile(shots={"s": entry.model_copy(update={"request": request})}).save(lock_file)


def test_the_parse_cache_reads_dates_in_a_request_as_the_lockfile_holds_them(
    tmp_path: Path,
) -> None:
    """A request edited by hand to hold TOML dates and times reads back from the lockfile's
    parse cache as from the lockfile (not as text, not a crash): a run saving what it
    read would rewrite the record otherwise."""
    lock_file, cache = tmp_path / "m.lock", tmp_path / "l.json"
    _dated_request_lockfile(lock_file)
    load_lockfile(lock_file, cache=cache)
    assert cache.exists()
    assert load_lockfile(lock_file, cache=cache) == read_lockfile(lock_file)[0]


def test_cached_facts_read_dates_in_a_request_as_the_lockfile_holds_them(
    tmp_path: Path,
) -> None:
    """A request edited by hand to hold TOML dates and times comes out of the facts cache
    as the lockfile records it."""
    _dated_request_lockfile(tmp_path / "m.lock")
    records, full = _facts_and_full(tmp_path / "m.lock", tmp_path)
    assert records.shots["s"].request == full.shots["s"].request
