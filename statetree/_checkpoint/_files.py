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

from . import _orbax, _processes
from ._failures import CheckpointError, refuse_inside_jit
from ._index import Live, encode
from ._processes import PEER_TIMEOUT, check_timeout
from ._restore import restore_into

__all__ = ["save", "restore", "INDEX", "ARRAYS"]

INDEX = "statetree.json"
ARRAYS = "arrays"
_TMP = ".statetree-tmp-"  # hidden sibling `.NAME.statetree-tmp-XXXX` of a save in progress
_OLD = ".statetree-old-"  # the previous checkpoint while `overwrite=True` swaps it out

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------- save
def save(
    path: PathLike, tree: Any, *, overwrite: bool = False, peer_timeout: float = PEER_TIMEOUT
) -> None:
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
      peer_timeout: under ``jax.distributed``, how long (seconds) to wait for another
        process at a point where the processes meet before raising ``st.PeerError``
        naming it (it died or hangs).

    Raises:
      CheckpointError: ``path`` exists and ``overwrite`` is False.
      PeerError: another process of the job died or hangs (named); every checkpoint
        committed before is intact.
      ValueError: ``peer_timeout`` is not a positive number.
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
    ocp = _orbax.orbax()
    refuse_inside_jit("save")
    final = pathlib.Path(path).absolute()
    if final.exists() and not overwrite:
        raise CheckpointError(
            f"save: {final} already exists. Save each checkpoint under a new name (e.g. "
            "one directory per step), or pass overwrite=True to replace it once the new "
            "checkpoint is complete."
        )
    with _processes.coordinated("st.save", check_timeout("save", peer_timeout)):
        _save(ocp, final, tree)


def _save(ocp: Any, final: pathlib.Path, tree: Any) -> None:
    index, stored = encode(Live.of(tree))
    # Every process writes into the same working directory: one name, agreed on.
    token = _processes.same_token()
    tmp = final.parent / f".{final.name}{_TMP}{token}"
    primary = _processes.is_primary()
    if primary:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    _processes.barrier(f"statetree-save-begin-{token}")
    try:
        if stored:
            _orbax.checkpointer(ocp).save(tmp / ARRAYS, args=ocp.args.StandardSave(stored))
        if primary:
            with open(tmp / INDEX, "w") as f:
                json.dump(index, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _commit(tmp, final)
        _processes.barrier(f"statetree-save-end-{token}")
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
def _read_index(final: pathlib.Path) -> Any:
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
    return index


def restore(path: PathLike, tree: Any, *, peer_timeout: float = PEER_TIMEOUT) -> None:
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
      peer_timeout: as for :func:`save`.

    Raises:
      CheckpointError: no complete, intact checkpoint at ``path``: never written, an
        unfinished save's working directory, an interrupted overwrite, or damaged files
        (a value whose digest does not match is named); the message says which.
      StructureError: the tree does not fit the checkpoint (every difference is named).
      PeerError: another process of the job died or hangs (named); the files are not
        at fault and the tree is unchanged.
      ValueError: ``peer_timeout`` is not a positive number.
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
    ocp = _orbax.orbax()
    final = pathlib.Path(path).absolute()

    def read_arrays(targets: dict[str, Any]) -> Any:
        return _orbax.read_arrays(ocp, final / ARRAYS, targets, final)

    with _processes.coordinated("st.restore", check_timeout("restore", peer_timeout)):
        restore_into(tree, final, lambda: _read_index(final), read_arrays)
