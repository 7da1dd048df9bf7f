"""What `plan` decides from the lockfile's `in_remote` alone (`Differ`: no store is asked)."""

from __future__ import annotations

from kling_batch.lockfile import Lockfile
from kling_batch.plan import Differ
from tests.unit.test_differ import NOW, ROOT, STATE, VIDEO, Files, done, render


def decide(lock: Lockfile, files: Files, *, remote: bool, shot: str = "a") -> tuple[str, ...]:
    planned = render(shot)
    differ = Differ(
        lock, files, NOW, root=ROOT, state=STATE, ids=(shot,), renders=[planned], remote=remote
    )
    item = differ.item(planned)
    return item.action, item.restore.kind if item.restore else "", *item.reasons


def test_a_pushed_render_without_its_output_restores_from_the_store() -> None:
    """No output, no cache, no URL: what the store holds is restored for free."""
    lock = Lockfile(shots={"a": done(render(), in_remote=True)})
    action, kind, reason = decide(lock, Files(), remote=True)
    assert (action, kind) == ("restore", "remote")
    assert reason == "output missing or modified; restored from the remote store (free)"


def test_local_copies_come_before_the_store() -> None:
    """The render cache is free and local: it wins over a download from the store."""
    lock = Lockfile(shots={"a": done(render(), in_remote=True)})
    files = Files({STATE.cached_render_relative(VIDEO[0]): VIDEO})
    assert decide(lock, files, remote=True)[:2] == ("restore", "cache")


def test_without_a_store_or_a_push_the_render_is_priced() -> None:
    """No store configured (`--remote none`), or never pushed: a paid re-render, said so."""
    pushed = Lockfile(shots={"a": done(render(), in_remote=True)})
    unpushed = Lockfile(shots={"a": done(render())})
    assert decide(pushed, Files(), remote=False)[0] == "changed"
    assert decide(unpushed, Files(), remote=True)[0] == "changed"


def test_a_renamed_shot_restores_a_pushed_render_of_its_request() -> None:
    """The store holds renders by request: a new id for the same request costs nothing."""
    lock = Lockfile(shots={"a": done(render("a"), in_remote=True)})
    assert decide(lock, Files(), remote=True, shot="b")[:2] == ("restore", "remote")
