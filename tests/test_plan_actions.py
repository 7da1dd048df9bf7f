"""Plan actions against a lockfile: what a rerun would render, restore, resume or skip."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kling_batch import assets as assets_module
from kling_batch.lockfile import Lockfile, PastRender, new_entry
from kling_batch.lockname import lock_path
from kling_batch.plan import Plan, PlannedRender, build_plan
from tests.conftest import NOW

TWO_SHOTS = """
    [[shots]]
    id = "a"
    prompt = "a lighthouse in a storm"
    [[shots]]
    id = "b"
    prompt = "a fox in the snow"
    model_tier = "standard"
"""


def finish(plan: Plan, render: PlannedRender, content: bytes = b"video", **fields: Any) -> None:
    """Record `render` as done in the plan's lockfile and write its output file."""
    target = plan.loaded.root / render.output
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    entry = new_entry(
        render,
        "done",
        job_id="job-" + render.id,
        output_sha256=digest,
        output_size=len(content),
        **fields,
    )
    plan.lock.shots[render.id] = entry


def save(plan: Plan) -> None:
    """Write the plan's lockfile beside the manifest."""
    plan.lock.save(lock_path(plan.loaded.path))


def record(path: Path, state: str, **fields: Any) -> Path:
    """Record the manifest's first render in `state` (with `fields`) in its lockfile."""
    plan = build_plan(path, now=NOW)
    plan.lock.shots[plan.items[0].render.id] = new_entry(plan.items[0].render, state, **fields)  # type: ignore[arg-type]
    save(plan)
    return path


def actions(path: Path, **kwargs: Any) -> dict[str, tuple[str, tuple[str, ...]]]:
    """id → (action, reasons) of a fresh plan."""
    plan = build_plan(path, now=kwargs.pop("now", NOW), **kwargs)
    return {item.render.id: (item.action, item.reasons) for item in plan.items}


@pytest.fixture
def rendered(project: Callable[..., Path]) -> Path:
    """A two-shot manifest whose renders are both done, outputs on disk."""
    path = project(TWO_SHOTS)
    plan = build_plan(path, now=NOW)
    for item in plan.items:
        finish(plan, item.render, content=item.render.id.encode())
    save(plan)
    return path


def test_everything_new_without_lockfile(project: Callable[..., Path]) -> None:
    """With no lockfile every render is new and paid for."""
    plan = build_plan(project(TWO_SHOTS), now=NOW)
    assert [i.action for i in plan.items] == ["new", "new"]
    assert plan.totals.to_run_cost == Decimal("1.400") + Decimal("1.120")


def test_done_with_output_present_is_unchanged(rendered: Path) -> None:
    """A done render whose output matches its hash costs nothing."""
    plan = build_plan(rendered, now=NOW)
    assert [i.action for i in plan.items] == ["unchanged", "unchanged"]
    assert plan.totals.to_run == 0 and plan.totals.to_run_cost == 0


def test_edited_prompt_is_changed_with_reason(rendered: Path) -> None:
    """Editing one prompt changes only that render, and says the prompt changed."""
    rendered.write_text(rendered.read_text().replace("a fox", "two foxes"))
    got = actions(rendered)
    assert got["a"][0] == "unchanged"
    assert got["b"] == ("changed", ("prompt changed",))


def test_changed_field_reason_shows_old_and_new(rendered: Path) -> None:
    """A changed tier is reported as `model_tier: standard → pro`."""
    rendered.write_text(rendered.read_text().replace('"standard"', '"pro"'))
    assert actions(rendered)["b"] == ("changed", ("model_tier: standard → pro",))


def test_asset_content_change_is_named(
    project: Callable[..., Path], image: Callable[[str], Path]
) -> None:
    """Replacing an image's bytes under the same name re-renders, naming the asset."""
    picture = image("still.png")
    path = project("""
        [[shots]]
        id = "a"
        prompt = "p"
        image = "still.png"
    """)
    plan = build_plan(path, now=NOW)
    finish(plan, plan.items[0].render)
    save(plan)
    picture.write_bytes(picture.read_bytes() + b"edited")
    action, reasons = actions(path)["a"]
    assert action == "changed"
    assert reasons == ("content of still.png changed (image)",)


