"""Poll pacing and scheduling order: few polls, each close to when the job ends."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from kling_batch.pacing import PollPacing, longest_first, measured_speed
from kling_batch.plan import build_plan
from tests.conftest import NOW

FIVE = Decimal(5)


def test_first_poll_waits_first_delay_before_anything_is_learnt() -> None:
    """With no readings and no finished job, the first poll waits `first_delay`."""
    assert PollPacing(first_delay=30).next_delay("pro", FIVE, 0.0, []) == 30


def test_two_readings_predict_the_end() -> None:
    """Progress 0.2 at 40 s and 0.6 at 60 s: the job ends at 80 s; poll then (plus margin)."""
    pacing = PollPacing(margin=0.5)
    readings = [(40.0, 0.2), (60.0, 0.6)]
    assert measured_speed(readings) == pytest.approx(0.02)
    assert pacing.next_delay("pro", FIVE, 60.0, readings) == pytest.approx(20.5)


def test_one_reading_uses_learnt_rendering_speed() -> None:
    """After learning a pro job renders 10 s per video second, 50% left of 5 s is ~25 s."""
    pacing = PollPacing(early=1.0)
    pacing.learn_speed("pro", FIVE, 1 / 50)
    assert pacing.next_delay("pro", FIVE, 30.0, [(30.0, 0.5)]) == pytest.approx(25.0)


def test_queued_job_waits_for_the_typical_duration() -> None:
    """With no progress yet, the poll waits until a little before similar jobs finished."""
    pacing = PollPacing(early=0.9)
    pacing.learn("standard", FIVE, 100.0)
    pacing.learn("standard", Decimal(10), 200.0)
    assert pacing.next_delay("standard", FIVE, 10.0, [(10.0, 0.0)]) == pytest.approx(80.0)


def test_waits_are_clamped() -> None:
    """A stalled job is still polled every `max_delay`; a due one waits at least `min_delay`."""
    pacing = PollPacing(min_delay=1.0, max_delay=120.0)
    assert pacing.next_delay("4k", FIVE, 10.0, [(5.0, 0.001), (10.0, 0.0011)]) == 120.0
    assert pacing.next_delay("4k", FIVE, 100.0, [(10.0, 0.5), (20.0, 0.99)]) == 1.0


def test_longest_renders_are_scheduled_first(project: Callable[..., Path]) -> None:
    """In-flight work first, then new renders by expected cost, manifest order on ties."""
    path = project("""
        [[shots]]
        id = "short"
        prompt = "p"
        model_tier = "standard"
        [[shots]]
        id = "long"
        prompt = "p"
        model_tier = "4k"
        duration = 10
        [[shots]]
        id = "short2"
        prompt = "q"
        model_tier = "standard"
    """)
    plan = build_plan(path, now=NOW)
    assert [i.render.id for i in longest_first(plan.items)] == ["long", "short", "short2"]


def test_overdue_job_is_polled_less_and_less_often() -> None:
    """Past its predicted end, a job waits a quarter of how late it is, not one second."""
    pacing = PollPacing(min_delay=1.0, max_delay=120.0)
    readings = [(10.0, 0.2), (20.0, 0.4), (30.0, 0.6)]  # predicted end: 50 s
    assert pacing.next_delay("pro", FIVE, 90.0, readings) == pytest.approx(10.0)
    assert pacing.next_delay("pro", FIVE, 450.0, readings) == pytest.approx(100.0)
    assert pacing.next_delay("pro", FIVE, 2000.0, readings) == 120.0


def test_long_queue_backs_off_too() -> None:
    """A job still queued long after similar jobs finished is not polled every second."""
    pacing = PollPacing(early=1.0)
    pacing.learn("pro", FIVE, 100.0)
    assert pacing.next_delay("pro", FIVE, 180.0, [(180.0, 0.0)]) == pytest.approx(20.0)
