"""Checkpoints: ``st.save`` a tree's state with orbax-checkpoint, ``st.restore`` it in place.

A checkpoint is a directory holding

- ``arrays/``: the values, written by orbax-checkpoint (tensorstore, one entry per
  distinct Variable, Ref or array; each device writes its own shards);
- ``statetree.json``: the index: per value its path, kind, dtype and shape (and the PRNG
  implementation for typed keys, stored as their raw ``uint32`` key data), and the
  groups of paths that share one Variable.

``save`` writes everything into a hidden sibling directory and renames it to ``path`` as
its very last step. A rename within one directory is atomic, so ``path`` either does not
exist or holds a complete checkpoint: a save killed at any moment leaves only the hidden
directory, which ``restore`` refuses with an error naming it.

``restore`` reads the index first and compares it with the live tree: every path, kind,
shape and dtype, and the sharing. Any difference raises one error naming every offending
path, before a byte is read. Then orbax reads each value straight into the layout of the
Variable that receives it (its ``.sharding``), whatever the layout at save time, and
``st.update`` writes them in place, so the tree's Variables (and everything holding them)
see the restored values.

orbax-checkpoint is an optional extra (``pip install 'statetree[checkpoint]'``); it is
imported on the first ``save`` or ``restore``, never by ``import statetree``.
"""

import json
import os
import pathlib
import shutil
import uuid
from typing import Any

import jax
import jax.numpy as jnp

from . import _storage
from ._aliases import find_aliases
from ._errors import Misfit, StateTreeError, StructureError, format_path, misfit_report
from ._plan import WritePlan
from ._split import state as _state
from ._split import update as _update
from ._state import State
from ._variables import Variable

__all__ = ["save", "restore", "CheckpointError"]

INDEX = "statetree.json"
ARRAYS = "arrays"
FORMAT = "statetree-checkpoint/1"
_TMP = ".statetree-tmp-"  # hidden sibling `.NAME.statetree-tmp-XXXX` of a save in progress
_OLD = ".statetree-old-"  # the previous checkpoint while `overwrite=True` swaps it out

PathLike = str | os.PathLike[str]


class CheckpointError(StateTreeError, OSError):
    """A path that holds no complete statetree checkpoint, or one ``save`` would replace."""


def _orbax() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise ImportError(
            "statetree checkpoints are written with orbax-checkpoint, an optional extra "
            "that is not installed. Install it with: pip install 'statetree[checkpoint]' "
            f"(or pip install orbax-checkpoint). The import failed with: {e}"
        ) from e
    return ocp


def _checkpointer(ocp: Any) -> Any:
    # Synchronous: when `save` returns, the values are on disk.
    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


# ---------------------------------------------------------------------------- save
def _kind(value: Any) -> str:
    if isinstance(value, Variable):
        return type(value).__name__
    return "Ref" if _storage.is_storage(value) else "array"


def _entry(path: Any, value: Any) -> tuple[dict[str, Any], Any]:
    """The index entry of one value, and the array orbax stores for it."""
    if not all(type(k) in (str, int) for k in path):
        raise TypeError(
            f"save: the path {format_path(path)} has keys other than str and int "
            f"({path!r}), which the checkpoint index cannot record. Hold the value "
            "under dict keys, attributes or sequence indices."
        )
    array = value.value if isinstance(value, Variable) else _storage.read(value)
    if isinstance(array, jax.core.Tracer):
        raise TypeError(
            f"save: the value at {format_path(path)} is traced: st.save writes files, "
            "which cannot happen inside jax.jit or another transform. Call it outside, "
            "on the live tree, after the jitted step returns."
        )
    entry = {
        "path": list(path),
        "kind": _kind(value),
        "dtype": str(array.dtype),
        "shape": list(array.shape),
    }
    if jnp.issubdtype(array.dtype, jax.dtypes.prng_key):
        # orbax stores numbers: keep the raw key data and the implementation's name.
        entry["key_impl"] = str(jax.random.key_impl(array))
        array = jax.random.key_data(array)
    return entry, array


