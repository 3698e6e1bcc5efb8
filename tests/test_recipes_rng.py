"""The random-keys recipe (docs/recipes/random-keys.md): the Equinox model holding an
st.Rng trains step for step as key-threading Equinox does."""

import pathlib

import jax
import numpy as np
import pytest
from _pages import run_page
from statetree.adapters import equinox as eqxst

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "recipes" / "random-keys.md"


@pytest.fixture(scope="module")
def page() -> dict:
    return run_page(PAGE)  # runs the page, its printed outputs checked too


def test_equinox_with_an_rng_matches_key_threading_step_for_step(page: dict) -> None:
    assert page["in_place"] == page["threaded"]  # the losses, bit for bit
    trained = eqxst.freeze(page["model"]).net
    threaded = page["net"]
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(threaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_stream_ends_where_the_threaded_key_ends(page: dict) -> None:
    rng_key = page["model"].rng.key
    np.testing.assert_array_equal(jax.random.key_data(rng_key), jax.random.key_data(page["key"]))


def test_resumed_job_drew_the_uninterrupted_keys(page: dict) -> None:
    first, resumed, whole = page["first"], page["resumed"], page["uninterrupted"]
    assert len(first) == 3 and len(first) + len(resumed) == len(whole) == 6
    np.testing.assert_array_equal(np.stack(first + resumed), np.stack(whole))
