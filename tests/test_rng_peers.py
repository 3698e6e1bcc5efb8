"""The comparison table of docs/recipes/random-keys.md, its Flax ``nnx.Rngs`` and JAX
``stateful_rng`` columns: every entry that can run here is run, against hand threading
(and against st.Rng where the table sets them side by side). Checked on JAX 0.10.2 with
Flax 0.12.8 and on JAX 0.12.1 with Flax 0.12.12."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import statetree as st

nnx = pytest.importorskip("flax.nnx", reason="the nnx.Rngs column needs flax")
flax_errors = pytest.importorskip("flax.errors", reason="the nnx.Rngs column needs flax")

try:
    from jax.experimental.random import stateful_rng
except ImportError:  # an experimental API: a JAX release may drop or move it
    stateful_rng = None

needs_stateful_rng = pytest.mark.skipif(
    stateful_rng is None, reason="this JAX has no jax.experimental.random.stateful_rng"
)

data = jax.random.key_data


def same(a: jax.Array, b: jax.Array) -> bool:
    return bool(np.array_equal(np.asarray(data(a)), np.asarray(data(b))))


def folded(seed: int, count: int) -> jax.Array:
    """The key a fold-in-of-a-counter generator gives for draw number ``count``."""
    return jax.random.fold_in(jax.random.key(seed), count)


def split_threaded(seed: int, n: int) -> list[jax.Array]:
    key, subs = jax.random.key(seed), []
    for _ in range(n):
        key, sub = jax.random.split(key)
        subs.append(sub)
    return subs


def primitives(fn: Any, *args: object) -> set[str]:
    return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).eqns}


# ------------------------------------------------------------------ Flax nnx.Rngs
def test_nnx_named_streams_fold_in_a_counter_not_split_threading() -> None:
    rngs = nnx.Rngs(params=0, dropout=1)
    got = [rngs.dropout(), rngs.dropout()]
    assert same(got[0], folded(1, 0)) and same(got[1], folded(1, 1))
    assert int(rngs.dropout.count[...]) == 2 and int(rngs.params.count[...]) == 0
    ours = st.Rngs(params=0, dropout=1)
    theirs = [ours.dropout(), ours.dropout()]
    assert all(map(same, theirs, split_threaded(1, 2)))
    assert not any(map(same, got, theirs))  # the table's "same keys as split threading"


def test_nnx_draws_advance_under_nnx_jit_but_repeat_under_plain_jit() -> None:
    class Model(nnx.Module):  # "keys live in the model"
        def __init__(self, rngs: Any) -> None:
            self.drop = nnx.Dropout(0.5, rngs=rngs)

    model = Model(nnx.Rngs(dropout=1))
    apply = nnx.jit(lambda m, x: m.drop(x))
    assert not np.array_equal(apply(model, jnp.ones(16)), apply(model, jnp.ones(16)))

    rngs = nnx.Rngs(dropout=1)
    plain = jax.jit(lambda r: r.dropout())
    first, second = plain(rngs), plain(rngs)
    assert same(first, folded(1, 0)) and same(second, first)  # the count's write is lost
    assert int(rngs.dropout.count[...]) == 0

    with nnx.var_defaults(ref=True):  # Ref-backed Variables keep the write
        refs = nnx.Rngs(dropout=1)
    assert same(plain(refs), folded(1, 0)) and same(plain(refs), folded(1, 1))


def test_nnx_rngs_scan_as_an_nnx_scan_carry_not_closed_over() -> None:
    rngs = nnx.Rngs(dropout=1)

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def body(rngs: Any, _: jax.Array) -> tuple[Any, jax.Array]:
        return rngs, rngs.dropout()

    _, keys = body(rngs, jnp.arange(3))
    assert all(same(keys[i], folded(1, i)) for i in range(3))
    assert int(rngs.dropout.count[...]) == 3
    with pytest.raises(flax_errors.TraceContextError):
        jax.lax.scan(lambda c, _: (c, rngs.dropout()), None, length=2)
    assert int(rngs.dropout.count[...]) == 3


def test_nnx_rngs_remat_through_nnx_remat_advances_once() -> None:
    rngs = nnx.Rngs(dropout=1)

    @nnx.remat
    def loss(w: jax.Array, rngs: Any) -> jax.Array:
        return jnp.sum(w * jax.random.normal(rngs.dropout(), w.shape))

    grad = nnx.grad(loss)(jnp.ones(2), rngs)
    np.testing.assert_allclose(grad, jax.random.normal(folded(1, 0), (2,)))
    assert int(rngs.dropout.count[...]) == 1
    closed = jax.checkpoint(lambda w: jnp.sum(w * jax.random.normal(rngs.dropout(), w.shape)))
    with pytest.raises(flax_errors.TraceContextError):
        jax.grad(closed)(jnp.ones(2))


def test_nnx_rngs_per_example_through_split_and_nnx_vmap() -> None:
    batch = nnx.Rngs(dropout=1).split(3)
    keys = nnx.vmap(lambda r: data(r.dropout()), in_axes=0)(batch)
    assert len({tuple(k) for k in np.asarray(keys).tolist()}) == 3
    assert np.asarray(batch.dropout.count[...]).tolist() == [1, 1, 1]
    jax.vmap(lambda r: r.dropout())(batch)  # plain jax.vmap draws, but loses the counts
    assert np.asarray(batch.dropout.count[...]).tolist() == [1, 1, 1]
    one = nnx.Rngs(dropout=1)
    with pytest.raises(flax_errors.TraceContextError):
        jax.vmap(lambda x: x + jax.random.normal(one.dropout()))(jnp.ones(3))


def test_nnx_rngs_key_and_count_state_resume_the_stream() -> None:
    rngs = nnx.Rngs(dropout=1)
    rngs.dropout()
    saved = nnx.to_pure_dict(nnx.state(rngs))
    assert sorted(saved["dropout"]) == ["count", "key"]
    expected = [rngs.dropout(), rngs.dropout()]
    fresh = nnx.Rngs(dropout=99)
    state = nnx.state(fresh)
    nnx.replace_by_pure_dict(state, saved)
    nnx.update(fresh, state)
    assert all(same(fresh.dropout(), key) for key in expected)


def test_compiled_draws_fold_in_for_nnx_and_split_for_st_rng() -> None:
    graphdef, state = nnx.split(nnx.Rngs(dropout=1))
    theirs = primitives(lambda s: nnx.merge(graphdef, s).dropout(), state)
    assert "random_fold_in" in theirs and "random_split" not in theirs
    ours = primitives(lambda r: r(), st.Rng(1, mutable=True))
    assert "random_split" in ours and "random_fold_in" not in ours


# ------------------------------------------------------------------ JAX stateful_rng
@needs_stateful_rng
def test_stateful_rng_folds_in_a_counter_eagerly_and_under_jit() -> None:
    assert stateful_rng is not None
    generator = stateful_rng(1)
    draw = jax.jit(lambda: generator.key())
    got = [generator.key(), draw(), draw()]
    assert all(same(key, folded(1, i)) for i, key in enumerate(got))
    assert not same(got[0], split_threaded(1, 1)[0])
    assert "random_fold_in" in primitives(lambda: generator.key())
    key, counter = jax.tree.leaves(generator)  # its state: a key and a counter Ref
    assert same(key, jax.random.key(1)) and isinstance(counter, jax.Ref)


@needs_stateful_rng
def test_stateful_rng_scans_closed_over_but_not_as_a_carry() -> None:
    assert stateful_rng is not None
    generator = stateful_rng(1)
    keys = jax.lax.scan(lambda c, _: (c, generator.key()), None, length=3)[1]
    assert all(same(keys[i], folded(1, i)) for i in range(3))
    with pytest.raises(ValueError, match="mutable array reference"):
        jax.lax.scan(lambda g, _: (g, g.key()), generator, length=2)


@needs_stateful_rng
def test_stateful_rng_is_refused_under_remat_as_the_table_says() -> None:
    assert stateful_rng is not None
    generator = stateful_rng(0)
    with pytest.raises(Exception):  # noqa: B017 (JAX's own refusal; its type varies)
        jax.grad(jax.checkpoint(lambda w: w * generator.normal()))(1.0)


@needs_stateful_rng
def test_stateful_rng_split_maps_under_plain_vmap() -> None:
    assert stateful_rng is not None
    batch = stateful_rng(1).split(3)
    keys = jax.vmap(lambda g: data(g.key()))(batch)
    assert len({tuple(k) for k in np.asarray(keys).tolist()}) == 3
