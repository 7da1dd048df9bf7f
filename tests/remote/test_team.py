"""What a run decides before paying for a render, given the store (`Team.arbitrate`):
against a shared folder, with the render planned as `plan` would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

import anyio
import pytest

from kling_batch.assets import AssetStore
from kling_batch.claims import ClaimBook, RunIdentity
from kling_batch.errors import RemoteError
from kling_batch.expand import RenderSpec
from kling_batch.lockfile import Lockfile, LockWriter
from kling_batch.plan import PlannedRender, plan_render
from kling_batch.remote import RemoteStore, open_store, parse_remote
from kling_batch.remote_files import StoredRender
from kling_batch.state import StateDir
from kling_batch.team import Follow, FromStore, Later, Pay, Team, Unsure, Wait

BODY = {"model": "kling-o3", "prompt": "a lighthouse"}


@pytest.fixture
def store(tmp_path: Path) -> RemoteStore:
    folder = tmp_path / "shared"
    folder.mkdir()
    return open_store(parse_remote(f"file://{folder}"))


def planned(root: Path) -> PlannedRender:
    spec = RenderSpec(
        id="hero",
        shot="hero",
        take=1,
        fields={"prompt": "a lighthouse"},
        output=PurePosixPath("renders/hero.mp4"),
        tags=(),
        file=root / "manifest.toml",
    )
    return plan_render(spec, AssetStore(root))


def team(store: RemoteStore, root: Path, scope: str, **options: object) -> Team:
    """A run's team on `scope`; its short lease makes it look at a held claim twice a second."""
    writer = LockWriter(root / "manifest.lock", Lockfile())
    me = RunIdentity(f"run-{scope}", "host", 1, scope)
    return Team(store, me, writer, StateDir(root), lease=2, **options)  # type: ignore[arg-type]


def record(render: PlannedRender) -> bytes:
    stored = StoredRender(
        fingerprint=render.fingerprint,
        output_sha256="sha256:" + "d" * 64,
        output_size=1234,
        stored_at=datetime.now(UTC),
        run="elsewhere",
    )
    return stored.dumps()


def test_another_accounts_claim_is_waited_for_until_its_record_appears(
    tmp_path: Path, store: RemoteStore
) -> None:
    """Its job cannot be followed from this account: the run waits, then restores."""
    render = planned(tmp_path)
    mine = team(store, tmp_path, "mine")
    theirs = ClaimBook(store, RunIdentity("theirs", "their-host", 2, "theirs"), lease=600)

    async def main() -> tuple[object, object]:
        await theirs.take(render.fingerprint, BODY)
        await theirs.set_job(render.fingerprint, "job_1")
        first = await mine.arbitrate(render, BODY)

        async def finish_elsewhere() -> None:
            await anyio.sleep(0.3)
            key = f"renders/{render.fingerprint.removeprefix('sha256:')}.json"
            await store.create(key, record(render))

        async with anyio.create_task_group() as group:
            group.start_soon(finish_elsewhere)
            settled = await mine.settle(render, first, patience=60)  # type: ignore[arg-type]
        return first, settled

    first, settled = anyio.run(main)
    assert isinstance(first, Wait) and first.claim is not None and first.claim.job_id == "job_1"
    assert isinstance(settled, FromStore)
    assert settled.source.kind == "remote" and settled.source.sha256 == "sha256:" + "d" * 64


def test_another_accounts_dead_claim_is_uncertain_and_says_why(
    tmp_path: Path, store: RemoteStore
) -> None:
    """A dead run's job on another account can be neither followed nor looked up here."""
    render = planned(tmp_path)
    mine = team(store, tmp_path, "mine")
    dead = ClaimBook(
        store,
        RunIdentity("dead", "gone-host", 9, "theirs"),
        lease=60,
        now=lambda: datetime.now(UTC) - timedelta(hours=1),
    )

    async def main() -> object:
        await dead.take(render.fingerprint, BODY)
        await dead.set_job(render.fingerprint, "job_9")
        return await mine.arbitrate(render, BODY)

    verdict = anyio.run(main)
    assert isinstance(verdict, Unsure) and verdict.gap is not None
    assert "another API account (its job job_9)" in verdict.gap


def test_a_store_that_fails_means_rendering_alone_said_once(tmp_path: Path) -> None:
    """No answer: pay as before, one warning for the whole run; --require-remote: later."""
    gone = open_store(parse_remote(f"file://{tmp_path}"))
    (tmp_path / "claims").write_text("a file where a folder should be")
    render = planned(tmp_path)
    said: list[str] = []
    alone = team(gone, tmp_path, "mine", say=said.append)
    strict = team(gone, tmp_path, "mine", require=True)

    async def main() -> list[object]:
        return [
            await alone.arbitrate(render, BODY),
            await alone.arbitrate(render, BODY),
            await strict.arbitrate(render, BODY),
        ]

    first, second, refused = anyio.run(main)
    assert isinstance(first, Pay) and isinstance(second, Pay)
    assert len(said) == 1 and "rendering on this machine alone" in said[0]
    assert isinstance(refused, Later) and "--require-remote" in refused.reason


