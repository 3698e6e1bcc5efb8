"""The checkpoint index: what ``st.save`` records about a tree's values, and the checks
``st.restore`` and ``st.CheckpointManager.restore`` run against it.

The index (JSON) lists each distinct value once: its path, kind, dtype, shape, the PRNG
implementation of typed keys (stored as their raw ``uint32`` key data), its digest
(``_digest``), and where orbax holds it; then the groups of paths that share one
Variable; then a checksum of all that. orbax holds each large or sharded value as an
array of its own (each device writes its own shards) and the small unsharded values
laid end to end in one host buffer per dtype (``small:<dtype>``), so a tree of 100k
small Variables is a handful of orbax arrays, not 100k.

Restoring is check-all-then-write: the index is checked (format, checksum, structure),
then compared with the live tree (paths, kinds, dtypes, shapes, sharing, writability:
``fit``), then the values read are checked against their digests, and only then written
into the tree with ``st.update`` (``finish``). Any failure raises before the first
write.
"""

import math
from collections import defaultdict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _digest, _jax
from ._aliases import find_aliases
from ._errors import Misfit, StateTreeError, StructureError, format_path, misfit_report
from ._split import state as _state
from ._split import update as _update
from ._state import State
from ._variables import Variable
from ._write import storage as _storage

__all__ = ["CheckpointError", "prepare", "check_index", "fit", "finish", "damaged"]

FORMAT = "statetree-checkpoint/2"
SMALL = 1 << 16  # bytes: unsharded values up to this size share one buffer per dtype


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


def _values(tree: Any) -> State:
    """The tree's values keyed by path (a State is a tree: its own values)."""
    return _state(tree)


# ---------------------------------------------------------------------------- save
def _kind(value: Any) -> str:
    if isinstance(value, Variable):
        return type(value).__name__
    return "Ref" if _storage.is_storage(value) else "array"


def _read(value: Any) -> Any:
    return value.value if isinstance(value, Variable) else _storage.read(value)


def _refuse_traced(verb: str, path: Any, array: Any) -> None:
    if _jax.is_tracer(array):
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
        entry["data_shape"] = list(array.shape)
    return entry, array


def _small(array: Any) -> bool:
    """Whether ``array`` joins its dtype's shared buffer: non-empty, at most SMALL bytes,
    and whole on every process that holds it (a NumPy array, one device, replicated)."""
    if not array.size or array.size * array.dtype.itemsize > SMALL:
        return False
    return isinstance(array, np.ndarray) or bool(array.is_fully_replicated)


def _host(array: Any) -> np.ndarray:
    """A whole (small, replicated) value on the host: one copy, from this process."""
    if isinstance(array, np.ndarray):
        return array
    return np.asarray(array.addressable_data(0))


