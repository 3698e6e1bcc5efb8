"""A small transformer decoder, generating greedily with an in-place KV cache.

The attention layer is written Equinox's way: its key/value cache lives in an
``eqx.nn.State`` (``eqx.nn.StateIndex``), read with ``state.get``, updated with
``.at[pos].set`` and ``jax.lax.dynamic_update_slice``, written back with ``state.set``.
Converted with ``eqxst.mutable``, the same code writes the cache in place: the
generation loop (``jax.lax.fori_loop``) carries only the tokens, not the state.

    python examples/equinox/kv_decoder.py
"""

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from statetree.adapters import equinox as eqxst

import statetree as st

VOCAB, DIM, HEADS, DEPTH, MAX_LEN = 32, 32, 4, 2, 16


class Attention(eqx.Module):
    qkv: eqx.nn.Linear
    out: eqx.nn.Linear
    keys: eqx.nn.StateIndex
    values: eqx.nn.StateIndex
    heads: int = eqx.field(static=True)

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.qkv = eqx.nn.Linear(DIM, 3 * DIM, key=k1)
        self.out = eqx.nn.Linear(DIM, DIM, key=k2)
        self.keys = eqx.nn.StateIndex(jnp.zeros((MAX_LEN, DIM)))
        self.values = eqx.nn.StateIndex(jnp.zeros((MAX_LEN, DIM)))
        self.heads = HEADS

    def __call__(self, x: jax.Array, pos: jax.Array, state: eqx.nn.State) -> tuple:
        q, k, v = jnp.split(self.qkv(x), 3)
        keys = state.get(self.keys).at[pos].set(k)
        values = jax.lax.dynamic_update_slice(state.get(self.values), v[None], (pos, 0))
        state = state.set(self.keys, keys)
        state = state.set(self.values, values)
        head = DIM // self.heads
        scores = jnp.einsum(
            "hd,thd->ht", q.reshape(self.heads, head), keys.reshape(MAX_LEN, self.heads, head)
        ) / math.sqrt(head)
        scores = jnp.where(jnp.arange(MAX_LEN) <= pos, scores, -jnp.inf)
        weights = jax.nn.softmax(scores, axis=-1)
        mixed = jnp.einsum("ht,thd->hd", weights, values.reshape(MAX_LEN, self.heads, head))
        return self.out(mixed.reshape(DIM)), state


class Block(eqx.Module):
    norm1: eqx.nn.LayerNorm
    attention: Attention
    norm2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.norm1 = eqx.nn.LayerNorm(DIM)
        self.attention = Attention(k1)
        self.norm2 = eqx.nn.LayerNorm(DIM)
        self.mlp = eqx.nn.MLP(DIM, DIM, 2 * DIM, 1, activation=jax.nn.gelu, key=k2)

    def __call__(self, x: jax.Array, pos: jax.Array, state: eqx.nn.State) -> tuple:
        h, state = self.attention(self.norm1(x), pos, state)
        x = x + h
        return x + self.mlp(self.norm2(x)), state


class Decoder(eqx.Module):
    embed: eqx.nn.Embedding
    blocks: list[Block]
    norm: eqx.nn.LayerNorm
    unembed: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        keys = jax.random.split(key, DEPTH + 2)
        self.embed = eqx.nn.Embedding(VOCAB, DIM, key=keys[0])
        self.blocks = [Block(k) for k in keys[2:]]
        self.norm = eqx.nn.LayerNorm(DIM)
        self.unembed = eqx.nn.Linear(DIM, VOCAB, key=keys[1])

    def __call__(self, token: jax.Array, pos: jax.Array, state: eqx.nn.State) -> tuple:
        x = self.embed(token)
        for block in self.blocks:
            x, state = block(x, pos, state)
        return self.unembed(self.norm(x)), state


def build() -> tuple[Decoder, eqx.nn.State]:
    return eqx.nn.make_with_state(Decoder)(jax.random.key(0))


# ------------------------------------------------------------------- statetree, in place
@jax.jit
def generate(model: Decoder, state: eqx.nn.State, first: jax.Array) -> jax.Array:
    """Greedy generation; the cache is written in place, the loop carries tokens only."""
    model = eqxst.freeze(model)  # read the weights once, not on every pass of the loop

    def body(pos: jax.Array, tokens: jax.Array) -> jax.Array:
        logits, _ = model(tokens[pos], pos, state)
        return tokens.at[pos + 1].set(jnp.argmax(logits).astype(tokens.dtype))

    tokens = jnp.zeros(MAX_LEN, jnp.int32).at[0].set(first)
    return jax.lax.fori_loop(0, MAX_LEN - 1, body, tokens)


@jax.jit
def decode_step(model: Decoder, state: eqx.nn.State, token: jax.Array, pos: jax.Array) -> Any:
    return model(token, pos, state)[0]  # the cache is written in place


def statetree_model(packed: bool = True) -> tuple[Any, Any]:  # st.Packed when packed
    """The converted decoder and its cache. Packed, each is a few buffers (one jax.Ref
    per dtype) however many arrays it holds: jax.jit dispatches it fastest."""
    model, state = eqxst.mutable(build())
    if packed:
        return st.mutable(model, packed=True), st.mutable(state, packed=True)
    return model, state


def statetree_step(packed: bool = True) -> tuple[Callable[[], jax.Array], Callable[[], Any]]:
    """One decode step (one token through the model, the cache written in place)."""
    model, state = statetree_model(packed)
    pos = [0]

    def call() -> jax.Array:
        logits = decode_step(model, state, jnp.int32(pos[0] % VOCAB), jnp.int32(pos[0] % MAX_LEN))
        pos[0] += 1
        return logits

    return call, lambda: eqxst.freeze(state)


# ------------------------------------------------------------------- pure Equinox
def threaded_generate(model: Decoder, state: eqx.nn.State, first: jax.Array) -> Any:
    """Greedy generation Equinox's way: the state is threaded through the loop."""

    def body(pos: jax.Array, carry: tuple) -> tuple:
        tokens, state = carry
        logits, state = model(tokens[pos], pos, state)
        return tokens.at[pos + 1].set(jnp.argmax(logits).astype(tokens.dtype)), state

    tokens = jnp.zeros(MAX_LEN, jnp.int32).at[0].set(first)
    return jax.lax.fori_loop(0, MAX_LEN - 1, body, (tokens, state))


equinox_generate = eqx.filter_jit(threaded_generate)


@eqx.filter_jit
def equinox_decode_step(model: Decoder, state: eqx.nn.State, token: jax.Array, pos: Any) -> Any:
    return model(token, pos, state)


def equinox_step() -> tuple[Callable[[], jax.Array], Callable[[], Any]]:
    model, state = build()
    carry = [state]
    pos = [0]

    def call() -> jax.Array:
        token, at = jnp.int32(pos[0] % VOCAB), jnp.int32(pos[0] % MAX_LEN)
        logits, carry[0] = equinox_decode_step(model, carry[0], token, at)
        pos[0] += 1
        return logits

    return call, lambda: carry[0]


def main(first: int = 3) -> list[int]:
    model, state = statetree_model()
    tokens = [int(t) for t in generate(model, state, jnp.int32(first))]
    print("generated:", tokens)
    return tokens


if __name__ == "__main__":
    main()
