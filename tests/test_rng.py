"""st.Rng and st.Rngs (statetree/_rng.py): random keys as state, checked against
threading keys by hand. The comparison table's other columns (nnx.Rngs, JAX's
stateful_rng) are checked in tests/test_rng_peers.py."""

import collections
import re
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from statetree.adapters import dicts

import statetree as st
from statetree import _rng

data = jax.random.key_data


def by_hand(key: jax.Array, n: int) -> tuple[list[jax.Array], jax.Array]:
    """``n`` keys drawn the hand-threading way, and the key left afterwards."""
    subs = []
    for _ in range(n):
        key, sub = jax.random.split(key)
        subs.append(sub)
    return subs, key


def same(a: jax.Array, b: jax.Array) -> bool:
    return bool(np.array_equal(np.asarray(data(a)), np.asarray(data(b))))


# ------------------------------------------------------------------ draws
@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_draws_are_hand_threading_eagerly_and_under_jit(impl: str) -> None:
    rng = st.Rng(3, impl=impl, mutable=True)
    draw = jax.jit(lambda r: r())
    got = [rng(), draw(rng), rng(), draw(rng)]
    expected, left = by_hand(jax.random.key(3, impl=impl), 4)
    assert all(map(same, got, expected))
    assert same(rng.key, left)
    assert rng.impl == impl and got[0].dtype == jax.random.key(0, impl=impl).dtype


_DRAW_JIT = jax.jit(lambda r: r())
_DRAW_THREE = jax.jit(lambda r: jax.lax.scan(lambda c, _: (c, r()), None, length=3)[1])


@settings(max_examples=25, deadline=None)
@given(seed=hst.integers(0, 2**31 - 1), ways=hst.lists(hst.sampled_from("ejs"), max_size=6))
def test_any_mix_of_eager_jitted_and_scanned_draws_is_hand_threading(
    seed: int, ways: list[str]
) -> None:
    rng = st.Rng(seed, mutable=True)
    got: list[jax.Array] = []
    for way in ways:
        if way == "e":
            got.append(rng())
        elif way == "j":
            got.append(_DRAW_JIT(rng))
        else:
            got.extend(_DRAW_THREE(rng))
    expected, left = by_hand(jax.random.key(seed), len(got))
    assert all(map(same, got, expected)) and same(rng.key, left)


def test_a_jitted_step_compiles_to_the_operations_of_hand_threading() -> None:
    def threaded(acc: st.Variable, key: jax.Array) -> jax.Array:
        for _ in range(3):
            key, sub = jax.random.split(key)
            acc[...] += jax.random.normal(sub, (4,))
        return key

    def drawing(acc: st.Variable, rng: st.Rng) -> None:
        for _ in range(3):
            acc[...] += jax.random.normal(rng(), (4,))

    def operations(fn: Any, *args: object) -> collections.Counter:
        text = jax.jit(fn).lower(*args).compile().as_text() or ""
        return collections.Counter(re.findall(r"= \S+ (\w+)\(", text))

    acc = st.Variable(jnp.zeros(4), mutable=True)
    by_hand_ops = operations(threaded, acc, jax.random.key(0))
    assert by_hand_ops["xor"] > 0  # the threefry rounds are there to compare
    assert operations(drawing, acc, st.Rng(0, mutable=True)) == by_hand_ops


def test_a_typed_key_an_integer_array_and_an_rng_seed_it() -> None:
    key = jax.random.key(5)
    from_key = st.Rng(key, mutable=True)
    assert same(from_key.key, key)
    assert same(st.Rng(jnp.int32(5), mutable=True).key, key)
    copy = st.Rng(from_key, mutable=True)
    copy()
    assert same(from_key.key, key)  # a copy: drawing from it leaves the original
    assert st.Rng.differentiable is False
    assert st.Rng(0, mutable=True).metadata["impl"] == "threefry2x32"


def test_the_key_setter_reseeds_and_refuses_other_shapes_unchanged() -> None:
    rng = st.Rng(0, mutable=True)
    rng.key = jax.random.key(9)
    assert same(rng(), by_hand(jax.random.key(9), 1)[0][0])
    before = np.asarray(rng[...])
    with pytest.raises(ValueError, match=r"shape \(2,\) is not this Rng's batch shape \(\)"):
        rng.key = jax.random.split(jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(rng[...]), before)


