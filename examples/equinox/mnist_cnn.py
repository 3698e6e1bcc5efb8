"""Equinox's MNIST CNN, trained in place with statetree (synthetic data, real shapes).

The model is Equinox's notebook model as written: ``layers`` mixes modules with plain
functions (``jax.nn.relu``, ``jnp.ravel``); ``eqxst.mutable`` keeps the functions as
they are. Images are random 1x28x28 arrays and labels random digits, so nothing is
downloaded; the shapes and the arithmetic are MNIST's.

    python examples/equinox/mnist_cnn.py
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from statetree.adapters import equinox as eqxst

import statetree as st

BATCH, STEPS = 16, 10


class CNN(eqx.Module):
    layers: list

    def __init__(self, key: jax.Array) -> None:
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.layers = [
            eqx.nn.Conv2d(1, 3, kernel_size=4, key=k1),
            eqx.nn.MaxPool2d(kernel_size=2),
            jax.nn.relu,
            jnp.ravel,
            eqx.nn.Linear(1728, 512, key=k2),
            jax.nn.sigmoid,
            eqx.nn.Linear(512, 64, key=k3),
            jax.nn.relu,
            eqx.nn.Linear(64, 10, key=k4),
            jax.nn.log_softmax,
        ]

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return x


def data() -> tuple[jax.Array, jax.Array]:
    images = jax.random.normal(jax.random.key(1), (BATCH, 1, 28, 28))
    return images, jax.random.randint(jax.random.key(2), (BATCH,), 0, 10)


def loss(model: CNN, x: jax.Array, y: jax.Array) -> jax.Array:
    log_probs = jax.vmap(model)(x)
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


TX = optax.adamw(3e-4)


# ------------------------------------------------------------------- statetree, in place
@jax.jit
def train_step(model: Any, optimizer: st.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    """Differentiate a frozen (plain Equinox) copy, as Equinox does; write in place."""
    value, grads = eqx.filter_value_and_grad(loss)(eqxst.freeze(model), x, y)
    optimizer.update(model, grads)  # parameters and optimizer state, in place
    return value


def statetree_step(packed: bool = False) -> tuple[Callable[[], jax.Array], Callable[[], Any]]:
    model = eqxst.mutable(CNN(jax.random.key(0)))
    if packed:
        model = st.mutable(model, packed=True)
    optimizer = st.Optimizer(model, TX, packed=packed)
    x, y = data()
    return (lambda: train_step(model, optimizer, x, y)), (lambda: eqxst.freeze(model))


# ------------------------------------------------------------------- pure Equinox
@eqx.filter_jit
def equinox_train_step(model: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
    value, grads = eqx.filter_value_and_grad(loss)(model, x, y)
    updates, opt_state = TX.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, value


def equinox_step() -> tuple[Callable[[], jax.Array], Callable[[], Any]]:
    model = CNN(jax.random.key(0))
    carry = [model, TX.init(eqx.filter(model, eqx.is_array))]
    x, y = data()

    def call() -> jax.Array:
        carry[0], carry[1], value = equinox_train_step(carry[0], carry[1], x, y)
        return value

    return call, lambda: carry[0]


def main(steps: int = STEPS) -> list[float]:
    step, _ = statetree_step()
    losses = [float(step()) for _ in range(steps)]
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {steps} in-place steps")
    return losses


if __name__ == "__main__":
    main()
