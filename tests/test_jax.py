"""statetree._jax, the one door to JAX's internals: each detection gives the answer the
public spelling gives, and a write through the door is atomic even when forced to fail."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import statetree as st
from statetree import _jax
from statetree._write import bulk as _bulk


def test_am_i_tracing_is_asked_one_way_and_agrees_with_the_public_spelling() -> None:
    assert _jax.top_level() and _jax._top_level_public()
    seen: list[bool] = []

    def f(x: jax.Array) -> jax.Array:
        seen.append(_jax.top_level())
        seen.append(_jax._top_level_public())
        return x

    jax.jit(f)(1.0)
    jax.vmap(f)(jnp.ones(2))
    jax.grad(f)(1.0)
    assert seen == [False] * 6


def test_trace_state_and_escaped_tracers() -> None:
    kept: list[jax.Array] = []
    states: list[object] = []

    def f(x: jax.Array) -> jax.Array:
        kept.append(x)
        states.append(_jax.trace_state())
        states.append(_jax.trace_state())
        assert not _jax.escaped(x)
        return x

    jax.jit(f)(1.0)
    assert states[0] == states[1] and states[0] != _jax.trace_state()
    assert _jax.is_tracer(kept[0]) and _jax.escaped(kept[0])
    assert not _jax.is_tracer(jnp.ones(2))


def test_buffer_of_a_ref_and_the_first_use_check() -> None:
    ref = jax.new_ref(jnp.arange(3.0))
    buf = _jax.buffer(ref)
    assert type(buf) is _jax.ARRAY and buf.tolist() == [0.0, 1.0, 2.0]
    assert _jax.buffer(jnp.ones(2)) is None
    works, committed_checked = _jax.replace_works()
    assert works
    # JAX checks committed-ness exactly where jax.new_ref commits its buffer (0.11.2+).
    assert committed_checked == bool(buf.committed)


def _refs(n: int = 20) -> list[jax.Ref]:
    return [jax.new_ref(jnp.full((3,), float(i), jnp.float32)) for i in range(n)]


def _bits(refs: list[jax.Ref]) -> list[bytes]:
    return [np.asarray(r[...]).tobytes() for r in refs]


@pytest.mark.parametrize("odd", ["weak type", "shape", "committed"])
def test_replace_all_checks_every_pair_before_the_first_lands(odd: str) -> None:
    refs = _refs()
    before = _bits(refs)
    buffers = [_jax.buffer(r) for r in refs]
    copies = _bulk.copy_arrays([jnp.full((3,), 7.0, jnp.float32) for _ in refs])
    assert copies is not None
    copies = [
        jax.device_put(c, b.sharding) if b.committed else c
        for c, b in zip(copies, buffers, strict=True)
    ]
    k = 13  # the odd pair comes after 13 that fit
    if odd == "weak type":
        copies[k] = jnp.broadcast_to(jnp.asarray(7.0), (3,))  # weakly typed float32[3]
        assert jax.typeof(copies[k]).weak_type
    elif odd == "shape":
        copies[k] = jnp.full((4,), 7.0, jnp.float32)
    else:
        if not _jax.replace_works()[1]:
            pytest.skip("this JAX does not check committed-ness (before 0.11.2)")
        copies[k] = jnp.full((3,), 7.0, jnp.float32)  # uncommitted; the buffer is not
    assert _jax.replace_all(buffers, copies) == 0
    assert _bits(refs) == before  # bit for bit: nothing landed


def _tree(n: int = 40) -> dict[str, st.Param]:
    return st.mutable(
        {f"w{i:02d}": st.Param(jnp.full((3,), float(i), jnp.float32)) for i in range(n)}
    )


def test_update_completes_when_jax_refuses_a_pair_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replacement that fails after the door's checks (JAX changed underneath): the
    pairs before it have landed, so the rest go through JAX's public write and the
    update is whole, never half-applied."""
    tree = _tree()
    new = {k: jnp.full((3,), -1.0, jnp.float32) for k in tree}
    real = _jax._replace_one
    calls: list[int] = []

    def flaky(buf: jax.Array, array: jax.Array) -> None:
        calls.append(1)
        if len(calls) == 17:
            raise RuntimeError("refused")
        real(buf, array)

    monkeypatch.setattr(_jax, "_replace_one", flaky)
    st.update(tree, st.state(new))
    assert len(calls) == 17
    assert all(v[...].tolist() == [-1.0] * 3 for v in tree.values())


def test_update_refused_by_the_door_takes_the_public_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tree = _tree()
    new = {k: jnp.full((3,), -2.0, jnp.float32) for k in tree}
    landed: list[int] = []
    real = _jax.replace_all
    monkeypatch.setattr(_jax, "_pairs_fit", lambda *a: False)  # every pair refused
    monkeypatch.setattr(_jax, "replace_all", lambda *a: landed.append(n := real(*a)) or n)
    public: list[int] = []
    write = _bulk._write_refs
    monkeypatch.setattr(_bulk, "_write_refs", lambda r, v: public.append(len(r)) or write(r, v))
    st.update(tree, st.state(new))
    assert landed and set(landed) == {0} and sum(public) == len(tree)
    assert all(v[...].tolist() == [-2.0] * 3 for v in tree.values())


def test_a_failing_public_write_after_a_refusal_leaves_the_tree_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tree = _tree(20)
    before = _bits([v._raw for v in tree.values()])
    monkeypatch.setattr(_jax, "_pairs_fit", lambda *a: False)

    def broken(refs: list[jax.Ref], values: list[jax.Array]) -> None:
        raise RuntimeError("no write today")

    monkeypatch.setattr(_bulk, "_write_refs", broken)
    with pytest.raises(RuntimeError, match="no write today"):
        st.update(tree, st.state({k: jnp.zeros(3, jnp.float32) for k in tree}))
    assert _bits([v._raw for v in tree.values()]) == before


def test_restore_of_host_values_lands_through_the_door(monkeypatch: pytest.MonkeyPatch) -> None:
    refs = _refs()
    buffers = _bulk.buffers(refs)
    types = _bulk.array_types(buffers)
    values = [np.full(3, 5.0, np.float32) for _ in refs]
    landed: list[int] = []
    real = _jax.replace_all
    monkeypatch.setattr(_jax, "replace_all", lambda *a: landed.append(n := real(*a)) or n)
    assert _bulk.host_fits(values, types)
    _bulk.write_checked(refs, values, types, buffers)
    values[0][...] = 9.0  # the Refs hold copies, not the caller's NumPy memory
    assert landed == [len(refs)] or not _jax.replace_works()[0]
    assert all(r[...].tolist() == [5.0] * 3 for r in refs)


def test_a_jax_without_the_replacement_writes_through_the_public_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a JAX release that drops or changes ``_replace_with`` gets: the first-use
    check says no, and every bulk write goes through JAX's own jitted write."""
    monkeypatch.setattr(_jax, "_replace_probe", lambda: (False, False))
    public: list[int] = []
    write = _bulk._write_refs
    monkeypatch.setattr(_bulk, "_write_refs", lambda r, v: public.append(len(r)) or write(r, v))
    tree = _tree()
    st.update(tree, st.state({k: jnp.full((3,), 4.0, jnp.float32) for k in tree}))
    assert sum(public) == len(tree)
    assert all(v[...].tolist() == [4.0] * 3 for v in tree.values())
