"""Parametrizes the provider contract's `algorithm` over each provider's ALGORITHMS."""

from __future__ import annotations

import pytest


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    algorithms = getattr(metafunc.cls, "ALGORITHMS", None)
    if algorithms is not None and "algorithm" in metafunc.fixturenames:
        metafunc.parametrize("algorithm", algorithms)