def test_bad_seeds_are_refused() -> None:
    with pytest.raises(
        TypeError, match=r"got a uint32\[2\] array\. A raw uint32 key .*wrap_key_data"
    ):
        st.Rng(jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="seed must be an integer seed or a typed key"):
        st.Rng(1.5)
    with pytest.raises(TypeError, match="got a bool"):
        st.Rng(True)
    with pytest.raises(ValueError, match=r"impl is rbg, but impl='threefry2x32'"):
        st.Rng(jax.random.key(0, impl="rbg"), impl="threefry2x32")


def test_repr_shows_impl_and_key_data() -> None:
    rng = st.Rng(0, mutable=True, note="x")
    assert repr(rng) == "Rng(threefry2x32, mutable=True, note='x', key_data=[0, 0])"
    assert "batch_shape=(3,)" in repr(rng.split(3))
    placeholders = jax.tree.map(lambda _: None, {"rng": rng})  # JAX's own tree maps
    assert repr(placeholders) == "{'rng': Rng(None)}"


# ------------------------------------------------------------------ errors teach
def test_drawing_from_a_frozen_rng_says_how_to_get_a_key() -> None:
    frozen = st.freeze(st.Rng(0, mutable=True))
    with pytest.raises(st.FrozenVariableError, match=r"key = rng\.key .* st\.mutable"):
        frozen()
    assert same(frozen.key, jax.random.key(0))  # the way out works


def test_an_rng_where_a_key_is_expected_says_to_call_it() -> None:
    rng = st.Rng(0, mutable=True)
    with pytest.raises(TypeError, match=r"not a key: call it .* jax\.random\.normal\(rng\(\)"):
        jax.random.normal(rng, (2,))
    with pytest.raises(TypeError, match="not a key: call it"):
        jnp.asarray(rng)
    with pytest.raises(TypeError, match=r"not an array\. Call it"):
        np.asarray(rng)
    assert same(rng.key, jax.random.key(0))  # nothing was drawn


def test_a_split_rng_drawn_unsplit_names_the_mapped_form() -> None:
    batch = st.Rng(0, mutable=True).split(4)
    before = np.asarray(batch[...])
    with pytest.raises(ValueError, match=r"batch of keys of shape \(4,\) .* in_axes=0"):
        batch()
    np.testing.assert_array_equal(np.asarray(batch[...]), before)


def test_one_stream_drawn_per_example_names_the_batched_form() -> None:
    rng = st.Rng(0, mutable=True)
    with pytest.raises(ValueError, match=r"does not map.*rng\.split\(batch_size\)"):
        jax.vmap(lambda x: x + jax.random.normal(rng()))(jnp.ones(3))
    assert same(rng.key, jax.random.key(0))


def test_unrecognised_vmap_write_errors_stay_jaxs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # Should a JAX release reword its refusal, the user gets JAX's error, and no draw.
    monkeypatch.setattr(_rng, "_is_unmapped_write", lambda error: False)
    rng = st.Rng(0, mutable=True)
    with pytest.raises(Exception) as caught:  # JAX's own error, whatever its type
        jax.vmap(lambda x: x + jax.random.normal(rng()))(jnp.ones(3))
    assert "rng.split(batch_size)" not in str(caught.value)
    assert same(rng.key, jax.random.key(0))


# ------------------------------------------------------------------ transforms
def test_scan_closed_over_draws_a_key_per_iteration() -> None:
    rng = st.Rng(1, mutable=True)

    @jax.jit
    def draws(rng: st.Rng) -> jax.Array:
        return jax.lax.scan(lambda c, _: (c, data(rng())), None, length=4)[1]

    expected, left = by_hand(jax.random.key(1), 4)
    np.testing.assert_array_equal(draws(rng), np.stack([data(k) for k in expected]))
    assert same(rng.key, left)


def test_a_scanned_model_advances_each_layers_stream() -> None:
    seeds = jax.random.split(jax.random.key(2), 3)
    layers = st.mutable({"rng": jax.vmap(lambda k: st.Rng(k, mutable=False))(seeds)})

    @jax.jit
    def apply(layers: dict, h: jax.Array) -> jax.Array:
        def body(h: jax.Array, layer: dict) -> tuple[jax.Array, jax.Array]:
            key = layer["rng"]()
            return h + jax.random.normal(key), data(key)

        return jax.lax.scan(body, h, layers)[1]

    keys = apply(layers, jnp.zeros(()))
    for i in range(3):
        (sub,), left = by_hand(seeds[i], 1)
        np.testing.assert_array_equal(keys[i], data(sub))
        np.testing.assert_array_equal(layers["rng"][...][i], data(left))


