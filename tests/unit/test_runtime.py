"""Process settings of the long-running commands."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from core.runtime import FULL_COLLECTION_AFTER, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_what_start_made_and_spaces_full_collections() -> None:
    young, middle, _ = gc.get_threshold()
    gc.unfreeze()
    tune_gc()
    assert gc.get_freeze_count() > 10_000  # the modules and what they built
    assert gc.get_threshold() == (young, middle, FULL_COLLECTION_AFTER)
    assert FULL_COLLECTION_AFTER > 10  # Python's default