def test_failed_render_is_retried(project: Callable[..., Path]) -> None:
    """A failed entry plans as retry, with the error as its reason, and is paid for."""
    path = project(TWO_SHOTS)
    record(path, "failed", error="content_moderation")
    again = build_plan(path, now=NOW)
    assert (again.items[0].action, again.items[0].reasons) == (
        "retry",
        ("last attempt failed: content_moderation",),
    )
    assert again.totals.to_run == 2


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("cancelled by the user (job j1)", "last attempt was cancelled by the user (job j1)"),
        ("job j1 cancelled: stopped", "last attempt was cancelled (job j1 cancelled: stopped)"),
    ],
)
def test_cancelled_render_is_retried_as_cancelled(
    project: Callable[..., Path], error: str, reason: str
) -> None:
    """A render whose job was cancelled plans as retry, its reason saying it was cancelled."""
    path = project(TWO_SHOTS)
    record(path, "failed", error=error)
    item = build_plan(path, now=NOW).items[0]
    assert (item.action, item.reasons) == ("retry", (reason,))


@pytest.mark.parametrize(
    ("state", "action"),
    [
        ("submitted", "resume"),
        ("completed", "resume"),
        ("uncertain", "uncertain"),
        ("submitting", "uncertain"),
    ],
)
def test_in_flight_and_uncertain_states_cost_nothing_now(
    project: Callable[..., Path], state: str, action: str
) -> None:
    """Submitted and completed renders resume; uncertain ones wait for a flag; none is paid."""
    path = record(project(TWO_SHOTS), state, job_id="job-1")
    again = build_plan(path, now=NOW)
    assert again.items[0].action == action
    assert again.totals.to_run_cost == Decimal("1.120")


def test_renamed_shot_is_restored_free(rendered: Path) -> None:
    """Renaming a shot keeps its fingerprint: the new id restores from the old output."""
    rendered.write_text(rendered.read_text().replace('id = "b"', 'id = "fox"'))
    plan = build_plan(rendered, now=NOW)
    item = {i.render.id: i for i in plan.items}["fox"]
    assert item.action == "restore"
    assert item.restore is not None and item.restore.kind == "file"
    assert [o.id for o in plan.orphans] == ["b"]
    assert plan.totals.to_run_cost == 0


def test_output_path_change_is_restored_free(rendered: Path) -> None:
    """Changing only the output path moves the file; no render is paid for."""
    rendered.write_text(
        rendered.read_text().replace('id = "b"', 'id = "b"\noutput = "animals/fox.mp4"')
    )
    got = actions(rendered)
    assert got["b"][0] == "restore"
    assert "output moved" in got["b"][1][0]


def test_reverted_edit_restores_from_cache(rendered: Path) -> None:
    """Reverting to an earlier request restores the earlier render from the local cache."""
    plan = build_plan(rendered, now=NOW)
    old = plan.lock.shots["b"]
    cache = rendered.parent / ".kling-batch" / "cache"
    cache.mkdir(parents=True)
    (cache / old.output_sha256.removeprefix("sha256:")).write_bytes(b"b")  # type: ignore[union-attr]
    # Edit, render the edit, remember the earlier render in history, then revert.
    original = rendered.read_text()
    rendered.write_text(original.replace("a fox", "two foxes"))
    edited = build_plan(rendered, now=NOW)
    finish(
        edited,
        edited.items[1].render,
        content=b"two foxes",
        history=[
            PastRender(
                fingerprint=old.fingerprint,
                output_sha256=old.output_sha256,
                output_size=old.output_size,
            )
        ],
    )
    save(edited)
    rendered.write_text(original)
    reverted = build_plan(rendered, now=NOW)
    item = reverted.items[1]
    assert (item.action, item.restore and item.restore.kind) == ("restore", "cache")
    assert reverted.totals.to_run_cost == 0


