"""The Python client of 001_019c7eb82d54c46f.txt, read from the reference document itself so
that the test runs it unchanged (`../shared/seeds/` beside the repository)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SEED = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "001_019c7eb82d54c46f.txt"


def reference_client_source() -> str:
    """The document's ```python block that defines `KeyManager` and `example()`."""
    blocks = re.findall(r"```python\n(.*?)```", SEED.read_text(), flags=re.S)
    source: str = next(b for b in blocks if "class KeyManager" in b and "def example" in b)
    return source


def load_reference_client() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "reference_client"}
    exec(compile(reference_client_source(), str(SEED), "exec"), namespace)
    return namespace
