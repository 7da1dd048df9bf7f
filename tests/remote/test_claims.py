"""The claim protocol against a shared folder (`file://`) and a (fake) GCS bucket (`gs://`,
whose conditional updates go by generation, not ETag): who gets to pay for a render."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from kling_batch.claims import Busy, Claim, ClaimBook, RunIdentity, Taken
from kling_batch.remote import RemoteStore, claim_key, open_store, parse_remote
from tests.remote.fake_gcs import FakeGCS

FINGERPRINT = "sha256:" + "c" * 64
BODY = {"model": "kling-o3", "prompt": "a lighthouse"}
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture(params=["file", "gs"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> RemoteStore:
    """Each test twice: on a shared folder, and on a bucket of the fake GCS."""
    if request.param == "gs":
        gcs: FakeGCS = request.getfixturevalue("gcs")
        for name, value in gcs.env().items():
            monkeypatch.setenv(name, value)
        return open_store(parse_remote(f"gs://{gcs.bucket()}/launch"))
    folder = tmp_path / "shared"
    folder.mkdir()
    return open_store(parse_remote(f"file://{folder}"))


def book(store: RemoteStore, name: str, clock: Clock, scope: str = "acct") -> ClaimBook:
    return ClaimBook(store, RunIdentity(name, f"{name}-host", 1, scope), lease=60, now=clock)


async def stored(store: RemoteStore) -> Claim:
    found = await store.read(claim_key(FINGERPRINT))
    assert found is not None
    return Claim.model_validate_json(found.data)


def test_of_two_runs_claiming_at_once_exactly_one_gets_it(store: RemoteStore) -> None:
    """A conditional create: many runs try, one holds the claim, the others see it busy."""
    clock = Clock()
    books = [book(store, f"run{n}", clock) for n in range(6)]
    results: list[Taken | Busy] = []

    async def main() -> None:
        async def take(claims: ClaimBook) -> None:
            results.append(await claims.take(FINGERPRINT, BODY))

        async with anyio.create_task_group() as group:
            for claims in books:
                group.start_soon(take, claims)

    anyio.run(main)
    assert sum(isinstance(r, Taken) for r in results) == 1
    busy = [r for r in results if isinstance(r, Busy)]
    assert len(busy) == 5 and all(r.claim is not None for r in busy)


def test_a_live_claim_carries_its_job_id_to_whoever_looks(store: RemoteStore) -> None:
    """The holder writes its job id into the claim; another run reads it from there."""
    clock = Clock()
    holder, other = book(store, "holder", clock), book(store, "other", clock)

    async def main() -> Taken | Busy:
        await holder.take(FINGERPRINT, BODY)
        assert await holder.set_job(FINGERPRINT, "job_42")
        return await other.take(FINGERPRINT, BODY, read_first=True)

    seen = anyio.run(main)
    assert isinstance(seen, Busy) and seen.claim is not None
    assert seen.claim.job_id == "job_42" and seen.claim.holder == "run holder on holder-host"


def test_an_expired_claim_is_taken_over_with_its_job(store: RemoteStore) -> None:
    """A lease that ran out (its machine died) hands the job to the next run."""
    clock = Clock()
    dead, heir = book(store, "dead", clock), book(store, "heir", clock)

    async def main() -> tuple[Taken | Busy, Taken | Busy, Claim]:
        await dead.take(FINGERPRINT, BODY)
        await dead.set_job(FINGERPRINT, "job_7")
        early = await heir.take(FINGERPRINT, BODY)
        clock.at += timedelta(seconds=61)
        late = await heir.take(FINGERPRINT, BODY)
        return early, late, await stored(store)

    early, late, claim = anyio.run(main)
    assert isinstance(early, Busy)
    assert isinstance(late, Taken) and late.expired is not None
    assert late.expired.job_id == "job_7" and late.expired.run == "dead"
    assert claim.run == "heir" and claim.job_id == "job_7" and claim.live(clock.at)


def test_a_run_whose_claim_was_taken_over_finds_out_and_stops_renewing(
    store: RemoteStore,
) -> None:
    """A slow holder's next write fails its If-Match: it never overwrites the new holder."""
    clock = Clock()
    slow, heir = book(store, "slow", clock), book(store, "heir", clock)

    async def main() -> Claim:
        await slow.take(FINGERPRINT, BODY)
        clock.at += timedelta(seconds=61)
        await heir.take(FINGERPRINT, BODY)
        await slow.renew()
        return await stored(store)

    claim = anyio.run(main)
    assert claim.run == "heir"
    assert not slow.holds(FINGERPRINT) and FINGERPRINT in slow.lost


