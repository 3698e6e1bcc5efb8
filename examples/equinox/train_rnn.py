"""Equinox's GRU RNN (clockwise vs anticlockwise spirals), trained in place.

The RNN scans a ``eqx.nn.GRUCell`` over the sequence with ``jax.lax.scan``; its own
``bias`` field is read as an array inside ``__call__``. Data are synthetic spirals, as
in Equinox's notebook.

    python examples/equinox/train_rnn.py
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from statetree.adapters import equinox as eqxst

import statetree as st

BATCH, LENGTH, STEPS = 32, 16, 20


class RNN(eqx.Module):
    hidden_size: int
    cell: eqx.nn.GRUCell
    linear: eqx.nn.Linear
    bias: jax.Array

    def __init__(self, in_size: int, out_size: int, hidden_size: int, key: jax.Array) -> None:
        ckey, lkey = jax.random.split(key)
        self.hidden_size = hidden_size
        self.cell = eqx.nn.GRUCell(in_size, hidden_size, key=ckey)
        self.linear = eqx.nn.Linear(hidden_size, out_size, use_bias=False, key=lkey)
        self.bias = jnp.zeros(out_size)

    def __call__(self, xs: jax.Array) -> jax.Array:
        def f(hidden: jax.Array, x: jax.Array) -> tuple[jax.Array, None]:
            return self.cell(x, hidden), None

        out, _ = jax.lax.scan(f, jnp.zeros(self.hidden_size), xs)
        return jax.nn.sigmoid(self.linear(out) + self.bias)


def data() -> tuple[jax.Array, jax.Array]:
    t = jnp.linspace(0, 2 * jnp.pi, LENGTH)
    offset = jax.random.uniform(jax.random.key(1), (BATCH, 1), maxval=2 * jnp.pi)
    x1 = jnp.sin(t + offset) / (1 + t)
    x2 = jnp.cos(t + offset) / (1 + t)
    y = jnp.zeros((BATCH,)).at[: BATCH // 2].set(1)
    x2 = jnp.where(y[:, None] == 1, -x2, x2)  # half of them turn the other way
    return jnp.stack([x1, x2], axis=-1), y


def loss(model: RNN, x: jax.Array, y: jax.Array) -> jax.Array:
    pred = jax.vmap(model)(x)[:, 0]
    return -jnp.mean(y * jnp.log(pred) + (1 - y) * jnp.log(1 - pred))


TX = optax.adam(3e-3)


def build() -> RNN:
    return RNN(2, 1, 16, jax.random.key(0))


# ------------------------------------------------------------------- statetree, in place
@jax.jit
def train_step(model: Any, optimizer: st.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    """Differentiate a frozen (plain Equinox) copy, as Equinox does; write in place."""
    value, grads = eqx.filter_value_and_grad(loss)(eqxst.freeze(model), x, y)
    optimizer.update(model, grads)  # parameters and optimizer state, in place
    return value


def statetree_step(packed: bool = True) -> tuple[Callable[[], jax.Array], Callable[[], Any]]:
    model = eqxst.mutable(build())
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
    model = build()
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
