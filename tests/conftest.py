"""Shared fixtures.

This file must not import ``statetree`` at module level: pytest loads it before
typeguard's plugin installs its import hook, and a package imported earlier is never
instrumented (tests/test_typeguard.py fails if that happens).
"""

from typing import Any

import pytest

CORPUS_NAMES = [
    "array",
    "dataclass",
    "dict",
    "dtypes",
    "empty",
    "list",
    "namedtuple",
    "nested_mixture",
    "none_and_statics",
    "numpy",
    "tuple",
    "variables",
]


@pytest.fixture(params=CORPUS_NAMES)
def corpus_tree(request: pytest.FixtureRequest) -> Any:
    """A fresh pytree of each kind in tests/_corpus.py."""
    from _corpus import CORPUS

    return CORPUS[request.param]()
