"""W7: random keys as state: st.Rng draws inside a jitted step against threading keys by
hand, and the dispatch cost of the Rng's added Ref.

Two cases:

- "draws/step = N" (N = 1, 10, 100): a jitted in-place step that draws N keys, each
  feeding a small ``jax.random.normal`` added into an accumulator Variable written in
  place (as a training step writes its model). Implementations:

  - "hand threading" (the baseline): ``key = step(acc, key)``, the step splitting
    ``key, sub = jax.random.split(key)`` before each draw and returning the last key;
  - "st.Rng": ``step(acc, rng)``, the step calling ``rng()`` (a split, the state
    written in place): one more Ref argument, no key result;
  - "st.Rng (packed, one buffer)": the Rng and the accumulator in one
    ``st.mutable({...}, packed=True)`` tree (one buffer);
  - "jax stateful_rng": JAX's experimental Ref-backed generator (``rng.key()``: a
    fold-in of a counter Ref);
  - "hand threading, functional (no Ref)": the same draws with the accumulator
    returned, not written: no Ref argument at all, so JAX's fast dispatch path. It
    shows what any Ref-taking step pays for JAX's Ref dispatch, keys or not.

  Values are microseconds per draw (the step's time over N). Every implementation draws
  the same number of keys and does the same work with them.

- "dispatch, 10 Variables": the Ref an Rng adds to a step's arguments. A jitted step
  that adds noise drawn from one key to one of 10 small Variables and increments the
  others, in the default form and packed, with the key threaded by hand (an argument and
  a result) or drawn from an Rng in the tree. Values are microseconds per step.

Inside the compiled step, a draw from an Rng is the very operations of a hand split
(tests/test_rng.py compares the compiled programs); what differs is the call: an Rng is
one more Ref argument, the hand-threaded key an argument and a result.

Timing: the harness's one timer (:func:`benchmarks._harness.time_many_us`).
"""

import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

import statetree as st
from benchmarks._harness import row, time_many_us

WORKLOAD = "W7 random keys"
BASELINE = "hand threading"
SHAPE = (8,)


def _draws(n: int, quick: bool) -> list[dict[str, Any]]:
    case = f"draws/step = {n}"

    # Every step writes its noise into an in-place accumulator (a mutable Variable), as a
    # training step writes its model: all the implementations below take a Ref, so they
    # share JAX's dispatch path for Ref arguments and differ only in their keys.
    @jax.jit
    def threaded(acc: st.Variable, key: jax.Array) -> jax.Array:
        for _ in range(n):
            key, sub = jax.random.split(key)
            acc[...] += jax.random.normal(sub, SHAPE)
        return key

    @jax.jit
    def functional(key: jax.Array, acc: jax.Array) -> tuple[jax.Array, jax.Array]:
        for _ in range(n):
            key, sub = jax.random.split(key)
            acc = acc + jax.random.normal(sub, SHAPE)
        return key, acc

    def drawing(draw: Callable[[Any], jax.Array]) -> Callable[[st.Variable, Any], None]:
        @jax.jit
        def step(acc: st.Variable, source: Any) -> None:
            for _ in range(n):
                acc[...] += jax.random.normal(draw(source), SHAPE)

        return step

    keys = {"hand": jax.random.key(0), "functional": jax.random.key(0)}
    accs = {name: st.Variable(jnp.zeros(SHAPE), mutable=True) for name in ("hand", "rng", "g")}
    plain_acc = {"acc": jnp.zeros(SHAPE)}

    def hand() -> jax.Array:
        keys["hand"] = threaded(accs["hand"], keys["hand"])
        return keys["hand"]

    def pure() -> jax.Array:
        keys["functional"], plain_acc["acc"] = functional(keys["functional"], plain_acc["acc"])
        return plain_acc["acc"]

    def in_place(step: Callable[[Any, Any], None], acc: Any, source: Any) -> Callable[[], Any]:
        def call() -> Any:
            step(acc, source)
            return jax.tree.leaves(acc)[0][...]  # a whole read of what it wrote

        return call

    @jax.jit
    def packed_step(tree: Any, unused: None) -> None:  # the Rng and accumulator: one buffer
        for _ in range(n):
            tree["acc"][...] += jax.random.normal(tree["rng"](), SHAPE)

    rng = st.Rng(0, mutable=True)
    packed = st.mutable({"rng": st.Rng(0), "acc": jnp.zeros(SHAPE)}, packed=True)
    fns: dict[str, Callable[[], Any]] = {
        BASELINE: hand,
        "st.Rng": in_place(drawing(lambda r: r()), accs["rng"], rng),
        "st.Rng (packed, one buffer)": in_place(packed_step, packed, None),
    }
    try:
        from jax.experimental.random import stateful_rng

        fns["jax stateful_rng"] = in_place(drawing(lambda g: g.key()), accs["g"], stateful_rng(0))
    except ImportError:  # pragma: no cover - an experimental module that may move
        pass
    fns["hand threading, functional (no Ref)"] = pure
    return [
        row(WORKLOAD, case, impl, us / n, "us/draw", baseline=impl == BASELINE)
        for impl, us in time_many_us(fns, quick=quick).items()
    ]


def _dispatch(quick: bool, count: int = 10) -> list[dict[str, Any]]:
    case = f"dispatch, {count} Variables"

    def model() -> dict[str, Any]:
        return {f"w{i}": jnp.zeros(SHAPE) for i in range(count)}

    def bump(tree: dict[str, Any], key: jax.Array) -> None:
        for i in range(count):
            w = tree[f"w{i}"]
            w[...] = w[...] + (jax.random.normal(key, SHAPE) if i == 0 else 1.0)

    @jax.jit
    def threaded(tree: dict[str, Any], key: jax.Array) -> jax.Array:
        key, sub = jax.random.split(key)
        bump(tree, sub)
        return key

    @jax.jit
    def in_tree(tree: dict[str, Any]) -> None:
        bump(tree, tree["rng"]())

    plain, plain_packed = st.mutable(model()), st.mutable(model(), packed=True)
    with_rng = st.mutable({**model(), "rng": st.Rng(0)})
    with_rng_packed = st.mutable({**model(), "rng": st.Rng(0)}, packed=True)
    keys = {"plain": jax.random.key(0), "packed": jax.random.key(0)}

    def by_hand(tree: Any, name: str) -> Callable[[], Any]:
        def call() -> Any:
            keys[name] = threaded(tree, keys[name])
            return tree["w1"][...]

        return call

    def drawn(tree: Any) -> Callable[[], Any]:
        def call() -> Any:
            in_tree(tree)
            return tree["w1"][...]

        return call

    fns = {
        "default, key threaded": by_hand(plain, "plain"),
        "default, st.Rng in the tree": drawn(with_rng),
        "packed, key threaded": by_hand(plain_packed, "packed"),
        "packed, st.Rng in the tree": drawn(with_rng_packed),
    }
    return [
        row(WORKLOAD, case, impl, us, "us", baseline=impl == "default, key threaded")
        for impl, us in time_many_us(fns, quick=quick).items()
    ]


def run(quick: bool, *, draws: Sequence[int] = (1, 10, 100)) -> list[dict]:
    """Rows for every case (see the module docstring)."""
    rows: list[dict] = []
    for n in draws:
        rows.extend(_draws(n, quick))
    rows.extend(_dispatch(quick))
    return rows


if __name__ == "__main__":
    from benchmarks._harness import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
