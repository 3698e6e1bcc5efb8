"""Flax NNX's introductory model (Linear -> BatchNorm -> Dropout -> relu -> Linear,
``nnx.Optimizer``, ``model.train()`` / ``model.eval()``), moved to statetree.

The statetree model is plain Python classes under ``st.register_node``, with the same
attribute names as the NNX model, so NNX's weights (batch statistics and the dropout
stream's key and count included) are written into it with one ``st.update``. NNX's
``model.train()`` / ``model.eval()`` become a ``train`` argument: a static argument of
the jitted step, so training and evaluation are two compiled programs, as in NNX.
Dropout's key stream is state: a key and a counter in Variables, advanced in place.

    python examples/flax_nnx/dropout_batchnorm.py
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import statetree as st

DIN, DMID, DOUT, BATCH, RATE, STEPS = 4, 16, 2, 32, 0.2, 30


class RngState(st.Variable):
    """A random stream's key and counter: state, never differentiated."""

    __slots__ = ()
    differentiable = False


@st.register_node
class Linear:
    def __init__(self, key: jax.Array, din: int, dout: int, use_bias: bool = True) -> None:
        self.kernel = st.Param(jax.random.normal(key, (din, dout)) / jnp.sqrt(din))
        self.bias = st.Param(jnp.zeros(dout)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel
        return y if self.bias is None else y + self.bias


@st.register_node
class BatchNorm:
    def __init__(self, features: int, momentum: float = 0.99, epsilon: float = 1e-5) -> None:
        self.scale = st.Param(jnp.ones(features))
        self.bias = st.Param(jnp.zeros(features))
        self.mean = st.BatchStat(jnp.zeros(features))
        self.var = st.BatchStat(jnp.ones(features))
        self.momentum, self.epsilon = momentum, epsilon

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if train:  # NNX's statistics: E[x] and E[x^2] - E[x]^2, clipped at zero
            mean = x.mean(0)
            var = jnp.maximum(0.0, (x * x).mean(0) - mean * mean)
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * mean
            self.var[...] = m * self.var[...] + (1 - m) * var
        else:
            mean, var = self.mean[...], self.var[...]
        return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * self.scale) + self.bias


@st.register_node
class RngStream:
    def __init__(self, seed: int) -> None:
        self.key = RngState(jax.random.key(seed))
        self.count = RngState(jnp.uint32(0))

    def __call__(self) -> jax.Array:
        key = jax.random.fold_in(self.key[...], self.count[...])
        self.count[...] += 1
        return key


@st.register_node
class Dropout:
    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.rngs = RngStream(seed)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if not train:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.rngs(), keep, x.shape)
        return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


@st.register_node
class MLP:
    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.linear1 = Linear(k1, DIN, DMID, use_bias=False)  # BatchNorm follows
        self.bn = BatchNorm(DMID)
        self.dropout = Dropout(RATE, seed=0)
        self.linear2 = Linear(k2, DMID, DOUT)

    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        h = self.dropout(self.bn(self.linear1(x), train), train)
        return self.linear2(jax.nn.relu(h))


# ------------------------------------------------------------------- Flax NNX
class NNXMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.linear1 = nnx.Linear(DIN, DMID, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(DMID, rngs=rngs)
        self.dropout = nnx.Dropout(RATE, rngs=rngs)
        self.linear2 = nnx.Linear(DMID, DOUT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(nnx.relu(self.dropout(self.bn(self.linear1(x)))))


def data(seed: int) -> tuple[jax.Array, jax.Array]:
    x = jax.random.normal(jax.random.key(seed), (BATCH, DIN))
    return x, jnp.stack([jnp.sin(x[:, 0] + x[:, 1]), x[:, 2] * x[:, 3]], axis=1)


TX = optax.adam(1e-2)


@nnx.jit
def nnx_train_step(model: NNXMLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> Any:
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def nnx_predict(model: NNXMLP, x: jax.Array) -> jax.Array:
    return model(x)


def nnx_model() -> NNXMLP:
    return NNXMLP(nnx.Rngs(0))


def nnx_run() -> tuple[Callable[[], jax.Array], NNXMLP, Callable[[], jax.Array]]:
    """NNX's loop: a step call returning the loss (model.train()), the model, and an
    evaluation (model.eval(), then back to training)."""
    model = nnx_model()
    optimizer = nnx.Optimizer(model, TX, wrt=nnx.Param)
    x, y = data(1)
    held_out = data(2)[0]

    def evaluate() -> jax.Array:
        model.eval()
        out = nnx_predict(model, held_out)
        model.train()
        return out

    model.train()
    return (lambda: nnx_train_step(model, optimizer, x, y)), model, evaluate


# ------------------------------------------------------------------- statetree
@partial(jax.jit, static_argnames="train")
def predict(model: MLP, x: jax.Array, train: bool = False) -> jax.Array:
    return model(x, train)


@jax.jit
def train_step(model: MLP, optimizer: st.Optimizer, x: jax.Array, y: jax.Array) -> Any:
    graphdef, params, rest = st.split(model, st.Param, ...)

    def loss_fn(params: st.State) -> jax.Array:
        return jnp.mean((st.merge(graphdef, params, rest)(x, train=True) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(st.freeze(params))
    optimizer.update(model, grads)  # in place: weights and adam's moments
    return loss


def from_nnx(source: NNXMLP) -> MLP:
    """A mutable statetree model holding ``source``'s weights, batch statistics and
    dropout stream: one ``st.update`` by path (the attribute names are NNX's)."""
    model = st.mutable(MLP(jax.random.key(0)))
    flat = {path: variable[...] for path, variable in nnx.to_flat_state(nnx.state(source))}
    st.update(model, st.State(flat))
    return model


def statetree_run() -> tuple[Callable[[], jax.Array], MLP, Callable[[], jax.Array]]:
    model = from_nnx(nnx_model())
    optimizer = st.Optimizer(model, TX, wrt=st.Param)
    x, y = data(1)
    held_out = data(2)[0]
    return (lambda: train_step(model, optimizer, x, y)), model, (lambda: predict(model, held_out))


def main(steps: int = STEPS) -> list[float]:
    step, _, evaluate = statetree_run()
    losses = [float(step()) for _ in range(steps)]
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; eval output {evaluate().shape}")
    return losses


if __name__ == "__main__":
    main()