def prepare(tree: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The index of ``tree``'s state (paths, kinds, dtypes, shapes, digests, sharing)
    and the arrays orbax stores: each large or sharded value under its position in the
    index, the small ones laid end to end in one host buffer per dtype. Zero-size values
    are recorded in the index only (orbax refuses them; they hold no data). Every
    process of a multi-process job calls it (the digests of sharded values are summed
    across processes).

    The arrays are the save's own snapshot: reading a mutable Variable gives a new
    buffer, which the next in-place step (donating the Variable's buffer) cannot touch.
    """
    entries, arrays = [], []
    for p, value in _values(tree).items():
        entry, array = _entry(p, value)
        entries.append(entry)
        arrays.append(array)
    stored: dict[str, Any] = {}
    alone = [i for i, a in enumerate(arrays) if a.size and not _small(a)]
    for i, digest in zip(alone, _digest.digests([arrays[i] for i in alone]), strict=True):
        entries[i]["digest"] = digest
        stored[str(i)] = arrays[i]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(arrays):
        if _small(a):
            groups[f"small:{np.dtype(a.dtype).name}"].append(i)
        elif not a.size:
            entries[i]["digest"] = _digest.packed_digests(np.zeros(0), [0])[0]
    for name, members in groups.items():
        parts = [_host(arrays[i]).reshape(-1) for i in members]
        buffer = np.concatenate(parts)
        offsets = np.cumsum([0] + [p.size for p in parts[:-1]])
        sizes = [p.size for p in parts]
        for i, offset, digest in zip(
            members, offsets, _digest.packed_digests(buffer, sizes), strict=True
        ):
            entries[i].update(buffer=name, offset=int(offset), digest=digest)
        stored[name] = buffer
    body = {"values": entries, "aliases": [list(map(list, g)) for g in find_aliases(tree)]}
    index = {"format": FORMAT, **body, "checksum": _digest.index_checksum(body)}
    return index, stored


def refuse_inside_jit(verb: str) -> None:
    """``save``/``restore`` touch files: refuse them while ``jax.jit`` traces."""
    if not _jax.top_level():
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
        and isinstance(entry.get("buffer", ""), str)
        and type(entry.get("offset", 0)) is int
        and entry.get("offset", 0) >= 0
        and all(type(n) is int and n >= 0 for n in entry.get("data_shape", []))
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
    saved_groups = {tuple(map(tuple, g)) for g in index["aliases"]}
    live_groups = set(find_aliases(tree))
    for group in sorted(saved_groups ^ live_groups, key=repr):
        where = "checkpoint" if group in saved_groups else "tree"
        detail = f"share one value in the {where} only"
        problems.append(Misfit(group[0], detail, also=group[1:], sep=", "))
    return problems


def fit(index: dict[str, Any], tree: Any, where: Any) -> dict[str, Any]:
    """What orbax should read for each stored value of ``index`` into ``tree``: the
    live value's shape, dtype and layout. Raises StructureError (naming every
    difference, nothing read) when the tree does not fit the checkpoint."""
    refuse_inside_jit("restore")
    live = _values(tree)
    values = {}
    for p, value in live.items():  # shapes, dtypes, layouts: nothing is read
        values[p] = value
        _refuse_traced("restore", p, value._raw if isinstance(value, Variable) else value)
    problems = _problems(index, live, tree)
    message = misfit_report(
        f"restore: the tree does not fit the checkpoint at {where}; nothing was "
        f"restored. {len(problems)} difference(s):",
        [(None, problems)],
        "Restore into a tree built the way the saved one was (same code, same "
        "configuration), made mutable with st.mutable.",
    )
    if message:
        raise StructureError(message)
    targets: dict[str, Any] = {}
    sizes: dict[str, int] = defaultdict(int)
    dtypes: dict[str, Any] = {}
    for i, entry in enumerate(index["values"]):
        value = values[tuple(entry["path"])]
        if "buffer" in entry and "key_impl" not in entry:  # most values: no struct needed
            name = entry["buffer"]
            sizes[name] = max(sizes[name], entry["offset"] + math.prod(value.shape))
            dtypes[name] = value.dtype
            continue
        current = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=value.sharding)
        if "key_impl" in entry:
            data = jax.eval_shape(jax.random.key_data, current)
            current = jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=value.sharding)
        if "buffer" in entry:
            name = entry["buffer"]
            sizes[name] = max(sizes[name], entry["offset"] + current.size)
            dtypes[name] = current.dtype
        elif current.size:
            targets[str(i)] = jax.ShapeDtypeStruct(
                current.shape, current.dtype, sharding=current.sharding
            )
    for name, size in sizes.items():  # each shared buffer once, at its full size
        targets[name] = np.zeros(size, np.dtype(dtypes[name]))
    return targets


def _stored_size(entry: dict[str, Any]) -> int:
    """How many elements orbax holds for ``entry`` (typed keys: their key data)."""
    return math.prod(entry.get("data_shape", entry["shape"]))


def finish(index: dict[str, Any], arrays: dict[str, Any], tree: Any, where: Any) -> None:
    """Verify the arrays read for ``index`` against its digests, then write them into
    ``tree`` in place (all or nothing: a mismatch raises before the first write)."""
    entries = index["values"]
    alone = [i for i, e in enumerate(entries) if str(i) in arrays]
    found = dict(zip(alone, _digest.digests([arrays[str(i)] for i in alone]), strict=True))
    flat = {}
    members: dict[str, list[int]] = defaultdict(list)
    for i, entry in enumerate(entries):
        if "buffer" in entry:
            members[entry["buffer"]].append(i)
    for name, group in members.items():
        buffer = np.asarray(arrays[name]).reshape(-1)
        spans = [(entries[i]["offset"], _stored_size(entries[i])) for i in group]
        if any(o < 0 or o + n > buffer.size for o, n in spans):
            raise damaged(where, f"its buffer {name} is shorter than its index says")
        parts = [buffer[o : o + n] for o, n in spans]
        digests = _digest.packed_digests(np.concatenate(parts), [n for _, n in spans])
        for i, part, digest in zip(group, parts, digests, strict=True):
            found[i] = digest
            flat[i] = part
    wrong = [
        format_path(tuple(entries[i]["path"]))
        for i, digest in sorted(found.items())
        if digest != entries[i]["digest"]
    ]
    if wrong:
        raise damaged(
            where,
            f"{len(wrong)} value(s) do not match the digest stored at save time: "
            + ", ".join(wrong),
        )
    values = {}
    for i in found:  # zero-size values hold nothing to write
        entry = entries[i]
        array = arrays[str(i)] if str(i) in arrays else flat[i]
        if "key_impl" in entry:
            array = jax.random.wrap_key_data(
                array.reshape((*entry["shape"], -1)), impl=entry["key_impl"]
            )
        else:
            array = array.reshape(entry["shape"])
        values[tuple(entry["path"])] = array
    _update(tree, State(values))


# Public classes print as `statetree.X` in reprs and tracebacks (re-exported there).
CheckpointError.__module__ = "statetree"
