"""Equinox's stateful model (BatchNorm + SpectralNorm), trained with statetree.

The model and the training loop are written Equinox's way; statetree changes three
things: the model and its state are converted once (``eqxst.mutable``), the step is a
plain ``jax.jit`` that returns only the loss (the parameters, the optimizer state and
the batch statistics are updated in place), and the batched call goes through
``eqxst.in_place`` (JAX refuses writes into an unmapped ref inside ``vmap``).

The pure-Equinox version of the same script is here too (``equinox_step``); the tests
check that both train step for step alike, and ``benchmarks/bench_equinox.py`` times
them.

    python examples/equinox/stateful.py
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from statetree.adapters import equinox as eqxst

import statetree as st

BATCH, STEPS = 32, 20


class Model(eqx.Module):
    norm1: eqx.nn.BatchNorm
    spectral_linear: eqx.nn.SpectralNorm[eqx.nn.Linear]
    norm2: eqx.nn.BatchNorm
    linear1: eqx.nn.Linear
    linear2: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.norm1 = eqx.nn.BatchNorm(3, axis_name="batch", mode="ema")
        linear = eqx.nn.Linear(3, 32, key=k1)
        self.spectral_linear = eqx.nn.SpectralNorm(linear, "weight", key=k2)
        self.norm2 = eqx.nn.BatchNorm(32, axis_name="batch", mode="ema")
        self.linear1 = eqx.nn.Linear(32, 32, key=k3)
        self.linear2 = eqx.nn.Linear(32, 3, key=k4)

    def __call__(self, x: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        x, state = self.norm1(x, state)
        x, state = self.spectral_linear(x, state)
        x = jax.nn.relu(x)
        x, state = self.norm2(x, state)
        x = jax.nn.relu(self.linear1(x))
        return self.linear2(x), state


def data() -> tuple[jax.Array, jax.Array]:
    x = jax.random.normal(jax.random.key(1), (BATCH, 3))
    return x, jnp.sin(2 * x) + 0.1 * x**2


def batched(model: Model) -> Callable[..., Any]:
    return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))


TX = optax.adam(3e-3)


# ------------------------------------------------------------------- statetree, in place
@jax.jit
def train_step(model: Model, state: Any, optimizer: st.Optimizer, x: Any, y: Any) -> jax.Array:
    """One step; returns the loss. Parameters, optimizer state and batch statistics are
    written in place."""

    def loss(model: Model) -> jax.Array:
        pred, _ = eqxst.in_place(batched(model))(x, state)  # statistics land in `state`
        return jnp.mean((pred - y) ** 2)

    value, grads = eqx.filter_value_and_grad(loss)(eqxst.freeze(model))
    optimizer.update(model, grads)
    return value


def statetree_step(packed: bool = True) -> tuple[Callable[[], jax.Array], Callable[[], Any]]:
    """One in-place training step as a zero-argument call returning the loss, and a
    function giving the trained (model, state) back as plain Equinox."""
    model, state = eqxst.mutable(eqx.nn.make_with_state(Model)(jax.random.key(0)))
    if packed:  # a few buffers instead of one jax.Ref per array: faster dispatch
        model, state = st.mutable(model, packed=True), st.mutable(state, packed=True)
    optimizer = st.Optimizer(model, TX, packed=packed)
    x, y = data()
    call = lambda: train_step(model, state, optimizer, x, y)
    return call, (lambda: eqxst.freeze((model, state)))


# ------------------------------------------------------------------- pure Equinox
@eqx.filter_jit
def equinox_train_step(model: Model, state: Any, opt_state: Any, x: Any, y: Any) -> Any:
    def loss(model: Model, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        pred, state = batched(model)(x, state)
        return jnp.mean((pred - y) ** 2), state

    (value, state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, state)
    updates, opt_state = TX.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), state, opt_state, value


def equinox_step() -> tuple[Callable[[], jax.Array], Callable[[], Any]]:
    model, state = eqx.nn.make_with_state(Model)(jax.random.key(0))
    carry = [model, state, TX.init(eqx.filter(model, eqx.is_array))]
    x, y = data()

    def call() -> jax.Array:
        carry[0], carry[1], carry[2], value = equinox_train_step(
            carry[0], carry[1], carry[2], x, y
        )
        return value

    return call, lambda: (carry[0], carry[1])


def main(steps: int = STEPS) -> list[float]:
    step, _ = statetree_step()
    losses = [float(step()) for _ in range(steps)]
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {steps} in-place steps")
    return losses


if __name__ == "__main__":
    main()