def test_missing_output_restored_from_valid_url(rendered: Path) -> None:
    """A deleted output with an unexpired result URL is restored from the URL, free."""
    plan = build_plan(rendered, now=NOW)
    plan.lock.shots["a"].result_url = "https://cdn.example.com/a.mp4"
    plan.lock.shots["a"].result_expires_at = NOW + timedelta(days=3)
    save(plan)
    (rendered.parent / "renders" / "a.mp4").unlink()
    item = build_plan(rendered, now=NOW).items[0]
    assert (item.action, item.restore and item.restore.kind) == ("restore", "url")


def test_missing_output_with_expired_url_must_render_again(rendered: Path) -> None:
    """When the output, the cache and the URL are all gone, the render is paid for again."""
    plan = build_plan(rendered, now=NOW)
    plan.lock.shots["a"].result_url = "https://cdn.example.com/a.mp4"
    plan.lock.shots["a"].result_expires_at = NOW - timedelta(seconds=1)
    save(plan)
    (rendered.parent / "renders" / "a.mp4").unlink()
    again = build_plan(rendered, now=NOW)
    assert again.items[0].action == "changed"
    assert again.totals.to_run_cost == Decimal("1.400")


def test_modified_output_is_not_unchanged(rendered: Path) -> None:
    """An output file whose bytes no longer match the lockfile is not trusted."""
    (rendered.parent / "renders" / "a.mp4").write_bytes(b"tampered")
    assert actions(rendered)["a"][0] == "changed"


def test_force_rerenders_matching_ids(rendered: Path) -> None:
    """--force makes matching up-to-date renders paid again, saying why."""
    got = actions(rendered, force=["a*"])
    assert got["a"] == ("changed", ("forced with --force",))
    assert got["b"][0] == "unchanged"


def test_only_limits_the_plan(project: Callable[..., Path]) -> None:
    """--only keeps matching renders; the rest are not planned (nor orphaned)."""
    plan = build_plan(project(TWO_SHOTS), now=NOW, only=["b"])
    assert [i.render.id for i in plan.items] == ["b"]
    assert plan.orphans == []


def test_orphans_are_listed(rendered: Path) -> None:
    """Lockfile entries for removed shots are listed as orphans."""
    rendered.write_text(rendered.read_text().split('[[shots]]\nid = "b"')[0])
    plan = build_plan(rendered, now=NOW)
    assert [(o.id, o.state) for o in plan.orphans] == [("b", "done")]


def test_same_request_different_takes_differ(project: Callable[..., Path]) -> None:
    """Two takes of one request have different fingerprints (each is its own render)."""
    plan = build_plan(project('[[shots]]\nid = "a"\nprompt = "p"\ntakes = 2\n'), now=NOW)
    assert plan.items[0].render.fingerprint != plan.items[1].render.fingerprint


