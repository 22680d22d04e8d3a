"""The dataclasses that cross the workflow boundary carry real annotations, not strings.

The payload converter resolves their field types with typing.get_type_hints on every
conversion, also inside the workflow sandbox, where the modules they come from are not in the
module table: a string annotation then fails to resolve and the workflow task fails (a
`from __future__ import annotations` in one of these modules did exactly that).
"""

import dataclasses
import inspect
from types import ModuleType

import pytest

import core.lifecycle
import core.objects
import workflows.types

MODULES = [core.lifecycle, core.objects, workflows.types]


def payload_dataclasses(module: ModuleType) -> list[type]:
    return [
        c
        for _, c in inspect.getmembers(module, dataclasses.is_dataclass)
        if isinstance(c, type) and c.__module__ == module.__name__
    ]


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_field_annotations_are_types_not_strings(module: ModuleType) -> None:
    classes = payload_dataclasses(module)
    assert classes, f"{module.__name__} defines no dataclass"
    strings = [
        f"{c.__name__}.{f.name}"
        for c in classes
        for f in dataclasses.fields(c)
        if isinstance(f.type, str)
    ]
    assert strings == []
