"""A small DCGAN, Equinox's way, trained with statetree: BatchNorm in both networks, two
optimizers, and the discriminator called twice in one loss (on the fake and on the real
batch).

Equinox's BatchNorm in its default ``"ema"`` mode normalises with running statistics that
the call updates first, and Equinox hands the state of the first call to the second, so
the discriminator's second call depends on the first batch, gradient included. The
converted state is written in place instead of handed on; statetree gives a read after a
write in one trace the value written, with its gradient, so both train alike
(``docs/adapters/equinox.md``, "A stateful layer called twice in one loss").

    python examples/equinox/dcgan.py
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from statetree.adapters import equinox as eqxst

import statetree as st

BATCH, LATENT, WIDTH, STEPS = 8, 4, 8, 20


class Generator(eqx.Module):
    up1: eqx.nn.ConvTranspose2d
    norm: eqx.nn.BatchNorm
    up2: eqx.nn.ConvTranspose2d

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.up1 = eqx.nn.ConvTranspose2d(LATENT, WIDTH, 4, use_bias=False, key=k1)  # 1 -> 4
        self.norm = eqx.nn.BatchNorm(WIDTH, axis_name="batch", mode="ema")
        self.up2 = eqx.nn.ConvTranspose2d(WIDTH, 1, 4, stride=2, padding=1, key=k2)  # 4 -> 8

    def __call__(self, z: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        h, state = self.norm(self.up1(z), state)
        return jnp.tanh(self.up2(jax.nn.relu(h))), state


class Discriminator(eqx.Module):
    down: eqx.nn.Conv2d
    norm: eqx.nn.BatchNorm
    head: eqx.nn.Conv2d

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.down = eqx.nn.Conv2d(1, WIDTH, 4, stride=2, padding=1, key=k1)  # 8 -> 4
        self.norm = eqx.nn.BatchNorm(WIDTH, axis_name="batch", mode="ema")  # the default
        self.head = eqx.nn.Conv2d(WIDTH, 1, 4, key=k2)  # 4 -> 1

    def __call__(self, x: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        h, state = self.norm(self.down(x), state)
        return self.head(jax.nn.leaky_relu(h, 0.2)).reshape(()), state


def batched(model: Any) -> Callable[..., Any]:
    return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))


def bce(logits: jax.Array, label: float) -> jax.Array:
    return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)).mean()


def build() -> tuple[Any, Any, Any, Any]:
    kg, kd = jax.random.split(jax.random.key(0))
    generator, g_state = eqx.nn.make_with_state(Generator)(kg)
    discriminator, d_state = eqx.nn.make_with_state(Discriminator)(kd)
    return generator, discriminator, g_state, d_state


def real_batch() -> jax.Array:
    grid = jnp.linspace(-1, 1, WIDTH)
    phase = jax.random.uniform(jax.random.key(1), (BATCH, 1, 1, 1), maxval=3.0)
    return jnp.sin(3 * grid[None, None, :, None] + grid[None, None, None, :] + phase)


G_TX = optax.adam(2e-3, b1=0.5)
D_TX = optax.adam(2e-3, b1=0.5)


# ------------------------------------------------------------------- statetree, in place
@jax.jit
def train_step(
    gen: Generator,
    disc: Discriminator,
    g_state: Any,
    d_state: Any,
    g_opt: st.Optimizer,
    d_opt: st.Optimizer,
    real: jax.Array,
    key: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """One step of each network; returns the two losses. Weights, optimizer states and
    batch statistics are written in place."""
    noise = jax.random.normal(key, (BATCH, LATENT, 1, 1))

    def d_loss(d: Discriminator) -> jax.Array:
        fake, _ = eqxst.in_place(batched(gen))(noise, g_state)
        on_fake, _ = eqxst.in_place(batched(d))(fake, d_state)
        # The second call reads the statistics the first one wrote, with their gradient.
        on_real, _ = eqxst.in_place(batched(d))(real, d_state)
        return (bce(on_fake, 0.0) + bce(on_real, 1.0)) / 2

    d_value, d_grads = eqx.filter_value_and_grad(d_loss)(eqxst.freeze(disc))
    d_opt.update(disc, d_grads)

    def g_loss(g: Generator) -> jax.Array:
        fake, _ = eqxst.in_place(batched(g))(noise, g_state)
        on_fake, _ = eqxst.in_place(batched(disc))(fake, d_state)
        return bce(on_fake, 1.0)

    g_value, g_grads = eqx.filter_value_and_grad(g_loss)(eqxst.freeze(gen))
    g_opt.update(gen, g_grads)
    return d_value, g_value


def statetree_step() -> tuple[Callable[[], Any], Callable[[], Any]]:
    """One in-place step as a zero-argument call returning the two losses, and a function
    giving the trained networks and states back as plain Equinox."""
    gen, disc, g_state, d_state = eqxst.mutable(build())
    g_opt, d_opt = st.Optimizer(gen, G_TX), st.Optimizer(disc, D_TX)
    real, keys = real_batch(), iter(range(1 << 30))

    def call() -> Any:
        key = jax.random.fold_in(jax.random.key(2), next(keys))
        return train_step(gen, disc, g_state, d_state, g_opt, d_opt, real, key)

    return call, lambda: eqxst.freeze((gen, disc, g_state, d_state))


# ------------------------------------------------------------------- pure Equinox
@eqx.filter_jit
def equinox_train_step(carry: Any, real: jax.Array, key: jax.Array) -> Any:
    gen, disc, g_state, d_state, g_opt, d_opt = carry
    noise = jax.random.normal(key, (BATCH, LATENT, 1, 1))

    def d_loss(d: Discriminator, g_state: Any, d_state: Any) -> Any:
        fake, g_state = batched(gen)(noise, g_state)
        on_fake, d_state = batched(d)(fake, d_state)
        on_real, d_state = batched(d)(real, d_state)  # the state of the first call
        return (bce(on_fake, 0.0) + bce(on_real, 1.0)) / 2, (g_state, d_state)

    (d_value, (g_state, d_state)), grads = eqx.filter_value_and_grad(d_loss, has_aux=True)(
        disc, g_state, d_state
    )
    updates, d_opt = D_TX.update(grads, d_opt, eqx.filter(disc, eqx.is_array))
    disc = eqx.apply_updates(disc, updates)

    def g_loss(g: Generator, g_state: Any, d_state: Any) -> Any:
        fake, g_state = batched(g)(noise, g_state)
        on_fake, d_state = batched(disc)(fake, d_state)
        return bce(on_fake, 1.0), (g_state, d_state)

    (g_value, (g_state, d_state)), grads = eqx.filter_value_and_grad(g_loss, has_aux=True)(
        gen, g_state, d_state
    )
    updates, g_opt = G_TX.update(grads, g_opt, eqx.filter(gen, eqx.is_array))
    gen = eqx.apply_updates(gen, updates)
    return (gen, disc, g_state, d_state, g_opt, d_opt), (d_value, g_value)


def equinox_step() -> tuple[Callable[[], Any], Callable[[], Any]]:
    gen, disc, g_state, d_state = build()
    opts = (G_TX.init(eqx.filter(gen, eqx.is_array)), D_TX.init(eqx.filter(disc, eqx.is_array)))
    carry = [(gen, disc, g_state, d_state, *opts)]
    real, keys = real_batch(), iter(range(1 << 30))

    def call() -> Any:
        key = jax.random.fold_in(jax.random.key(2), next(keys))
        carry[0], values = equinox_train_step(carry[0], real, key)
        return values

    return call, lambda: carry[0][:4]


def main(steps: int = STEPS) -> list[tuple[float, float]]:
    step, _ = statetree_step()
    losses = [(float(d), float(g)) for d, g in (step() for _ in range(steps))]
    (d0, g0), (d1, g1) = losses[0], losses[-1]
    print(f"discriminator {d0:.4f} -> {d1:.4f}, generator {g0:.4f} -> {g1:.4f}")
    return losses


if __name__ == "__main__":
    main()
