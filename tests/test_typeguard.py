"""The run-time type checks are really on: typeguard instruments ``statetree``."""

import pytest
from _corpus import CORPUS
from conftest import CORPUS_NAMES
from typeguard import TypeCheckError

import statetree as st


def test_wrong_typed_call_fails_under_the_plugin() -> None:
    # `State(flat)` is annotated `Mapping[Path, Any] | None`; without typeguard an int
    # would fail later with a plain TypeError from iteration, not a TypeCheckError.
    with pytest.raises(TypeCheckError, match="flat"):
        st.State(5)  # type: ignore[arg-type]


def test_return_annotations_are_checked_too() -> None:
    with pytest.raises(TypeCheckError):
        st.keystr(7)  # type: ignore[arg-type]


def test_corpus_names_match() -> None:
    assert sorted(CORPUS) == sorted(CORPUS_NAMES)
