"""The checkpoint index: what ``save`` records about a tree's values, and its format.

The index (JSON) lists each distinct value once: its path, kind, dtype, shape, the PRNG
implementation of typed keys (stored as their raw ``uint32`` key data), its digest
(``_digest``), and where orbax holds it; then the groups of paths that share one
Variable; then a checksum of all that. orbax holds each large or sharded value as an
array of its own (each device writes its own shards) and the small unsharded values
laid end to end in one host buffer per dtype (``small:<dtype>``), so a tree of 100k
small Variables is a handful of orbax arrays, not 100k.

``encode`` builds an index and the arrays orbax stores; ``check_index`` accepts an
index read back only when it is intact (format, checksum, structure). ``Live`` is the
live tree, flattened once for everything a save or a restore asks of it.
"""

import math
from collections import defaultdict
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _graph
from .._aliases import alias_groups
from .._errors import format_path
from .._graph import Path
from .._variables import Variable
from .._write import storage as _storage
from . import _digest
from ._failures import CheckpointError, damaged, refuse_traced

__all__ = ["FORMAT", "Live", "kind", "encode", "check_index", "stored_size"]

FORMAT = "statetree-checkpoint/2"
SMALL = 1 << 16  # bytes: unsharded values up to this size share one buffer per dtype


class Live(NamedTuple):
    """A live tree flattened once: its distinct values (Variables, Refs, arrays) and
    the GraphDef that knows their paths and sharing (a State is a tree: its own values)."""

    graphdef: _graph.GraphDef
    values: list[Any]

    @classmethod
    def of(cls, tree: Any) -> "Live":
        graphdef, values = _graph.flatten(tree)
        return cls(graphdef, values)

    def items(self) -> list[tuple[Path, Any]]:
        """``(path, value)`` of each distinct value (a shared one at its first path)."""
        return list(zip(self.graphdef.paths(), self.values, strict=True))

    def aliases(self) -> list[tuple[Path, ...]]:
        """The groups of paths that share one value (``st.find_aliases``)."""
        return alias_groups(self.graphdef, self.values)


def kind(value: Any) -> str:
    """What the index records as a value's kind: its Variable class, Ref or array."""
    if isinstance(value, Variable):
        return type(value).__name__
    return "Ref" if _storage.is_storage(value) else "array"


def _entry(path: Path, value: Any) -> tuple[dict[str, Any], Any]:
    """The index entry of one value, and the array orbax stores for it."""
    if not all(type(k) in (str, int) for k in path):
        raise TypeError(
            f"save: the path {format_path(path)} has keys other than str and int "
            f"({path!r}), which the checkpoint index cannot record. Hold the value "
            "under dict keys, attributes or sequence indices."
        )
    array = value.value if isinstance(value, Variable) else _storage.read(value)
    refuse_traced("save", path, array)
    entry = {
        "path": list(path),
        "kind": kind(value),
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


def encode(live: Live) -> tuple[dict[str, Any], dict[str, Any]]:
    """The index of a live tree's state (paths, kinds, dtypes, shapes, digests,
    sharing) and the arrays orbax stores: each large or sharded value under its
    position in the index, the small ones laid end to end in one host buffer per dtype.
    Zero-size values are recorded in the index only (orbax refuses them; they hold no
    data). Every process of a multi-process job calls it (the digests of sharded values
    are summed across processes).

    The arrays are the save's own snapshot: reading a mutable Variable gives a new
    buffer, which the next in-place step (donating the Variable's buffer) cannot touch.
    """
    entries, arrays = [], []
    for p, value in live.items():
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
    body = {"values": entries, "aliases": [list(map(list, g)) for g in live.aliases()]}
    index = {"format": FORMAT, **body, "checksum": _digest.index_checksum(body)}
    return index, stored


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


def stored_size(entry: dict[str, Any]) -> int:
    """How many elements orbax holds for ``entry`` (typed keys: their key data)."""
    return math.prod(entry.get("data_shape", entry["shape"]))
