"""A small BERT-style classifier, after Equinox's BERT example: token and position
embeddings, a self-attention encoder with dropout, a classification head. Trained with
statetree, then evaluated with dropout off through ``eqx.nn.inference_mode``.

Dropout takes a key per call, as in Equinox; ``eqx.nn.inference_mode`` flips every
``inference`` flag of the converted model (they stay nodes ``eqx.tree_at`` can find), and
the evaluation model shares the trained Variables. The task: tell whether a sequence of
tokens holds token 1 more often than token 2.

    python examples/equinox/tiny_bert.py
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from statetree.adapters import equinox as eqxst

import statetree as st

VOCAB, LENGTH, WIDTH, HEADS, LAYERS, BATCH, STEPS = 8, 6, 16, 2, 1, 16, 30


class EncoderLayer(eqx.Module):
    attention: eqx.nn.MultiheadAttention
    norm1: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP
    norm2: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.attention = eqx.nn.MultiheadAttention(HEADS, WIDTH, dropout_p=0.1, key=k1)
        self.norm1 = eqx.nn.LayerNorm(WIDTH)
        self.mlp = eqx.nn.MLP(WIDTH, WIDTH, 2 * WIDTH, depth=1, activation=jax.nn.gelu, key=k2)
        self.norm2 = eqx.nn.LayerNorm(WIDTH)
        self.dropout = eqx.nn.Dropout(0.1)

    def __call__(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        x = jax.vmap(self.norm1)(x + self.attention(x, x, x, key=k1))
        h = self.dropout(jax.vmap(self.mlp)(x), key=k2)
        return jax.vmap(self.norm2)(x + h)


class Classifier(eqx.Module):
    tokens: eqx.nn.Embedding
    positions: eqx.nn.Embedding
    layers: list[EncoderLayer]
    head: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.tokens = eqx.nn.Embedding(VOCAB, WIDTH, key=k1)
        self.positions = eqx.nn.Embedding(LENGTH, WIDTH, key=k2)
        self.layers = [EncoderLayer(k) for k in jax.random.split(k3, LAYERS)]
        self.head = eqx.nn.Linear(WIDTH, 2, key=k4)

    def __call__(self, ids: jax.Array, key: jax.Array | None = None) -> jax.Array:
        x = jax.vmap(self.tokens)(ids) + jax.vmap(self.positions)(jnp.arange(LENGTH))
        n = len(self.layers)
        keys = [None] * n if key is None else list(jax.random.split(key, n))
        for layer, k in zip(self.layers, keys, strict=True):
            x = layer(x, k)
        return self.head(x[0])  # the first position plays [CLS]


def data(seed: int) -> tuple[jax.Array, jax.Array]:
    ids = jax.random.randint(jax.random.key(seed), (BATCH, LENGTH), 0, VOCAB)
    labels = (jnp.sum(ids == 1, axis=1) > jnp.sum(ids == 2, axis=1)).astype(jnp.int32)
    return ids, labels


def loss_fn(model: Classifier, ids: jax.Array, labels: jax.Array, key: jax.Array) -> jax.Array:
    logits = jax.vmap(model)(ids, jax.random.split(key, BATCH))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


TX = optax.adamw(3e-3)


# ------------------------------------------------------------------- statetree, in place
@jax.jit
def train_step(model: Classifier, optimizer: st.Optimizer, ids: Any, labels: Any, key: Any) -> Any:
    loss, grads = eqx.filter_value_and_grad(loss_fn)(eqxst.freeze(model), ids, labels, key)
    optimizer.update(model, grads)
    return loss


@jax.jit
def evaluate(model: Classifier, ids: jax.Array) -> jax.Array:
    return jax.vmap(model)(ids)  # no keys: the model is in inference mode


Step = tuple[Callable[[], jax.Array], Callable[[], Any], Callable[[], jax.Array]]


def statetree_step() -> Step:
    """One in-place step as a zero-argument call returning the loss, a function giving
    the trained model back as plain Equinox, and one giving held-out logits with dropout
    off (``eqx.nn.inference_mode`` of the converted model, which shares its Variables)."""
    model = eqxst.mutable(Classifier(jax.random.key(0)))
    optimizer = st.Optimizer(model, TX)
    (ids, labels), keys = data(1), iter(range(1 << 30))

    def call() -> jax.Array:
        key = jax.random.fold_in(jax.random.key(2), next(keys))
        return train_step(model, optimizer, ids, labels, key)

    held_out = data(3)[0]
    return (
        call,
        lambda: eqxst.freeze(model),
        lambda: evaluate(eqx.nn.inference_mode(model), held_out),
    )


# ------------------------------------------------------------------- pure Equinox
@eqx.filter_jit
def equinox_train_step(model: Classifier, opt_state: Any, ids: Any, labels: Any, key: Any) -> Any:
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model, ids, labels, key)
    updates, opt_state = TX.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, loss


def equinox_step() -> Step:
    model = Classifier(jax.random.key(0))
    carry = [model, TX.init(eqx.filter(model, eqx.is_array))]
    (ids, labels), keys = data(1), iter(range(1 << 30))

    def call() -> jax.Array:
        key = jax.random.fold_in(jax.random.key(2), next(keys))
        carry[0], carry[1], loss = equinox_train_step(carry[0], carry[1], ids, labels, key)
        return loss

    held_out = data(3)[0]
    logits = eqx.filter_jit(lambda m, ids: jax.vmap(eqx.nn.inference_mode(m))(ids))
    return call, lambda: carry[0], lambda: logits(carry[0], held_out)


def main(steps: int = STEPS) -> list[float]:
    step, _, _ = statetree_step()
    losses = [float(step()) for _ in range(steps)]
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {steps} steps (dropout on)")
    return losses


if __name__ == "__main__":
    main()
