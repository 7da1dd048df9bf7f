"""`Differ`: plan actions decided from facts alone: no folder, no clock, no network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

import pytest

from kling_batch.assets import AssetStore
from kling_batch.expand import RenderSpec
from kling_batch.lockfile import Entry, Lockfile, PastRender, new_entry
from kling_batch.plan import Differ, PlannedRender, plan_render
from kling_batch.state import StateDir
from kling_batch.urls import KnownUrl

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ROOT = Path("/nowhere/project")  # never touched: the facts below stand for its files
STATE = StateDir(ROOT)
VIDEO = ("sha256:" + "a" * 64, 1000)


class Files:
    """The folder as a dictionary: relative path → (sha256, size)."""

    def __init__(
        self,
        files: dict[str, tuple[str, int]] | None = None,
        remembered: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        self.files = files or {}
        self.remembered = remembered or {}
        self.urls: dict[str, KnownUrl] = {}
        self.asked: list[str] = []

    def relative_hash(self, relative: str) -> tuple[str, int] | None:
        self.asked.append(relative)
        return self.files.get(relative)

    def remembered_render(self, fingerprint: str) -> tuple[str, int] | None:
        return self.remembered.get(fingerprint)

    def result_url(self, sha256: str) -> KnownUrl | None:
        return self.urls.get(sha256)

    def remembered_job(self, fingerprint: str) -> None:
        return None


def render(shot: str = "a", prompt: str = "a lighthouse", output: str = "") -> PlannedRender:
    """A planned t2v render (no media, so no file is read)."""
    spec = RenderSpec(
        id=shot,
        shot=shot,
        take=1,
        fields={"prompt": prompt},
        output=PurePosixPath(output or f"renders/{shot}.mp4"),
        tags=(),
        file=ROOT / "manifest.toml",
    )
    return plan_render(spec, AssetStore(ROOT))


def done(planned: PlannedRender, **fields: object) -> Entry:
    return new_entry(
        planned, "done", output_sha256=VIDEO[0], output_size=VIDEO[1], job_id="j1", **fields
    )


def decide(
    lock: Lockfile,
    files: Files,
    planned: PlannedRender,
    *,
    now: datetime = NOW,
    ids: tuple[str, ...] | None = None,
) -> tuple:
    manifest_ids = ids if ids is not None else (planned.id,)
    differ = Differ(lock, files, now, root=ROOT, state=STATE, ids=manifest_ids, renders=[planned])
    item = differ.item(planned)
    return item.action, item.reasons, item.restore.kind if item.restore else None


def test_done_render_with_its_output_in_place_is_unchanged() -> None:
    """The recorded output's hash matches the file's: nothing to do, one fact asked."""
    a = render()
    files = Files({"renders/a.mp4": VIDEO})
    assert decide(Lockfile(shots={"a": done(a)}), files, a)[0] == "unchanged"
    assert files.asked == ["renders/a.mp4"]


def test_modified_output_restores_from_the_cache() -> None:
    """An output edited in place is restored from the cached copy of the render."""
    a = render()
    files = Files(
        {
            "renders/a.mp4": ("sha256:" + "b" * 64, 999),
            STATE.cached_render_relative(VIDEO[0]): VIDEO,
        }
    )
    action, reasons, kind = decide(Lockfile(shots={"a": done(a)}), files, a)
    assert (action, kind) == ("restore", "cache")
    assert reasons[0].startswith("output missing or modified")


def test_missing_output_restores_from_a_live_url_but_not_an_expired_one() -> None:
    """With no file and no cache, a result URL restores until it expires; then it is paid."""
    a = render()
    lock = Lockfile(
        shots={"a": done(a, result_url="https://cdn/a", result_expires_at=NOW + timedelta(hours=1))}
    )
    assert decide(lock, Files(), a)[::2] == ("restore", "url")
    later = NOW + timedelta(hours=2)
    assert decide(lock, Files(), a, now=later)[0] == "changed"


def test_renamed_shot_restores_from_the_old_output() -> None:
    """A new id whose request was rendered under another id copies that file for free."""
    old, new = render("a"), render("b")
    files = Files({"renders/a.mp4": VIDEO})
    assert decide(Lockfile(shots={"a": done(old)}), files, new)[::2] == ("restore", "file")


def test_reverted_edit_restores_from_history_in_the_cache() -> None:
    """An entry's history remembers the earlier render; reverting to it costs nothing."""
    before, edited = render(prompt="a fox"), render(prompt="two foxes")
    past = PastRender(fingerprint=before.fingerprint, output_sha256=VIDEO[0], output_size=1000)
    entry = new_entry(edited, "done", output_sha256="sha256:" + "c" * 64, output_size=5)
    entry = entry.model_copy(update={"history": [past]})
    files = Files({STATE.cached_render_relative(VIDEO[0]): VIDEO})
    assert decide(Lockfile(shots={"a": entry}), files, before)[::2] == ("restore", "cache")