def test_remat_advances_the_state_exactly_once() -> None:
    rng = st.Rng(0, mutable=True)

    @jax.checkpoint
    def f(w: jax.Array, rng: st.Rng) -> jax.Array:
        return jnp.sum(w * jax.random.normal(rng(), w.shape))

    grad = jax.jit(jax.grad(f))(jnp.ones(2), rng)
    (sub,), left = by_hand(jax.random.key(0), 1)
    assert same(rng.key, left)
    np.testing.assert_allclose(grad, jax.random.normal(sub, (2,)))


def test_vmap_over_a_split_rng_gives_each_example_its_own_stream() -> None:
    parent = st.Rng(4, mutable=True)
    batch = parent.split(3)
    seeds = jax.random.split(by_hand(jax.random.key(4), 1)[0][0], 3)
    keys = jax.jit(jax.vmap(lambda r: data(r())))(batch)
    for i in range(3):
        (sub,), left = by_hand(seeds[i], 1)
        np.testing.assert_array_equal(keys[i], data(sub))
        np.testing.assert_array_equal(batch[...][i], data(left))
    assert batch.batch_shape == (3,)


def test_split_inside_jit_feeds_a_vmap() -> None:
    rng = st.Rng(0, mutable=True)

    @jax.jit
    def step(rng: st.Rng, x: jax.Array) -> jax.Array:
        return jax.vmap(lambda r, row: row + jax.random.normal(r()))(rng.split(4), x)

    out = step(rng, jnp.zeros(4))
    (seed,), left = by_hand(jax.random.key(0), 1)
    expected = [jax.random.normal(by_hand(k, 1)[0][0]) for k in jax.random.split(seed, 4)]
    np.testing.assert_allclose(out, np.stack(expected), rtol=1e-6)
    assert same(rng.key, left)


# ------------------------------------------------------------------ through statetree
def test_conversions_split_merge_and_filters_by_kind() -> None:
    model = st.mutable({"w": st.Param(jnp.ones(2)), "rng": st.Rng(0)})
    graphdef, params, rngs = st.split(model, st.Param, st.Rng)
    assert list(rngs.flat()) == [("rng",)] and list(params.flat()) == [("w",)]
    merged = st.merge(graphdef, params, rngs)
    merged["rng"]()
    assert same(model["rng"].key, by_hand(jax.random.key(0), 1)[1])  # shares storage
    frozen = st.freeze(model)
    assert isinstance(frozen["rng"], st.Rng) and not frozen["rng"].mutable
    again = st.mutable(frozen)
    assert same(again["rng"](), by_hand(jax.random.key(0), 2)[0][1])
    snapshot = st.state(frozen)
    model["rng"]()
    st.update(model, snapshot)  # rewinds the stream
    assert same(model["rng"].key, frozen["rng"].key)


def test_a_restored_stream_draws_what_the_saved_one_would_have(tmp_path: object) -> None:
    rng = st.Rng(5, mutable=True)
    rng()
    st.save(f"{tmp_path}/ckpt", {"rng": rng})
    expected = [rng(), rng()]
    fresh = {"rng": st.Rng(99, mutable=True)}
    st.restore(f"{tmp_path}/ckpt", fresh)
    assert all(map(same, [fresh["rng"](), fresh["rng"]()], expected))
    other_impl = {"rng": st.Rng(0, impl="rbg", mutable=True)}
    with pytest.raises(st.StructureError):
        st.restore(f"{tmp_path}/ckpt", other_impl)


def test_packed_draws_match_hand_threading() -> None:
    packed = st.mutable({"w": jnp.zeros(3), "rng": st.Rng(6)}, packed=True)
    got = [packed["rng"](), jax.jit(lambda t: t["rng"]())(packed)]
    assert all(map(same, got, by_hand(jax.random.key(6), 2)[0]))


