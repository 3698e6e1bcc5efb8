"""statetree demo: a small model trained in place under a plain ``jax.jit``.

Run with ``make demo``. The model is an ordinary dict of arrays: ``st.mutable`` turns it
into Variables backed by ``jax.Ref``s, and the jitted step updates them in place: it
returns only the loss; no parameters or state are threaded through.
"""

import jax
import jax.numpy as jnp

import statetree as st


def init(key: jax.Array) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "hidden": {"kernel": jax.random.normal(k1, (2, 32)) * 0.5, "bias": jnp.zeros(32)},
        "out": {"kernel": jax.random.normal(k2, (32, 1)) * 0.2, "bias": jnp.zeros(1)},
    }


def forward(model: dict, x: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ model["hidden"]["kernel"] + model["hidden"]["bias"])
    return h @ model["out"]["kernel"] + model["out"]["bias"]


@jax.jit
def train_step(model: dict, steps: st.Variable, x: jax.Array, y: jax.Array) -> jax.Array:
    graphdef, params = st.split(model)

    def loss_fn(params: st.State) -> jax.Array:
        return jnp.mean((forward(st.merge(graphdef, params), x) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(st.freeze(params))  # freeze: grad needs arrays
    for (_, p), (_, g) in zip(params.items(), grads.items(), strict=True):
        p[...] -= 0.1 * g[...]  # in place: the caller's buffers change
    steps[...] += 1
    return loss


def main() -> None:
    print("== A model trained in place ==")
    model = st.mutable(init(jax.random.key(0)))  # every array -> a mutable Variable
    steps = st.Variable(jnp.array(0), mutable=True)
    x = jax.random.uniform(jax.random.key(1), (64, 2), minval=-1, maxval=1)
    y = jnp.sin(3 * x[:, :1]) * x[:, 1:]
    for i in range(201):
        loss = train_step(model, steps, x, y)
        if i % 50 == 0:
            print(f"step {int(steps[...]):3d}  loss {float(loss):.4f}")

    print("\n== split / merge: shared Variables are stored once, restored as one ==")
    tied = {"encoder": model["hidden"], "decoder": model["hidden"], "head": model["out"]}
    graphdef, state = st.split(tied)
    print(f"{len(st.find_aliases(tied))} shared Variables; the State holds {len(state)} values")
    restored = st.merge(graphdef, state)
    print(
        "restored encoder and decoder share storage:",
        restored["encoder"]["kernel"] is restored["decoder"]["kernel"],
    )

    print("\n== Aliasing is caught before JAX refuses it ==")
    try:
        st.check_aliases(tied)
    except st.AliasError as e:
        print(str(e).splitlines()[0])
        print(str(e).splitlines()[1])


if __name__ == "__main__":
    main()