def test_a_renamed_shot_restores_from_a_done_entry_also_in_another_entrys_history() -> None:
    """Of the finished renders of one request, a done entry whose file is in place comes
    first, though an entry after it keeps the same request in its history (no file, no
    cached copy of that one)."""
    old, new = render("a"), render("c")
    later = new_entry(render("b", prompt="a storm"), "done", output_sha256=VIDEO[0])
    gone = PastRender(
        fingerprint=old.fingerprint, output_sha256="sha256:" + "d" * 64, output_size=7
    )
    lock = Lockfile(shots={"a": done(old), "b": later.model_copy(update={"history": [gone]})})
    files = Files({"renders/a.mp4": VIDEO})
    assert decide(lock, files, new)[::2] == ("restore", "file")


def test_a_lockfile_path_outside_the_project_is_never_asked_about() -> None:
    """An entry whose output climbs out of the project reads as missing, unasked."""
    a = render()
    entry = done(a).model_copy(update={"output": "../../etc/passwd"})
    files = Files()
    action, _, _ = decide(Lockfile(shots={"a": entry}), files, a)
    assert action == "changed"
    assert all(".." not in path for path in files.asked)


def test_a_job_in_flight_is_followed_even_when_the_request_changed() -> None:
    """A submitted job is resumed, never replaced, and the plan says the edit waits."""
    a, edited = render(), render(prompt="a different lighthouse")
    entry = new_entry(a, "submitted", job_id="j9")
    action, reasons, _ = decide(Lockfile(shots={"a": entry}), Files(), edited)
    assert action == "resume"
    assert "job j9 in flight" in reasons[0] and "renders on the run after it lands" in reasons[1]


def test_a_renamed_shot_adopts_the_job_in_flight_of_its_old_id() -> None:
    """A new id with the request of a stray submitted job resumes that job: no new cost."""
    old, new = render("hero"), render("hero-take1")
    lock = Lockfile(shots={"hero": new_entry(old, "submitted", job_id="j7")})
    differ = Differ(lock, Files(), NOW, root=ROOT, state=STATE, ids=("hero-take1",), renders=[new])
    item = differ.item(new)
    assert (item.action, item.adopt) == ("resume", "hero")
    assert item.reasons == ("job of renamed shot hero, in flight: no new cost",)
    assert differ.strays() == [] and differ.adopted == {"hero": "hero-take1"}


def test_a_stray_job_nobody_adopts_is_left_to_follow() -> None:
    """A stray job whose request no render has is reported for the run to follow."""
    old, other = render("hero"), render("other", prompt="something else")
    lock = Lockfile(shots={"hero": new_entry(old, "completed", job_id="j7")})
    differ = Differ(lock, Files(), NOW, root=ROOT, state=STATE, ids=("other",), renders=[other])
    assert differ.item(other).action == "new"
    assert differ.strays() == ["hero"]


def test_a_second_render_of_the_adopted_request_copies_the_adopter() -> None:
    """Two renders of the stray's request: one adopts its job, the other copies it (free)."""
    old = render("hero")
    first, second = render("hero-a"), render("hero-b", output="renders/b.mp4")
    lock = Lockfile(shots={"hero": new_entry(old, "submitted", job_id="j7")})
    ids = ("hero-a", "hero-b")
    differ = Differ(lock, Files(), NOW, root=ROOT, state=STATE, ids=ids, renders=[first, second])
    assert differ.item(first).adopt == "hero"
    copy = differ.item(second)
    assert copy.action == "restore" and copy.restore is not None
    assert copy.restore.kind == "twin" and copy.restore.twin == "hero-a"


