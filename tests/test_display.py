"""Readable text for States and GraphDefs (statetree._display)."""

import jax
import jax.numpy as jnp
from _corpus import two_layers as tree

import statetree as st


def test_state_repr_shows_each_path_kind_form_and_sharing() -> None:
    assert repr(st.state(tree()).filter(st.PathContains(1))) == (
        "State({\n"
        "  ['layers'][1]['n']: BatchStat float32[2] mutable\n"
        "  ['layers'][1]['w']: Param float32[2,2] frozen\n"
        "})"
    )
    assert repr(st.State()) == "State({})"
    v = st.Param(jnp.ones(1))
    assert repr(st.state({"a": v, "b": [v]})) == (
        "State({\n  ['a']: Param float32[1] frozen  (shared with ['b'][0])\n})"
    )
    assert "Ref int32[] mutable" in repr(st.state({"r": jax.new_ref(jnp.array(0))}))


def test_graphdef_repr_marks_shared_paths() -> None:
    v = st.Param(jnp.ones(1))
    graphdef, _ = st.split({"a": v, "b": v, "c": st.BatchStat(jnp.ones(1))})
    assert repr(graphdef) == (
        "GraphDef(2 values:\n  ['a']: Param  shared with ['b']\n  ['c']: BatchStat\n)"
    )
