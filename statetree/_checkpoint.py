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
from typing import Any, cast

import jax
import jax.numpy as jnp

from . import _digest, _storage
from ._aliases import find_aliases
from ._errors import StateTreeError, StructureError, format_path
from ._split import state as _state
from ._split import update as _update
from ._state import State
from ._variables import Variable

__all__ = ["save", "restore", "CheckpointError"]

INDEX = "statetree.json"
ARRAYS = "arrays"
FORMAT = "statetree-checkpoint/2"
_TMP = ".statetree-tmp-"  # hidden sibling `.NAME.statetree-tmp-XXXX` of a save in progress
_OLD = ".statetree-old-"  # the previous checkpoint while `overwrite=True` swaps it out

PathLike = str | os.PathLike[str]


class CheckpointError(StateTreeError, OSError):
    """A path that holds no complete, intact statetree checkpoint (missing, unfinished,
    damaged: its digests do not match), or one ``save`` would replace."""


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


def _values(tree: Any) -> State:
    """The tree's values keyed by path (a State is a tree: its own values)."""
    return cast(State, _state(tree))


# ---------------------------------------------------------------------------- save
def _kind(value: Any) -> str:
    if isinstance(value, Variable):
        return type(value).__name__
    return "Ref" if _storage.is_storage(value) else "array"


def _read(value: Any) -> Any:
    return value.value if isinstance(value, Variable) else _storage.read(value)


def _refuse_traced(verb: str, path: Any, array: Any) -> None:
    if isinstance(array, jax.core.Tracer):
        raise TypeError(
            f"{verb}: the value at {format_path(path)} is traced: st.{verb} reads and "
            "writes files, which cannot happen inside jax.jit or another transform (the "
            "function is traced once and compiled; files are not part of a computation). "
            f"Call st.{verb} outside, on the live tree, before or after the jitted step."
        )


def _entry(path: Any, value: Any) -> tuple[dict[str, Any], Any]:
    """The index entry of one value, and the array orbax stores for it."""
    if not all(type(k) in (str, int) for k in path):
        raise TypeError(
            f"save: the path {format_path(path)} has keys other than str and int "
            f"({path!r}), which the checkpoint index cannot record. Hold the value "
            "under dict keys, attributes or sequence indices."
        )
    array = _read(value)
    _refuse_traced("save", path, array)
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