def test_the_render_cache_index_restores_a_render_the_lockfile_forgot() -> None:
    """With no record at all (a lockfile lost), the cache's own index restores for free."""
    a = render()
    cached = STATE.cached_render_relative(VIDEO[0])
    files = Files({cached: VIDEO}, remembered={a.fingerprint: VIDEO})
    assert decide(Lockfile(), files, a)[::2] == ("restore", "cache")
    assert decide(Lockfile(), Files(remembered={a.fingerprint: VIDEO}), a)[0] == "new"


def test_a_url_kept_out_of_the_lockfile_still_restores_until_it_expires() -> None:
    """The URL store (not the committed lockfile) holds the URL of a downloaded render."""
    a = render()
    files = Files()
    files.urls[VIDEO[0]] = KnownUrl("https://cdn/a", NOW + timedelta(hours=1), "j1")
    action, _, kind = decide(Lockfile(shots={"a": done(a)}), files, a)
    assert (action, kind) == ("restore", "url")
    assert decide(Lockfile(shots={"a": done(a)}), files, a, now=NOW + timedelta(hours=2))[0] == (
        "changed"
    )


def test_an_id_reused_for_another_request_hands_its_job_to_the_render_asking_for_it() -> None:
    """`hero` renamed `hero-wide` mid-flight and a new `hero` added: the job goes to
    `hero-wide` (no new cost) and the new `hero` is a new render."""
    old = render("hero", prompt="the hero lands")
    wide = render("hero-wide", prompt="the hero lands")
    new_hero = render("hero", prompt="the hero takes off")
    lock = Lockfile(shots={"hero": new_entry(old, "submitted", job_id="j7")})
    renders = [new_hero, wide]
    differ = Differ(
        lock, Files(), NOW, root=ROOT, state=STATE, ids=("hero", "hero-wide"), renders=renders
    )
    first, second = differ.item(new_hero), differ.item(wide)
    assert (first.action, first.adopt) == ("new", None)
    assert "its job in flight (for its earlier request) goes to hero-wide" in first.reasons
    assert (second.action, second.adopt) == ("resume", "hero")
    assert second.reasons == ("job of shot hero, in flight: no new cost",)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"b": "P", "c": "Q"}, {"a": "P", "b": "Q"}),  # the entry taken first frees its render
        ({"a": "P", "b": "Q"}, {"b": "P", "c": "Q"}),  # the entry taken last frees it
    ],
)
def test_shots_renumbered_in_a_chain_in_flight_each_resume_a_job(
    before: dict[str, str], after: dict[str, str]
) -> None:
    """Two jobs in flight and the shots renumbered (a scene deleted): each render resumes
    the job of its request, whichever order the ids sort in; nothing is paid again."""
    lock = Lockfile(
        shots={
            key: new_entry(render(key, prompt=f"request {request}"), "submitted", job_id=request)
            for key, request in before.items()
        }
    )
    renders = [render(key, prompt=f"request {request}") for key, request in after.items()]
    differ = Differ(lock, Files(), NOW, root=ROOT, state=STATE, ids=tuple(after), renders=renders)
    items = [differ.item(r) for r in renders]
    adopted = {item.render.id: lock.shots[item.adopt].job_id for item in items if item.adopt}
    assert adopted == after  # each render follows the job of its own request
    assert [item.action for item in items] == ["resume", "resume"]
    assert differ.strays() == []


@pytest.mark.timeout(30)  # a hang detector: looking again at every entry per pass took hours
def test_every_shot_renumbered_while_in_flight_resumes_its_own_request() -> None:
    """A shot inserted first renumbers 2,000 shots in flight (s1 becomes s2, ...): each
    render resumes the job of its request, freed one by one from the end of the chain."""
    count = 2_000
    requests = {f"s{n:05d}": f"request {n}" for n in range(1, count + 1)}
    lock = Lockfile(
        shots={
            key: new_entry(render(key, prompt=request), "submitted", job_id=request)
            for key, request in requests.items()
        }
    )
    renders = [render(f"s{n + 1:05d}", prompt=f"request {n}") for n in range(1, count + 1)]
    ids = tuple(r.id for r in renders)
    differ = Differ(lock, Files(), NOW, root=ROOT, state=STATE, ids=ids, renders=renders)
    items = [differ.item(r) for r in renders]
    assert all(item.action == "resume" for item in items)
    assert all(lock.shots[str(i.adopt)].job_id == i.render.request.prompt for i in items)
