"""The scan-over-layers recipe (docs/recipes/scan-over-layers.md), checked against
applying the layers one by one."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _pages import run_page

import statetree as st

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "recipes" / "scan-over-layers.md"


@pytest.fixture(scope="module")
def page() -> dict:
    return run_page(PAGE)  # runs the page, its printed outputs checked too


def layer(frozen_stack: object, i: int) -> object:
    """Layer ``i`` of a frozen stack, as a mutable block of its own."""
    return st.mutable(jax.tree.map(lambda a: a[i], frozen_stack))


def test_scan_equals_layers_applied_one_by_one(page: dict) -> None:
    frozen = page["create_stack"](page["keys"])
    stack = st.mutable(frozen)
    x = page["x"]
    y = page["forward"](stack, x)

    h, layers = x, []
    for i in range(8):
        block = layer(frozen, i)
        h = block(h)
        layers.append(block)
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)
    for i, block in enumerate(layers):
        np.testing.assert_allclose(stack.bn.mean[i], block.bn.mean[...], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stack.bn.var[i], block.bn.var[...], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(stack.dropout.key[i], block.dropout.key[...])
    # The parameters were read, never written.
    np.testing.assert_array_equal(stack.linear.kernel[...], frozen.linear.kernel[...])


def test_naive_scan_over_refs_gives_the_same_numbers(page: dict) -> None:
    frozen = page["create_stack"](page["keys"])
    a, b = st.mutable(frozen), st.mutable(frozen)
    ya = page["forward"](a, page["x"])
    yb = jax.jit(page["apply_stack_naive"])(b, page["x"])
    np.testing.assert_allclose(ya, yb, rtol=1e-6)
    for va, vb in zip(st.state(a).values(), st.state(b).values(), strict=True):
        np.testing.assert_allclose(va[...], vb[...], rtol=1e-6)


def test_created_mutable_stack_has_a_layer_axis(page: dict) -> None:
    stack = page["stack"]
    assert all(v.mutable and v.shape[0] == 8 for v in st.state(stack).values())
    assert isinstance(stack.dropout.key, page["RngState"])


def test_training_the_stack_lowers_the_loss_and_moves_statistics(page: dict) -> None:
    losses = page["losses"]
    assert losses[-1] < 0.5 * losses[0]
    stack, optimizer = page["stack"], page["optimizer"]
    mean = np.asarray(stack.bn.mean[...])
    page["train_step"](stack, optimizer, page["x"], page["target"])
    assert np.all(np.any(np.asarray(stack.bn.mean[...]) != mean, axis=1))


def test_update_writes_non_differentiable_state_under_grad() -> None:
    # st.update inside a loss: BatchStat values computed from differentiated params.
    tree = st.mutable({"w": st.Param(jnp.ones(3)), "s": st.BatchStat(jnp.zeros(3))})
    graphdef, params, rest = st.split(tree, st.Param, ...)

    @jax.jit
    def grad(params: st.State, rest: st.State) -> st.State:
        def loss(params: st.State) -> jax.Array:
            model = st.merge(graphdef, params, rest)
            st.update(model, st.State({("s",): 2 * model["w"][...]}))
            return jnp.sum(model["w"] ** 2)

        return jax.grad(loss)(params)

    g = grad(st.freeze(params), rest)
    np.testing.assert_allclose(g[("w",)][...], 2 * jnp.ones(3))
    np.testing.assert_allclose(tree["s"][...], 2 * jnp.ones(3))