def save(path: PathLike, tree: Any, *, overwrite: bool = False) -> None:
    """Save the state of ``tree`` to the directory ``path`` (orbax-checkpoint).

    The checkpoint appears at ``path`` complete or not at all: it is written into a
    hidden sibling directory and renamed into place as the last step, so a save killed
    at any moment leaves nothing that ``restore`` accepts. Shared Variables are stored
    once, with the paths that share them; values keep their dtype bit for bit (bfloat16,
    int8, raw key data, typed PRNG keys) and each device writes its own shards.

    Args:
      path: the checkpoint's directory; its parent is created if needed.
      tree: a live tree (Variables, raw Refs and arrays; other leaves are structure and
        are not saved), or a State such as ``st.state(model, st.Param)``.
      overwrite: replace an existing checkpoint at ``path``, once the new one is complete.

    Raises:
      CheckpointError: ``path`` exists and ``overwrite`` is False.
      TypeError: a value is traced (``save`` runs outside ``jax.jit``), or a path has a
        key other than ``str`` and ``int``.
      ImportError: orbax-checkpoint (the ``checkpoint`` extra) is not installed.

    Examples:
      >>> import tempfile, jax.numpy as jnp, statetree as st
      >>> model = st.mutable({"w": st.Param(jnp.ones(3)), "step": jnp.array(7)})
      >>> directory = tempfile.mkdtemp()
      >>> st.save(f"{directory}/step_7", model)
      >>> model["w"][...] = 0.0
      >>> st.restore(f"{directory}/step_7", model)
      >>> model["w"][...]
      Array([1., 1., 1.], dtype=float32)
    """
    ocp = _orbax()
    final = pathlib.Path(path).absolute()
    if final.exists() and not overwrite:
        raise CheckpointError(
            f"save: {final} already exists. Save each checkpoint under a new name (e.g. "
            "one directory per step), or pass overwrite=True to replace it once the new "
            "checkpoint is complete."
        )
    source = tree if isinstance(tree, State) else _state(tree)
    entries, arrays = [], {}
    for i, (p, value) in enumerate(source.items()):
        entry, array = _entry(p, value)
        entries.append(entry)
        arrays[str(i)] = array
    aliases = [] if isinstance(tree, State) else [list(map(list, g)) for g in find_aliases(tree)]
    index = {"format": FORMAT, "values": entries, "aliases": aliases}

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}{_TMP}{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _checkpointer(ocp).save(tmp / ARRAYS, args=ocp.args.StandardSave(arrays))
        with open(tmp / INDEX, "w") as f:
            json.dump(index, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: pathlib.Path, final: pathlib.Path) -> None:
    """Move the finished checkpoint ``tmp`` to ``final``: one atomic rename (two when a
    previous checkpoint is replaced, which stays complete beside it until the swap)."""
    if final.exists():
        old = final.parent / f".{final.name}{_OLD}{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    _fsync_dir(final.parent)


def _fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- restore
def _read_index(final: pathlib.Path) -> dict[str, Any]:
    siblings = sorted(final.parent.glob(f".{final.name}{_TMP}*")) if final.parent.exists() else []
    olds = sorted(final.parent.glob(f".{final.name}{_OLD}*")) if final.parent.exists() else []
    if _TMP in final.name or _OLD in final.name:
        raise CheckpointError(
            f"restore: {final} is the working directory of a save (one that was "
            "interrupted, or is still running), not a checkpoint. Restore from the path "
            "given to st.save."
        )
    if not final.is_dir():
        hint = ""
        if olds:
            hint += (
                f" An overwrite was interrupted between its two renames; the previous "
                f"checkpoint is complete at {olds[-1]}: rename it back to {final.name}."
            )
        if siblings:
            hint += (
                f" Found {len(siblings)} unfinished save(s) beside it ({siblings[-1].name}): "
                "a save that was interrupted leaves only such a directory, which is not a "
                "checkpoint; delete it."
            )
        raise CheckpointError(f"restore: no checkpoint at {final}.{hint}")
    try:
        with open(final / INDEX) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"restore: {final} is not a complete statetree checkpoint: its index "
            f"{INDEX} cannot be read ({e}). st.save never leaves such a directory at the "
            "path it was given; was it written by another tool or copied partially?"
        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(
            f"restore: {final / INDEX} is not a statetree index of format {FORMAT!r}."
        )
    return index


def _problems(index: dict[str, Any], live: State, tree: Any) -> list[Misfit]:
    """Every way the checkpoint and the live tree disagree (empty when they fit)."""
    saved = {tuple(e["path"]): e for e in index["values"]}
    problems = []
    for p, value in live.items():
        entry = saved.get(p)
        if entry is None:
            problems.append(Misfit(p, "in the tree, not in the checkpoint"))
            continue
        kind = _kind(value)
        if entry["kind"] != kind:
            problems.append(Misfit(p, f"checkpoint has a {entry['kind']}, tree a {kind}"))
        want = (entry["dtype"], tuple(entry["shape"]))
        have = (str(value.dtype), tuple(value.shape))
        if want != have:
            problems.append(
                Misfit(
                    p, f"checkpoint has {want[0]}{list(want[1])}, tree {have[0]}{list(have[1])}"
                )
            )
        if not (isinstance(value, Variable) and value.mutable) and kind != "Ref":
            problems.append(
                Misfit(
                    p,
                    "the tree holds a frozen value here, which cannot be restored in place; "
                    "make the tree mutable first: tree = st.mutable(tree)",
                )
            )
    for p in saved.keys() - set(live.paths()):
        problems.append(Misfit(p, "in the checkpoint, not in the tree"))
    if isinstance(tree, State):
        return problems  # a State holds each value once: there is no sharing to compare
    saved_groups = {tuple(map(tuple, g)) for g in index["aliases"]}
    live_groups = set(find_aliases(tree))
    for group in sorted(saved_groups ^ live_groups, key=repr):
        where = "checkpoint" if group in saved_groups else "tree"
        detail = f"share one value in the {where} only"
        problems.append(Misfit(group[0], detail, also=group[1:], sep=", "))
    return problems


def _target(entry: dict[str, Any], value: Any) -> Any:
    """What orbax should produce for ``entry``: the live value's shape, dtype, layout."""
    current = value.value if isinstance(value, Variable) else _storage.read(value)
    if "key_impl" in entry:
        current = jax.random.key_data(current)
    return jax.ShapeDtypeStruct(current.shape, current.dtype, sharding=current.sharding)


def restore(path: PathLike, tree: Any) -> None:
    """Restore the checkpoint at ``path`` into ``tree``'s mutable Variables, in place.

    The index is compared with the live tree first: the same paths, kinds, shapes,
    dtypes and shared Variables, each target writable in place. Any difference raises
    one error naming every offending path, and nothing is read or written. Each value is
    then read in the layout of the Variable that receives it (its ``.sharding``), so a
    checkpoint saved on one device layout restores onto another, and written with
    ``st.update``: everything holding the tree's Variables sees the restored values.

    Args:
      path: a directory written by :func:`save`.
      tree: the live tree, made mutable (``st.mutable``), or a State of its mutable
        Variables (such as ``st.state(model, st.Param)`` when that State was saved).

    Raises:
      CheckpointError: no complete checkpoint at ``path`` (never written, an unfinished
        save's working directory, or an interrupted overwrite: the message says which).
      StructureError: the tree does not fit the checkpoint (every difference is named).
      ImportError: orbax-checkpoint (the ``checkpoint`` extra) is not installed.

    Examples:
      >>> import tempfile, jax, jax.numpy as jnp, statetree as st
      >>> rng = st.mutable({"key": jax.random.key(0), "bf16": jnp.ones(2, jnp.bfloat16)})
      >>> directory = tempfile.mkdtemp()
      >>> st.save(f"{directory}/rng", rng)
      >>> rng["bf16"][...] = 0
      >>> st.restore(f"{directory}/rng", rng)
      >>> rng["bf16"][...], rng["key"].dtype
      (Array([1, 1], dtype=bfloat16), key<fry>)
    """
    ocp = _orbax()
    final = pathlib.Path(path).absolute()
    index = _read_index(final)
    live = tree if isinstance(tree, State) else _state(tree)
    problems = _problems(index, live, tree)
    message = misfit_report(
        f"restore: the tree does not fit the checkpoint at {final}; nothing was "
        f"restored. {len(problems)} difference(s):",
        [(None, problems)],
        "Restore into a tree built the way the saved one was (same code, same "
        "configuration), made mutable with st.mutable.",
    )
    if message:
        raise StructureError(message)
    values = dict(live.items())
    entries = index["values"]
    targets = {str(i): _target(e, values[tuple(e["path"])]) for i, e in enumerate(entries)}
    arrays = _checkpointer(ocp).restore(final / ARRAYS, args=ocp.args.StandardRestore(targets))
    flat = {}
    for i, entry in enumerate(entries):
        array = arrays[str(i)]
        if "key_impl" in entry:
            array = jax.random.wrap_key_data(array, impl=entry["key_impl"])
        flat[tuple(entry["path"])] = array
    if isinstance(tree, State):
        plan = WritePlan("restore", exact=True)  # statetree's one write path
        for p, value in live.items():
            plan.add(value, flat[p], p)
        plan.commit()
    else:
        _update(tree, State(flat))