def test_renewal_keeps_a_claim_live_past_its_first_lease(store: RemoteStore) -> None:
    """A holder that renews is never taken for dead."""
    clock = Clock()
    holder, other = book(store, "holder", clock), book(store, "other", clock)

    async def main() -> Taken | Busy:
        await holder.take(FINGERPRINT, BODY)
        for _ in range(3):
            clock.at += timedelta(seconds=40)
            await holder.renew()
        return await other.take(FINGERPRINT, BODY)

    assert isinstance(anyio.run(main), Busy)


def test_a_released_claim_is_free_at_once(store: RemoteStore) -> None:
    """A render that left nothing to pay for lets the next run take it without waiting."""
    clock = Clock()
    first, second = book(store, "first", clock), book(store, "second", clock)

    async def main() -> Taken | Busy:
        await first.take(FINGERPRINT, BODY)
        await first.release(FINGERPRINT)
        return await second.take(FINGERPRINT, BODY)

    taken = anyio.run(main)
    assert isinstance(taken, Taken) and taken.expired is None


def test_a_claim_that_cannot_be_read_is_never_taken_over(store: RemoteStore) -> None:
    """Damaged (or another version's): treated as held, however old."""
    clock = Clock()

    async def main() -> Taken | Busy:
        await store.create(claim_key(FINGERPRINT), b"not json")
        clock.at += timedelta(days=30)
        return await book(store, "reader", clock).take(FINGERPRINT, BODY)

    assert anyio.run(main) == Busy(None)


def test_a_claim_is_taken_carries_its_job_is_renewed_released_and_taken_again(
    store: RemoteStore,
) -> None:
    """Every conditional update of one claim's life goes through (on GCS too, where the
    update needs the object's generation, not only its ETag)."""
    clock = Clock()
    first, second = book(store, "first", clock), book(store, "second", clock)

    async def main() -> tuple[bool, Taken | Busy, Taken | Busy, Claim]:
        assert isinstance(await first.take(FINGERPRINT, BODY), Taken)
        job_set = await first.set_job(FINGERPRINT, "job_1")
        clock.at += timedelta(seconds=40)
        await first.renew()
        busy = await second.take(FINGERPRINT, BODY)
        await first.release(FINGERPRINT)
        return job_set, busy, await second.take(FINGERPRINT, BODY), await stored(store)

    job_set, busy, taken, claim = anyio.run(main)
    assert job_set and not first.lost and not first.holds(FINGERPRINT)
    assert isinstance(busy, Busy) and busy.claim is not None and busy.claim.job_id == "job_1"
    assert isinstance(taken, Taken) and taken.expired is None
    assert claim.run == "second" and claim.state == "rendering" and claim.live(clock.at)


def test_an_update_from_a_stale_version_is_refused_even_with_the_same_bytes(
    store: RemoteStore,
) -> None:
    """The version token names one write, not one content: GCS gives the same ETag (the
    content's MD5) to the same bytes written again, and only the generation tells them
    apart."""
    key = claim_key(FINGERPRINT)

    async def main() -> tuple[str | None, str | None]:
        created = await store.create(key, b"a")
        assert created is not None
        again = await store.replace(key, b"a", created)
        stale = await store.replace(key, b"b", created)
        return again, stale

    again, stale = anyio.run(main)
    assert again is not None and stale is None