def test_threads_drawing_from_one_rng_never_share_a_key() -> None:
    rng = st.Rng(0, mutable=True)
    got: list[tuple[int, ...]] = []

    def worker() -> None:
        for _ in range(10):
            got.append(tuple(np.asarray(data(rng())).tolist()))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    expected = {tuple(np.asarray(data(k)).tolist()) for k in by_hand(jax.random.key(0), 30)[0]}
    assert len(got) == 30 and set(got) == expected


def test_fork_makes_an_independent_stream() -> None:
    rng = st.Rng(0, mutable=True)
    child = rng.fork()
    (seed,), left = by_hand(jax.random.key(0), 1)
    assert same(child.key, seed) and same(rng.key, left)
    assert child.mutable and not same(child(), rng())


# ------------------------------------------------------------------ named streams
def test_rngs_named_streams() -> None:
    rngs = st.Rngs(0, dropout=1)
    assert rngs.names == ("default", "dropout") and list(rngs) == ["default", "dropout"]
    assert same(rngs.dropout(), by_hand(jax.random.key(1), 1)[0][0])
    assert same(rngs(), by_hand(jax.random.key(0), 1)[0][0])
    assert rngs["dropout"] is rngs.dropout and set(rngs.streams()) == {"default", "dropout"}
    assert "dropout=Rng(threefry2x32" in repr(rngs)
    _, state = st.split(rngs, st.Rng)
    assert sorted(state.flat()) == [("default",), ("dropout",)]
    frozen = st.Rngs(params=0, mutable=False)
    assert not frozen.params.mutable


def test_rngs_under_jit_and_vmap() -> None:
    rngs = st.Rngs(params=0, dropout=1)
    jax.jit(lambda r: r.dropout())(rngs)
    assert same(rngs.dropout.key, by_hand(jax.random.key(1), 1)[1])
    batch = rngs.split(2)
    keys = jax.vmap(lambda r: data(r.params()))(batch)
    assert keys.shape == (2, 2) and batch.params.batch_shape == (2,)
    forked = rngs.fork()
    assert forked.names == rngs.names and not same(forked.params.key, rngs.params.key)


def test_rngs_mistakes_are_explained() -> None:
    rngs = st.Rngs(dropout=1)
    with pytest.raises(AttributeError, match=r"no stream 'params'; it holds \['dropout'\]"):
        rngs.params()
    with pytest.raises(KeyError, match="no stream 'params'"):
        rngs["params"]
    with pytest.raises(TypeError, match=r"no default stream.*rngs\.dropout\(\)"):
        rngs()
    with pytest.raises(TypeError, match=r"no stream given.*Rngs\(0\)"):
        st.Rngs()
    with pytest.raises(AttributeError, match="_private"):
        rngs._private


# ------------------------------------------------------------------ dict adapter
def test_dicts_draw_linen_rngs_from_streams() -> None:
    keys = dicts.draw_rngs(st.Rngs(params=0, dropout=1))
    assert same(keys["dropout"], by_hand(jax.random.key(1), 1)[0][0])
    mixed = dicts.draw_rngs({"dropout": st.Rng(2, mutable=True), "other": None})
    assert same(mixed["dropout"], by_hand(jax.random.key(2), 1)[0][0]) and mixed["other"] is None
    plain = {"dropout": jax.random.key(0)}
    assert dicts.draw_rngs(plain) is plain


def test_bound_applies_take_streams_for_their_keys() -> None:
    seen: list[jax.Array] = []

    def linen_apply(variables: dict, x: jax.Array, rngs: dict, mutable: list) -> tuple:
        seen.append(rngs["dropout"])
        return x * variables["params"]["w"], {}

    f = dicts.bind(linen_apply, dicts.from_collections({"params": {"w": jnp.ones(())}}))
    streams = st.Rngs(dropout=3)
    jax.jit(lambda f, s: f(jnp.ones(2), rngs=s))(f, streams)
    assert same(streams.dropout.key, by_hand(jax.random.key(3), 1)[1])

    def haiku_apply(params: dict, state: dict, rng: jax.Array, x: jax.Array) -> tuple:
        return x + jax.random.normal(rng), state

    params, state = dicts.from_haiku({"w": jnp.ones(())}, {})
    g = dicts.bind_haiku(haiku_apply, params, state)
    rng = st.Rng(4, mutable=True)
    out = g(rng, jnp.zeros(()))
    (sub,), left = by_hand(jax.random.key(4), 1)
    np.testing.assert_allclose(out, jax.random.normal(sub))
    assert same(rng.key, left)