def test_a_store_that_comes_back_is_claimed_through_again(tmp_path: Path) -> None:
    """After a failure the store is asked again (here at once): claims resume."""
    shared = open_store(parse_remote(f"file://{tmp_path}"))
    blocker = tmp_path / "claims"
    blocker.write_text("a file where a folder should be")
    render = planned(tmp_path)
    member = team(shared, tmp_path, "mine")
    member.health.recheck = 0

    async def main() -> list[object]:
        first = await member.arbitrate(render, BODY)
        blocker.unlink()
        return [first, await member.arbitrate(render, BODY)]

    first, second = anyio.run(main)
    assert isinstance(first, Pay) and isinstance(second, Pay)
    assert member.claims.holds(render.fingerprint) and member.health.ok


def test_a_store_lost_while_waiting_on_a_claim_never_means_paying(
    tmp_path: Path, store: RemoteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run holds the claim and the store then fails: not submitted (that run is
    likely paying for it); the next run looks again."""
    render = planned(tmp_path)
    mine = team(store, tmp_path, "mine")
    theirs = ClaimBook(store, RunIdentity("theirs", "their-host", 2, "theirs"), lease=600)

    async def unreachable(key: str) -> None:
        raise RemoteError(f"{store.url}: cannot read {key}: connection refused")

    async def main() -> tuple[object, object]:
        await theirs.take(render.fingerprint, BODY)
        first = await mine.arbitrate(render, BODY)
        monkeypatch.setattr(store, "read", unreachable)
        return first, await mine.settle(render, first, patience=60)  # type: ignore[arg-type]

    first, settled = anyio.run(main)
    assert isinstance(first, Wait)
    assert isinstance(settled, Later) and "stopped answering" in settled.reason


@pytest.mark.parametrize("failing", ["renders/", "claims/"])
def test_a_claim_seen_taken_then_a_failed_read_never_means_paying(
    tmp_path: Path, store: RemoteStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """Another run holds a live claim (it is paying) and the very next read fails: the
    record look-up after the claim was seen, or the claim's own read after the create found
    it there. Not submitted: the render is left for a later look, never rendered alone."""
    render = planned(tmp_path)
    mine = team(store, tmp_path, "mine")
    theirs = ClaimBook(store, RunIdentity("theirs", "their-host", 2, "mine"), lease=600)
    read = store.read

    async def flaky(key: str) -> object:
        if key.startswith(failing):
            raise RemoteError(f"{store.url}: cannot read {key}: timed out")
        return await read(key)

    async def main() -> object:
        await theirs.take(render.fingerprint, BODY)
        monkeypatch.setattr(store, "read", flaky)
        return await mine.arbitrate(render, BODY)

    verdict = anyio.run(main)
    assert isinstance(verdict, Later), verdict  # left for a later run, the store marked down
    assert not mine.health.worth_asking


def test_a_job_taken_over_from_another_account_stays_that_accounts(
    tmp_path: Path, store: RemoteStore
) -> None:
    """A dead run of another account left its job in the claim; a run of this account takes
    the claim over (uncertain: it cannot see that job) and dies too. The next run of this
    account is uncertain as well, saying why: it never follows a job its key cannot see."""
    render = planned(tmp_path)
    at = datetime.now(UTC) - timedelta(hours=2)
    dead = ClaimBook(store, RunIdentity("dead", "gone-host", 9, "theirs"), lease=60, now=lambda: at)
    second = ClaimBook(
        store,
        RunIdentity("second", "host-2", 2, "mine"),
        lease=60,
        now=lambda: at + timedelta(hours=1),
    )
    mine = team(store, tmp_path, "mine")

    async def main() -> tuple[object, object]:
        await dead.take(render.fingerprint, BODY)
        await dead.set_job(render.fingerprint, "job_9")
        taken = await second.take(render.fingerprint, BODY)
        return taken, await mine.arbitrate(render, BODY)

    taken, verdict = anyio.run(main)
    assert getattr(taken, "expired", None) is not None  # the second run took it over
    assert isinstance(verdict, Unsure) and verdict.gap is not None
    assert "another API account (its job job_9)" in verdict.gap


@pytest.mark.parametrize("failing", ["replace", "renders/"])
def test_a_dead_claim_with_a_job_is_never_paid_again_when_the_store_fails(
    tmp_path: Path, store: RemoteStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A dead run of this account left its job in the claim; taking the claim over fails
    (the conditional update), or the record look-up after it does. The run follows that
    job or leaves the render for later: it never submits it again."""
    render = planned(tmp_path)
    at = datetime.now(UTC) - timedelta(hours=2)
    dead = ClaimBook(store, RunIdentity("dead", "gone-host", 9, "mine"), lease=60, now=lambda: at)
    mine = team(store, tmp_path, "mine")
    read = store.read

    async def broken_replace(key: str, data: bytes, etag: str | None) -> str | None:
        raise RemoteError(f"{store.url}: cannot update {key}: timed out")

    async def flaky_read(key: str) -> object:
        if key.startswith("renders/"):
            raise RemoteError(f"{store.url}: cannot read {key}: timed out")
        return await read(key)

    async def main() -> object:
        await dead.take(render.fingerprint, BODY)
        await dead.set_job(render.fingerprint, "job_9")
        if failing == "replace":
            monkeypatch.setattr(store, "replace", broken_replace)
        else:
            monkeypatch.setattr(store, "read", flaky_read)
        return await mine.arbitrate(render, BODY)

    verdict = anyio.run(main)
    if failing == "renders/":  # the claim was taken over: its job is followed here
        assert isinstance(verdict, Follow) and verdict.job_id == "job_9" and verdict.takeover
    else:  # not taken over: left for a later run, never paid, the store marked down
        assert isinstance(verdict, Later) and not mine.health.worth_asking