def prepare(tree: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The index of ``tree``'s state (paths, kinds, dtypes, shapes, digests, sharing)
    and the arrays orbax stores, keyed by their position in the index. Zero-size arrays
    are recorded in the index only (orbax refuses them; they hold no data). Every
    process of a multi-process job calls it (the digests are summed across processes).
    """
    entries, arrays = [], []
    for p, value in _values(tree).items():
        entry, array = _entry(p, value)
        entries.append(entry)
        arrays.append(array)
    for entry, digest in zip(entries, _digest.digests(arrays), strict=True):
        entry["digest"] = digest
    body = {"values": entries, "aliases": [list(map(list, g)) for g in find_aliases(tree)]}
    index = {"format": FORMAT, **body, "checksum": _digest.index_checksum(body)}
    stored = {str(i): a for i, a in enumerate(arrays) if a.size}
    return index, stored


def save(path: PathLike, tree: Any, *, overwrite: bool = False) -> None:
    """Save the state of ``tree`` to the directory ``path`` (orbax-checkpoint).

    The checkpoint appears at ``path`` complete or not at all: it is written into a
    hidden sibling directory and renamed into place as the last step, so a save killed
    at any moment leaves nothing that ``restore`` accepts. Shared Variables are stored
    once, with the paths that share them; values keep their dtype bit for bit (bfloat16,
    int8, raw key data, typed PRNG keys), each with a digest that ``restore`` verifies,
    and each device writes its own shards.

    Under ``jax.distributed`` every process calls ``save`` with the same path and its
    view of the same tree: each process writes the shards it holds, process 0 writes the
    index and renames the checkpoint into place, and ``save`` returns on every process
    once the checkpoint is complete.

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
    refuse_inside_jit("save")
    final = pathlib.Path(path).absolute()
    if final.exists() and not overwrite:
        raise CheckpointError(
            f"save: {final} already exists. Save each checkpoint under a new name (e.g. "
            "one directory per step), or pass overwrite=True to replace it once the new "
            "checkpoint is complete."
        )
    index, stored = prepare(tree)
    # Every process writes into the same working directory: one name, agreed on.
    token = _digest.same_token()
    tmp = final.parent / f".{final.name}{_TMP}{token}"
    primary = _digest.is_primary()
    if primary:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    _digest.barrier(f"statetree-save-begin-{token}")
    try:
        if stored:
            _checkpointer(ocp).save(tmp / ARRAYS, args=ocp.args.StandardSave(stored))
        if primary:
            with open(tmp / INDEX, "w") as f:
                json.dump(index, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _commit(tmp, final)
        _digest.barrier(f"statetree-save-end-{token}")
    except BaseException:
        if primary:
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
def refuse_inside_jit(verb: str) -> None:
    """``save``/``restore`` touch files: refuse them while ``jax.jit`` traces."""
    if isinstance(jnp.zeros(()), jax.core.Tracer):
        raise TypeError(
            f"{verb}: called inside jax.jit, while it traces a function. st.{verb} reads "
            "and writes files, which cannot be part of a compiled computation (the function is "
            f"traced once; files are not values). Call st.{verb} outside the jitted "
            "function, on the live tree, before or after the step."
        )


def damaged(where: Any, why: str) -> CheckpointError:
    return CheckpointError(
        f"restore: the checkpoint at {where} is damaged: {why}. Nothing was restored. "
        "st.save never leaves such a checkpoint at its path: the files were changed or "
        "truncated afterwards (disk, copy, edit). Restore an earlier checkpoint."
    )


def _valid_entry(entry: Any) -> bool:
    path, shape = entry["path"], entry["shape"]
    return (
        isinstance(path, list)
        and all(type(k) in (str, int) for k in path)
        and isinstance(entry["kind"], str)
        and isinstance(entry["dtype"], str)
        and isinstance(shape, list)
        and all(type(n) is int and n >= 0 for n in shape)
        and isinstance(entry["digest"], str)
        and isinstance(entry.get("key_impl", ""), str)
    )


def check_index(index: Any, where: Any) -> dict[str, Any]:
    """``index`` if it is an intact statetree index; else a CheckpointError."""
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise CheckpointError(
            f"restore: the index at {where} is not a statetree index of format {FORMAT!r} "
            f"(found {found!r}). It was written by another tool or another version of "
            "statetree, or it is damaged; restore a checkpoint written by st.save."
        )
    body = {"values": index.get("values"), "aliases": index.get("aliases")}
    if index.get("checksum") != _digest.index_checksum(body):
        raise damaged(where, "its index does not match the checksum stored with it")
    try:
        ok = all(map(_valid_entry, index["values"])) and all(
            isinstance(p, list) for g in index["aliases"] for p in g
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise damaged(where, "its index does not have the structure st.save writes")
    return index


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
            "path it was given; was it written by another tool, copied partially, or "
            "damaged?"
        ) from None
    return check_index(index, final / INDEX)


def _problems(index: dict[str, Any], live: State, tree: Any) -> list[str]:
    """Every way the checkpoint and the live tree disagree (empty when they fit)."""
    saved = {tuple(e["path"]): e for e in index["values"]}
    problems = []
    for p, value in live.items():
        entry = saved.get(p)
        if entry is None:
            problems.append(f"  {format_path(p)}: in the tree, not in the checkpoint")
            continue
        kind = _kind(value)
        if entry["kind"] != kind:
            problems.append(f"  {format_path(p)}: checkpoint has a {entry['kind']}, tree a {kind}")
        want = (entry["dtype"], tuple(entry["shape"]))
        have = (str(value.dtype), tuple(value.shape))
        if want != have:
            problems.append(
                f"  {format_path(p)}: checkpoint has {want[0]}{list(want[1])}, "
                f"tree {have[0]}{list(have[1])}"
            )
        if not (isinstance(value, Variable) and value.mutable) and kind != "Ref":
            problems.append(
                f"  {format_path(p)}: the tree holds a frozen value here, which cannot be "
                "restored in place; make the tree mutable first: tree = st.mutable(tree)"
            )
    for p in saved.keys() - set(live.paths()):
        problems.append(f"  {format_path(p)}: in the checkpoint, not in the tree")
    saved_groups = {tuple(map(tuple, g)) for g in index["aliases"]}
    live_groups = set(find_aliases(tree))
    for group in sorted(saved_groups ^ live_groups, key=repr):
        where = "checkpoint" if group in saved_groups else "tree"
        paths = ", ".join(map(format_path, group))
        problems.append(f"  {paths}: share one value in the {where} only")
    return problems


def fit(index: dict[str, Any], tree: Any, where: Any) -> dict[str, Any]:
    """What orbax should read for each stored value of ``index`` into ``tree``: the
    live value's shape, dtype and layout. Raises StructureError (naming every
    difference, nothing read) when the tree does not fit the checkpoint."""
    refuse_inside_jit("restore")
    live = _values(tree)
    values = {}
    for p, value in live.items():
        values[p] = current = _read(value)
        _refuse_traced("restore", p, current)
    problems = _problems(index, live, tree)
    if problems:
        raise StructureError(
            f"restore: the tree does not fit the checkpoint at {where}; nothing was "
            f"restored. {len(problems)} difference(s):\n"
            + "\n".join(problems)
            + "\nRestore into a tree built the way the saved one was (same code, same "
            "configuration), made mutable with st.mutable."
        )
    targets = {}
    for i, entry in enumerate(index["values"]):
        current = values[tuple(entry["path"])]
        if "key_impl" in entry:
            current = jax.random.key_data(current)
        if current.size:
            targets[str(i)] = jax.ShapeDtypeStruct(
                current.shape, current.dtype, sharding=current.sharding
            )
    return targets


def finish(index: dict[str, Any], arrays: dict[str, Any], tree: Any, where: Any) -> None:
    """Verify the arrays read for ``index`` against its digests, then write them into
    ``tree`` in place (all or nothing: a mismatch raises before the first write)."""
    entries = index["values"]
    stored = [i for i, e in enumerate(entries) if str(i) in arrays]
    digests = _digest.digests([arrays[str(i)] for i in stored])
    wrong = [
        format_path(tuple(entries[i]["path"]))
        for i, digest in zip(stored, digests, strict=True)
        if digest != entries[i]["digest"]
    ]
    if wrong:
        raise damaged(
            where,
            f"{len(wrong)} value(s) do not match the digest stored at save time: "
            + ", ".join(wrong),
        )
    flat = {}
    for i in stored:  # zero-size values hold nothing to write
        array = arrays[str(i)]
        if "key_impl" in entries[i]:
            array = jax.random.wrap_key_data(array, impl=entries[i]["key_impl"])
        flat[tuple(entries[i]["path"])] = array
    _update(tree, State(flat))


def read_arrays(ocp: Any, directory: pathlib.Path, targets: dict[str, Any], where: Any) -> Any:
    """orbax's restore of ``targets`` from ``directory``; any failure to read them (a
    missing or damaged file) is a CheckpointError naming the checkpoint."""
    if not targets:
        return {}
    try:
        return _checkpointer(ocp).restore(directory, args=ocp.args.StandardRestore(targets))
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise damaged(where, f"orbax cannot read its arrays ({type(e).__name__}: {reason})") from e


def restore(path: PathLike, tree: Any) -> None:
    """Restore the checkpoint at ``path`` into ``tree``'s mutable Variables, in place.

    The index is compared with the live tree first: the same paths, kinds, shapes,
    dtypes and shared Variables, each target writable in place. Any difference raises
    one error naming every offending path, and nothing is read or written. Each value is
    then read in the layout of the Variable that receives it (its ``.sharding``), so a
    checkpoint saved on one device layout (or by another number of processes) restores
    onto another; every value is checked against the digest stored at save time, and
    only then are they all written with ``st.update``: everything holding the tree's
    Variables sees the restored values. Under ``jax.distributed`` every process calls
    ``restore``; each reads the shards it holds.

    Args:
      path: a directory written by :func:`save`.
      tree: the live tree, made mutable (``st.mutable``), or a State of its mutable
        Variables (such as ``st.state(model, st.Param)`` when that State was saved).

    Raises:
      CheckpointError: no complete, intact checkpoint at ``path``: never written, an
        unfinished save's working directory, an interrupted overwrite, or damaged files
        (a value whose digest does not match is named); the message says which.
      StructureError: the tree does not fit the checkpoint (every difference is named).
      TypeError: called inside ``jax.jit`` (files cannot be part of a computation).
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
    refuse_inside_jit("restore")
    final = pathlib.Path(path).absolute()
    index = _read_index(final)
    targets = fit(index, tree, final)
    arrays = read_arrays(ocp, final / ARRAYS, targets, final)
    finish(index, arrays, tree, final)
