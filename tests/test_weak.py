"""Weak types (statetree._weak).

A weakly typed value (a Python scalar, jnp.asarray(1.0)) promotes like a Python number:
times a bfloat16 array it stays bfloat16. jax.new_ref keeps the weak type up to JAX
0.11.1 and drops it from 0.11.2; a Variable remembers it, so every read promotes as
the value it was given, on every JAX.
"""

import copy
import pathlib
import pickle

import jax
import jax.numpy as jnp
import pytest

import statetree as st

BF16 = jnp.ones(2, jnp.bfloat16)


def _promotes_weakly(x: object) -> bool:
    return (x * BF16).dtype == jnp.bfloat16 and jnp.multiply(x, BF16).dtype == jnp.bfloat16


@pytest.mark.parametrize("mutable", [True, False])
def test_weakly_typed_variable_promotes_as_the_value_it_was_given(mutable: bool) -> None:
    for given in (1.5, jnp.asarray(1.5)):
        v = st.Variable(given, mutable=mutable)
        assert v.weak_type and v.dtype == jnp.float32
        assert _promotes_weakly(v) and _promotes_weakly(v[...]) and _promotes_weakly(v.value)
        assert v[...].weak_type and v.value.weak_type
        assert jax.jit(lambda v: v * BF16)(v).dtype == jnp.bfloat16  # also inside jit
        assert jax.jit(lambda v: (v[...] * BF16).dtype == jnp.bfloat16)(v)
    # A strongly typed value stays strong: float32 times bfloat16 is float32.
    strong = st.Variable(jnp.float32(1.5), mutable=mutable)
    assert not strong.weak_type and not strong[...].weak_type
    assert (strong * BF16).dtype == jnp.float32
    assert jax.jit(lambda v: v * BF16)(strong).dtype == jnp.float32


def test_weak_type_survives_every_conversion() -> None:
    tree = {"s": jnp.asarray(0.5), "n": jnp.float32(0.5), "k": st.Param(2.0)}
    live = st.mutable(tree)
    assert [live[k].weak_type for k in "skn"] == [True, True, False]
    frozen = st.freeze(live)
    assert _promotes_weakly(frozen["s"]) and _promotes_weakly(frozen["k"])
    # The snapshot's arrays are weakly typed themselves (what jax.tree.leaves sees).
    assert [leaf.weak_type for leaf in jax.tree.leaves(frozen)] == [True, False, True]
    unboxed = st.unbox(live)
    assert {k: v.weak_type for k, v in unboxed.items()} == {"k": True, "n": False, "s": True}
    again = st.mutable(frozen)
    assert _promotes_weakly(again["s"]) and (again["n"] * BF16).dtype == jnp.float32
    graphdef, state = st.split(live)
    merged = st.merge(graphdef, state)
    assert _promotes_weakly(merged["s"]) and _promotes_weakly(state[("s",)])
    packed = st.mutable(tree, packed=True)
    assert (packed["s"] * BF16).dtype == jnp.bfloat16  # a view into a float32 buffer
    assert _promotes_weakly(packed["s"][...]) and _promotes_weakly(st.freeze(packed)["s"])
    # A frozen Variable whose array a JAX map made weakly typed is weak once mutable.
    mapped = jax.tree.map(lambda _: jnp.asarray(1.0), {"n": st.Param(jnp.float32(0.0))})
    assert _promotes_weakly(st.mutable(mapped)["n"])


def test_weak_type_survives_writes() -> None:
    live = st.mutable({"s": jnp.asarray(0.5), "k": st.Param(2.0)})
    # Writes keep the Variable's type: a strongly typed float32 written in stays weak.
    live["s"][...] = jnp.float32(3.0)
    st.update(live, st.State({("k",): st.Param(jnp.float32(4.0))}))
    assert _promotes_weakly(live["s"]) and _promotes_weakly(live["k"])

    @jax.jit
    def step(tree: dict) -> None:
        tree["s"][...] = tree["s"] * 2  # weak times weak: weak, as on a plain array

    step(live)
    assert float(live["s"][...]) == 6.0 and _promotes_weakly(live["s"])


def test_weak_type_is_not_metadata_and_pickles() -> None:
    v = st.Variable(1.0, mutable=True, note="x")
    assert dict(v.metadata) == {"note": "x"}
    assert repr(v) == "Variable(float32[], mutable=True, note='x', value=1.)"
    back = pickle.loads(pickle.dumps(st.freeze(v)))
    # The type, not the promotion: JAX 0.10.2's dispatch cache can serve an unpickled
    # weakly typed array the executable of a strong one (pure JAX, no Variable).
    assert back.weak_type and jax.typeof(back.value).weak_type
    assert dict(back.metadata) == {"note": "x"}
    assert copy.deepcopy(v).weak_type


def test_weak_type_survives_a_checkpoint_round_trip(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("orbax.checkpoint")
    live = st.mutable({"s": jnp.asarray(0.5), "w": jnp.ones(2, jnp.bfloat16)})
    st.save(tmp_path / "ckpt", live)
    fresh = st.mutable({"s": jnp.asarray(0.0), "w": jnp.zeros(2, jnp.bfloat16)})
    st.restore(tmp_path / "ckpt", fresh)
    assert float(fresh["s"][...]) == 0.5 and _promotes_weakly(fresh["s"])
    assert (fresh["s"] * fresh["w"]).dtype == jnp.bfloat16
