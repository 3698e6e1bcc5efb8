"""Equinox's score-based diffusion example (an MLP-Mixer score model trained with the
denoising score-matching loss), trained with statetree.

The model, the loss and the optimizer (``optax.adabelief``) are written Equinox's way:
``eqx.nn.Conv2d`` patches, ``eqx.nn.LayerNorm``, ``eqx.nn.MLP`` mixers under
``jax.vmap``, a plain float field (``t1``). statetree converts the model once; the step is
a plain ``jax.jit`` returning the loss, the weights and adabelief's moments written in
place. Shapes are small (8x8 images, two blocks) so it trains in seconds on a CPU.

    python examples/equinox/score_mixer.py
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from statetree.adapters import equinox as eqxst

import statetree as st

BATCH, SIZE, PATCH, HIDDEN, MIX, BLOCKS, T1, STEPS = 8, 8, 4, 16, 32, 2, 10.0, 20


class MixerBlock(eqx.Module):
    patch_mixer: eqx.nn.MLP
    hidden_mixer: eqx.nn.MLP
    norm1: eqx.nn.LayerNorm
    norm2: eqx.nn.LayerNorm

    def __init__(self, patches: int, hidden: int, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.patch_mixer = eqx.nn.MLP(patches, patches, MIX, depth=1, key=k1)
        self.hidden_mixer = eqx.nn.MLP(hidden, hidden, MIX, depth=1, key=k2)
        self.norm1 = eqx.nn.LayerNorm((hidden, patches))
        self.norm2 = eqx.nn.LayerNorm((patches, hidden))

    def __call__(self, y: jax.Array) -> jax.Array:  # y: (hidden, patches)
        y = y + jax.vmap(self.patch_mixer)(self.norm1(y))
        y = y.T
        y = y + jax.vmap(self.hidden_mixer)(self.norm2(y))
        return y.T


class Mixer2d(eqx.Module):
    conv_in: eqx.nn.Conv2d
    conv_out: eqx.nn.ConvTranspose2d
    blocks: list[MixerBlock]
    norm: eqx.nn.LayerNorm
    t1: float

    def __init__(self, key: jax.Array) -> None:
        patches = (SIZE // PATCH) ** 2
        kin, kout, *kblocks = jax.random.split(key, 2 + BLOCKS)
        self.conv_in = eqx.nn.Conv2d(2, HIDDEN, PATCH, stride=PATCH, key=kin)
        self.conv_out = eqx.nn.ConvTranspose2d(HIDDEN, 1, PATCH, stride=PATCH, key=kout)
        self.blocks = [MixerBlock(patches, HIDDEN, k) for k in kblocks]
        self.norm = eqx.nn.LayerNorm((HIDDEN, patches))
        self.t1 = T1

    def __call__(self, t: jax.Array, y: jax.Array) -> jax.Array:
        time = jnp.broadcast_to(t / self.t1, (1, *y.shape[1:]))  # time as one more channel
        h = self.conv_in(jnp.concatenate([y, time]))
        channels, ph, pw = h.shape
        h = h.reshape(channels, ph * pw)
        for block in self.blocks:
            h = block(h)
        return self.conv_out(self.norm(h).reshape(channels, ph, pw))


def int_beta(t: jax.Array) -> jax.Array:
    return t


def weight(t: jax.Array) -> jax.Array:
    return 1 - jnp.exp(-int_beta(t))


def single_loss(model: Mixer2d, data: jax.Array, t: jax.Array, key: jax.Array) -> jax.Array:
    mean = data * jnp.exp(-0.5 * int_beta(t))
    std = jnp.sqrt(jnp.maximum(1 - jnp.exp(-int_beta(t)), 1e-5))
    noise = jax.random.normal(key, data.shape)
    pred = model(t, mean + std * noise)
    return weight(t) * jnp.mean((pred + noise / std) ** 2)


def batch_loss(model: Mixer2d, data: jax.Array, key: jax.Array) -> jax.Array:
    tkey, lkey = jax.random.split(key)
    # Low-discrepancy times: one in each of BATCH equal slices of [0, T1].
    t = jax.random.uniform(tkey, (BATCH,), maxval=T1 / BATCH) + T1 / BATCH * jnp.arange(BATCH)
    losses = jax.vmap(lambda d, s, k: single_loss(model, d, s, k))(
        data, t, jax.random.split(lkey, BATCH)
    )
    return jnp.mean(losses)


def data() -> jax.Array:
    grid = jnp.linspace(-1, 1, SIZE)
    centres = jax.random.uniform(jax.random.key(1), (BATCH, 2), minval=-0.5, maxval=0.5)
    blobs = (grid[None, :, None] - centres[:, 0, None, None]) ** 2 + (
        grid[None, None, :] - centres[:, 1, None, None]
    ) ** 2
    return jnp.exp(-4 * blobs)[:, None] * 2 - 1  # (BATCH, 1, SIZE, SIZE)


TX = optax.adabelief(3e-3)


# ------------------------------------------------------------------- statetree, in place
@jax.jit
def train_step(model: Mixer2d, optimizer: st.Optimizer, batch: jax.Array, key: jax.Array) -> Any:
    loss, grads = eqx.filter_value_and_grad(batch_loss)(eqxst.freeze(model), batch, key)
    optimizer.update(model, grads)
    return loss


def statetree_step() -> tuple[Callable[[], jax.Array], Callable[[], Any]]:
    model = eqxst.mutable(Mixer2d(jax.random.key(0)))
    optimizer = st.Optimizer(model, TX)
    batch, keys = data(), iter(range(1 << 30))

    def call() -> jax.Array:
        key = jax.random.fold_in(jax.random.key(2), next(keys))
        return train_step(model, optimizer, batch, key)

    return call, lambda: eqxst.freeze(model)


# ------------------------------------------------------------------- pure Equinox
@eqx.filter_jit
def equinox_train_step(model: Mixer2d, opt_state: Any, batch: jax.Array, key: jax.Array) -> Any:
    loss, grads = eqx.filter_value_and_grad(batch_loss)(model, batch, key)
    updates, opt_state = TX.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state, loss


def equinox_step() -> tuple[Callable[[], jax.Array], Callable[[], Any]]:
    model = Mixer2d(jax.random.key(0))
    carry = [model, TX.init(eqx.filter(model, eqx.is_inexact_array))]
    batch, keys = data(), iter(range(1 << 30))

    def call() -> jax.Array:
        key = jax.random.fold_in(jax.random.key(2), next(keys))
        carry[0], carry[1], loss = equinox_train_step(carry[0], carry[1], batch, key)
        return loss

    return call, lambda: carry[0]


def main(steps: int = STEPS) -> list[float]:
    step, _ = statetree_step()
    losses = [float(step()) for _ in range(steps)]
    print(f"score-matching loss {losses[0]:.4f} -> {losses[-1]:.4f} in {steps} steps")
    return losses


if __name__ == "__main__":
    main()
