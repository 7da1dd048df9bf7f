"""A bill once recorded is never erased by a later answer that carries none."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from kling_batch.following import completed_fields
from kling_batch.lockfile import Charge
from kling_batch.payloads import JobState
from tests.test_lockfile import sample_entry

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_a_completed_job_keeps_the_bill_an_earlier_answer_reported() -> None:
    """A job whose cancel answer reported a bill while it still rendered (recorded by
    `kling-batch cancel`) and that then completed with an answer carrying no bill keeps
    that bill on its entry and its submission: `spend` never reports less."""
    charge = Charge(
        fingerprint=f"sha256:{7:064x}",
        submitted_at=NOW,
        cost_usd=Decimal("1.400"),
        job_id="job_7",
        billed_usd=Decimal("1.4"),
    )
    entry = sample_entry(7, state="submitted").model_copy(update={"submissions": [charge]})
    job = JobState("job_7", "succeeded", "completed", video_url="https://cdn.example.com/7.mp4")
    fields = completed_fields(entry, job, NOW)
    recorded = entry.model_copy(update=fields)
    assert recorded.billed_usd == Decimal("1.4")
    assert recorded.submissions[-1].billed_usd == Decimal("1.4")