def test_warm_plan_does_not_rehash_assets(
    project: Callable[..., Path], image: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second plan takes asset hashes from the stat cache instead of reading files."""
    for name in ("a.png", "b.png"):
        image(name)
    path = project("""
        [[shots]]
        id = "{{ n }}"
        matrix = { n = ["a", "b"] }
        prompt = "p"
        image = "{{ n }}.png"
    """)
    calls: list[Path] = []
    real = assets_module.sha256_file

    def counting(p: Path) -> str:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(assets_module, "sha256_file", counting)
    monkeypatch.setattr(assets_module, "_RACY_NS", 0)  # the files were written just now
    build_plan(path, now=NOW)
    assert len(calls) == 2
    calls.clear()
    build_plan(path, now=NOW)
    assert calls == []


def test_stat_cache_notices_an_edit(
    project: Callable[..., Path], image: Callable[[str], Path]
) -> None:
    """An asset edited after it was cached gets a new hash."""
    picture = image("a.png")
    path = project('[[shots]]\nid = "a"\nprompt = "p"\nimage = "a.png"\n')
    first = build_plan(path, now=NOW).items[0].render.fingerprint
    picture.write_bytes(picture.read_bytes() + b"!")
    assert build_plan(path, now=NOW).items[0].render.fingerprint != first


def test_stat_cache_notices_an_edit_that_keeps_size_and_time(
    project: Callable[..., Path], image: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An asset rewritten with other bytes of the same size and its modification time put
    back (`cp -p`, a tool that keeps times) is hashed again: its change time moved."""
    monkeypatch.setattr(assets_module, "_RACY_NS", 0)  # trust every hash at once
    picture = image("a.png")
    path = project('[[shots]]\nid = "a"\nprompt = "p"\nimage = "a.png"\n')
    first = build_plan(path, now=NOW).items[0].render.fingerprint
    info, data = picture.stat(), picture.read_bytes()
    picture.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    os.utime(picture, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert picture.stat().st_size == info.st_size
    assert build_plan(path, now=NOW).items[0].render.fingerprint != first


def test_planning_writes_only_its_cache(
    project: Callable[..., Path], image: Callable[[str], Path], tmp_path: Path
) -> None:
    """A plan writes nothing but `.kling-batch/` (which ignores itself in git)."""
    image("a.png")
    path = project('[[shots]]\nid = "a"\nprompt = "p"\nimage = "a.png"\n')
    before = set(tmp_path.rglob("*"))
    build_plan(path, now=NOW)
    created = {p.relative_to(tmp_path).as_posix() for p in set(tmp_path.rglob("*")) - before}
    assert created == {
        ".kling-batch",
        ".kling-batch/assets.json",
        ".kling-batch/.gitignore",
        ".kling-batch/manifest.toml.parse.json",
        ".kling-batch/manifest.lock.plan.json",
    }
    assert (tmp_path / ".kling-batch" / ".gitignore").read_text().strip().endswith("*")


def test_now_decides_url_validity(rendered: Path) -> None:
    """The same lockfile plans differently only through the `now` it is given."""
    plan = build_plan(rendered, now=NOW)
    plan.lock.shots["a"].result_url = "https://cdn.example.com/a.mp4"
    plan.lock.shots["a"].result_expires_at = datetime(2026, 12, 1, tzinfo=UTC)
    save(plan)
    (rendered.parent / "renders" / "a.mp4").unlink()
    assert actions(rendered, now=datetime(2026, 11, 30, tzinfo=UTC))["a"][0] == "restore"
    assert actions(rendered, now=datetime(2026, 12, 2, tzinfo=UTC))["a"][0] == "changed"


def test_lock_path_is_beside_manifest() -> None:
    """`launch.toml` locks into `launch.lock`; emulator renders into their own file."""
    assert lock_path(Path("x/launch.toml")) == Path("x/launch.lock")
    assert lock_path(Path("x/launch.toml"), emulator=True) == Path("x/launch.emulator.lock")


def test_empty_lockfile_is_default(project: Callable[..., Path]) -> None:
    """A plan of a never-run manifest carries an empty lockfile of the current version."""
    plan = build_plan(project(TWO_SHOTS), now=NOW)
    assert plan.lock == Lockfile()


@pytest.mark.parametrize(
    ("state", "action"),
    [
        ("submitted", "resume"),
        ("completed", "resume"),
        ("uncertain", "uncertain"),
    ],
)
def test_edit_during_a_job_in_flight_follows_the_job_first(
    project: Callable[..., Path], state: str, action: str
) -> None:
    """A request edited while its job is in flight is not re-rendered over the job's record."""
    path = record(project(TWO_SHOTS), state, job_id="job-1")
    path.write_text(path.read_text().replace("a lighthouse", "two lighthouses"))
    again = build_plan(path, now=NOW, force=["a"])
    item = again.items[0]
    assert item.action == action
    assert "changed while a job" in item.reasons[-1]
    assert not item.paid
