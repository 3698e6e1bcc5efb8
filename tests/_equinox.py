"""Shared pieces of the Equinox adapter's tests (tests/test_equinox_*.py)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

import statetree as st

KEY = jax.random.key(0)


def is_variable(x: object) -> bool:
    return isinstance(x, st.Variable)


def variables(tree: object) -> list[st.Variable]:
    return [x for x in jtu.tree_leaves(tree, is_leaf=is_variable) if is_variable(x)]


def assert_trees_close(a: object, b: object, **tol: float) -> None:
    la, ta = jtu.tree_flatten(eqx.filter(a, eqx.is_array))
    lb, tb = jtu.tree_flatten(eqx.filter(b, eqx.is_array))
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def mse(pred: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((pred - y) ** 2)


class CNN(eqx.Module):
    """A tiny Conv -> BatchNorm -> relu -> pool -> Linear model (Equinox's way)."""

    conv: eqx.nn.Conv2d
    norm: eqx.nn.BatchNorm
    head: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 4, 3, key=k1)
        self.norm = eqx.nn.BatchNorm(4, "batch", momentum=0.9, mode="ema")
        self.head = eqx.nn.Linear(4, 3, key=k2)

    def __call__(self, x: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        x, state = self.norm(self.conv(x), state)
        return self.head(jax.nn.relu(x).mean(axis=(1, 2))), state


def batched(model: object) -> object:
    return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
