"""Planning with Python's cyclic garbage collector paused (issue 13).

A plan makes millions of small objects that live until it ends and hardly a reference
cycle (what it drops goes by reference count); the collector, at any pace, walked every
live object again and again: a fifth of a warm plan of 10,000 renders at Python's pace, a
third of one of 100,000 at a hundred times fewer collections.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")


def collecting_after(work: Callable[_P, _R]) -> Callable[_P, _R]:
    """`work` with the collector paused, resumed once it returned (and what it dropped
    went by reference count): a pause inside one leaves it paused."""

    @wraps(work)
    def paused_work(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with paused():
            return work(*args, **kwargs)

    return paused_work


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection inside; the collector as it was after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
