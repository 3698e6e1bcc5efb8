"""statetree demo: a small model trained in place under a plain ``jax.jit``.

Run with ``make demo``. The model is an ordinary dict: ``st.mutable`` turns its arrays
into Variables backed by ``jax.Ref``s, and the jitted step updates parameters, running
statistics and optimizer state in place. It returns only the loss.
"""

import time

import jax
import jax.numpy as jnp
import optax

import statetree as st


def init(key: jax.Array) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "hidden": {
            "kernel": st.Param(jax.random.normal(k1, (2, 32)) * 0.5),
            "bias": st.Param(jnp.zeros(32)),
        },
        "norm": {"mean": st.BatchStat(jnp.zeros(32)), "var": st.BatchStat(jnp.ones(32))},
        "out": {
            "kernel": st.Param(jax.random.normal(k2, (32, 1)) * 0.2),
            "bias": st.Param(jnp.zeros(1)),
        },
    }


def forward(model: dict, x: jax.Array) -> jax.Array:
    h = x @ model["hidden"]["kernel"] + model["hidden"]["bias"]
    mean, var = h.mean(0), h.var(0)
    # Running statistics, written inside the loss: BatchStat is not differentiable.
    model["norm"]["mean"][...] = 0.9 * model["norm"]["mean"] + 0.1 * mean
    model["norm"]["var"][...] = 0.9 * model["norm"]["var"] + 0.1 * var
    h = jax.nn.gelu((h - mean) / jnp.sqrt(var + 1e-5))  # the guide's Linear -> BatchNorm -> gelu
    return h @ model["out"]["kernel"] + model["out"]["bias"]


def step(model: dict, optimizer: st.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    """One training step, in place: the loss is all it returns."""
    graphdef, params, rest = st.split(model, st.Param, ...)

    def loss_fn(params: st.State) -> jax.Array:
        return jnp.mean((forward(st.merge(graphdef, params, rest), x) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(st.freeze(params))  # grad needs arrays
    optimizer.update(model, grads)  # adam, in place: nothing returned
    return loss


train_step = jax.jit(step)


@jax.jit
def train_step_one(state: st.Packed, x: jax.Array, y: jax.Array) -> jax.Array:
    """The same step on a model and optimizer packed together: one buffer."""
    return step(state["model"], state["opt"], x, y)


def data() -> tuple[jax.Array, jax.Array]:
    x = jax.random.uniform(jax.random.key(1), (64, 2), minval=-1, maxval=1)
    return x, jnp.sin(3 * x[:, :1]) * x[:, 1:]


def main() -> None:
    print("== A model trained in place under plain jax.jit ==")
    model = st.mutable(init(jax.random.key(0)))
    optimizer = st.Optimizer(model, optax.adam(0.02), wrt=st.Param)
    x, y = data()
    for i in range(301):
        loss = train_step(model, optimizer, x, y)
        if i % 75 == 0:
            print(f"step {int(optimizer.step[...]):3d}  loss {float(loss):.4f}")
    print("running mean moved in place:", model["norm"]["mean"][:3])

    print("\n== Packed: a few buffers instead of one Ref per Variable ==")
    for how in ("plain", "packed", "one tree"):
        m = st.mutable(init(jax.random.key(0)), packed=how == "packed")
        opt = st.Optimizer(m, optax.adam(0.02), packed=how == "packed")
        if how == "one tree":
            state = st.mutable({"model": m, "opt": opt}, packed=True)
            args, run = (state,), train_step_one
        else:
            args, run = (m, opt), train_step
        loss = jax.block_until_ready(run(*args, x, y))  # compile
        start = time.perf_counter()
        for _ in range(200):
            loss = run(*args, x, y)
        jax.block_until_ready(loss)
        per_step = (time.perf_counter() - start) / 200 * 1e6
        refs = len(jax.tree_util.tree_leaves(args))
        noun = "buffer " if refs == 1 else "buffers"
        print(f"{how:9}  {refs:2d} {noun} passed to jit  {per_step:6.0f} us/step")

    print("\n== split / merge: shared Variables are stored once, restored as one ==")
    tied = {"encoder": model["hidden"], "decoder": model["hidden"], "head": model["out"]}
    graphdef, state = st.split(tied)
    print(state)
    restored = st.merge(graphdef, state)
    print(
        "encoder and decoder share storage again:",
        restored["encoder"]["kernel"] is restored["decoder"]["kernel"],
    )

    print("\n== Aliasing is caught before JAX refuses it ==")
    try:
        st.check_aliases(tied)
    except st.AliasError as e:
        print("\n".join(str(e).splitlines()[:3]))


if __name__ == "__main__":
    main()
