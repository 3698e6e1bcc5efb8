"""The training-loop recipe (docs/recipes/training-loop.md), checked fact by fact.

The page's code is run once (module-scoped) and its namespace inspected: the loss falls,
the batch statistics and the RNG state move in place, and the step returns only the loss.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _pages import run_page

import statetree as st

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "recipes" / "training-loop.md"


@pytest.fixture(scope="module")
def page() -> dict:
    return run_page(PAGE)  # runs the page, its printed outputs checked too


def test_loss_falls(page: dict) -> None:
    losses = page["losses"]
    assert len(losses) == 100
    assert losses[-1] < 0.5 * losses[0]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_step_returns_only_the_loss(page: dict) -> None:
    out = page["train_step"](page["model"], page["optimizer"], page["x"], page["y"])
    assert isinstance(out, jax.Array) and out.shape == ()
    assert int(page["optimizer"].step[...]) == 101


def test_batch_statistics_update_in_place_by_the_momentum_rule(page: dict) -> None:
    model, x = page["model"], page["x"]
    before = st.freeze(model)  # a snapshot of everything before the step
    hidden = before.linear(x)
    page["train_step"](model, page["optimizer"], x, page["y"])
    expected_mean = 0.9 * before.bn.mean[...] + 0.1 * hidden.mean(axis=0)
    expected_var = 0.9 * before.bn.var[...] + 0.1 * hidden.var(axis=0)
    np.testing.assert_allclose(model.bn.mean[...], expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.bn.var[...], expected_var, rtol=1e-5, atol=1e-6)
    assert model.bn.mean.mutable and isinstance(model.bn.mean, st.BatchStat)


def test_dropout_key_advances_by_one_split_per_call(page: dict) -> None:
    model = page["model"]
    key = model.dropout.key[...]
    page["train_step"](model, page["optimizer"], page["x"], page["y"])
    np.testing.assert_array_equal(model.dropout.key[...], jax.random.split(key)[0])
    assert isinstance(model.dropout.key, page["RngState"])
    assert not page["RngState"].differentiable


def test_params_change_and_optimizer_state_is_its_own(page: dict) -> None:
    model, optimizer = page["model"], page["optimizer"]
    kernel = np.asarray(model.linear.kernel[...])
    page["train_step"](model, optimizer, page["x"], page["y"])
    assert not np.array_equal(kernel, model.linear.kernel[...])
    assert st.find_aliases((model, optimizer)) == []
    assert all(isinstance(v, st.OptState) for v in st.state(optimizer).values())


def test_evaluation_writes_nothing(page: dict) -> None:
    model = page["model"]
    before = [np.asarray(a) for a in jax.tree.leaves(st.unbox(model))]
    out = page["evaluate"](model, page["x"], page["y"])
    assert jnp.isfinite(out)
    after = jax.tree.leaves(st.unbox(model))
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
