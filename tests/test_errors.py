"""Error helpers (statetree._errors): paths in messages, and the exception classes."""

import jax
import jax.numpy as jnp
import pytest

import statetree as st


def test_keystr_formats_plain_paths_and_jax_key_entries() -> None:
    assert st.keystr(("layers", 0, "kernel")) == "['layers'][0]['kernel']"
    assert st.keystr(()) == "<root>"
    path = (jax.tree_util.GetAttrKey("w"), jax.tree_util.SequenceKey(1))
    assert st.keystr(path) == jax.tree_util.keystr(path) == ".w[1]"


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (st.FrozenVariableError, TypeError),
        (st.VariableWriteError, ValueError),
        (st.VariableIndexError, IndexError),
        (st.UnreadableValueError, RuntimeError),
        (st.RefValueError, TypeError),
        (st.AliasError, ValueError),
        (st.StructureError, ValueError),
    ],
)
def test_each_error_refines_its_builtin_and_shares_one_base(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, st.StateTreeError) and issubclass(error, builtin)


def test_a_frozen_write_is_caught_by_the_base_and_by_its_builtin() -> None:
    v = st.Variable(jnp.zeros(2))
    for caught in (st.StateTreeError, TypeError, st.FrozenVariableError):
        with pytest.raises(caught, match="frozen"):
            v[...] = 1.0
    assert float(v[...].sum()) == 0.0  # nothing was written
