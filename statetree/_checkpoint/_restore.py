"""The one restore routine: check everything, then write in place, all or nothing.

``st.restore`` (one directory) and ``CheckpointManager.restore`` (one step of a
manager) differ only in where the index and the arrays come from; both hand their two
readers to ``restore_into``, which

1. refuses a call inside ``jax.jit``;
2. reads the index and checks it is intact (``_index.check_index``);
3. flattens the live tree once (``_index.Live``) and compares it with the index: every
   path, kind, shape, dtype, the sharing, and that each target is writable in place
   (``fit``: one StructureError naming every difference, before a byte is read);
4. reads the arrays, each in the layout of the Variable that receives it, and checks
   every value against the digest stored at save time (``_verify``);
5. reads them again and writes them into the live tree with ``st.update``'s write path.

Any failure raises before step 5, so the user's tree is unchanged. Steps 4 and 5 read
the arrays in **batches** of at most the largest value's size or ``BATCH`` (64 MiB),
whichever is more (``_batches``), each dropped before the next is read: a restore needs
the live model plus about one batch, never a second copy of the whole tree. The price
is reading the files twice (the second time mostly from the OS's page cache).
"""

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .._errors import Misfit, StructureError, format_path, misfit_report
from .._split import write
from .._state import State
from .._variables import Variable
from . import _digest
from ._failures import damaged, refuse_inside_jit
from ._index import Live, check_index, kind, stored_size

__all__ = ["restore_into", "BATCH"]

BATCH = 64 << 20  # bytes: a batch read holds at most this much, or the largest value


def restore_into(
    tree: Any,
    where: Any,
    read_index: Callable[[], Any],
    read_arrays: Callable[[dict[str, Any]], Any],
) -> None:
    """Restore into ``tree`` in place the checkpoint at ``where`` whose index
    ``read_index()`` returns and whose arrays ``read_arrays(targets)`` reads (``targets``:
    what to read for each stored array: a ``jax.ShapeDtypeStruct`` in the live value's
    layout, or a NumPy array for a shared buffer of small values)."""
    refuse_inside_jit("restore")
    index = check_index(read_index(), where)
    live = Live.of(tree)
    batches = _batches(_fit(index, live, where))
    _verify(index, batches, read_arrays, where)
    for batch in batches:  # every value is intact: write, one batch at a time
        values = _values(index, read_arrays(batch))
        write(live.graphdef, live.values, [State(values)], exact=True)


def _nbytes(target: Any) -> int:
    return int(np.prod(target.shape, dtype=np.int64)) * np.dtype(target.dtype).itemsize


def _batches(targets: dict[str, Any]) -> list[dict[str, Any]]:
    """``targets`` in consecutive groups of at most the largest one's size, or of
    BATCH bytes when that is more (each orbax read costs tens of milliseconds of its
    own: a model of many small values is read in a few large batches)."""
    if not targets:
        return []
    budget = max(BATCH, *map(_nbytes, targets.values()))
    batches: list[dict[str, Any]] = [{}]
    held = 0
    for key, target in targets.items():
        if batches[-1] and held + _nbytes(target) > budget:
            batches.append({})
            held = 0
        batches[-1][key] = target
        held += _nbytes(target)
    return batches


def _problems(index: dict[str, Any], live: Live) -> list[Misfit]:
    """Every way the checkpoint and the live tree disagree (empty when they fit)."""
    saved = {tuple(e["path"]): e for e in index["values"]}
    problems = []
    items = live.items()
    for p, value in items:
        entry = saved.get(p)
        if entry is None:
            problems.append(Misfit(p, "in the tree, not in the checkpoint"))
            continue
        have_kind = kind(value)
        if entry["kind"] != have_kind:
            problems.append(Misfit(p, f"checkpoint has a {entry['kind']}, tree a {have_kind}"))
        want = (entry["dtype"], tuple(entry["shape"]))
        have = (str(value.dtype), tuple(value.shape))
        if want != have:
            problems.append(
                Misfit(
                    p, f"checkpoint has {want[0]}{list(want[1])}, tree {have[0]}{list(have[1])}"
                )
            )
        if not (isinstance(value, Variable) and value.mutable) and have_kind != "Ref":
            problems.append(
                Misfit(
                    p,
                    "the tree holds a frozen value here, which cannot be restored in place; "
                    "make the tree mutable first: tree = st.mutable(tree)",
                )
            )
    for p in saved.keys() - {p for p, _ in items}:
        problems.append(Misfit(p, "in the checkpoint, not in the tree"))
    saved_groups = {tuple(map(tuple, g)) for g in index["aliases"]}
    live_groups = set(live.aliases())
    for group in sorted(saved_groups ^ live_groups, key=repr):
        where = "checkpoint" if group in saved_groups else "tree"
        detail = f"share one value in the {where} only"
        problems.append(Misfit(group[0], detail, also=group[1:], sep=", "))
    return problems


def _fit(index: dict[str, Any], live: Live, where: Any) -> dict[str, Any]:
    """What orbax should read for each stored value of ``index`` into the live tree: the
    live value's shape, dtype and layout. Raises StructureError (naming every
    difference, nothing read) when the tree does not fit the checkpoint."""
    values = dict(live.items())  # shapes, dtypes, layouts: nothing is read
    problems = _problems(index, live)
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
            sizes[name] = max(sizes[name], entry["offset"] + stored_size(entry))
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
            targets[str(i)] = current
    for name, size in sizes.items():  # each shared buffer once, at its full size
        targets[name] = np.zeros(size, np.dtype(dtypes[name]))
    return targets


def _verify(
    index: dict[str, Any],
    batches: list[dict[str, Any]],
    read_arrays: Callable[[dict[str, Any]], Any],
    where: Any,
) -> None:
    """Read every batch and check each value against the digest stored at save time
    (a mismatch raises: nothing is written). Values held whole in a shared buffer are
    checked here; the shares of the others are added across processes at the end."""
    entries = index["values"]
    found: dict[int, str] = {}
    alone: list[int] = []
    shares: list[int] = []
    for batch in batches:
        arrays = read_arrays(batch)
        for key, array in arrays.items():
            if not key.startswith("small:"):
                alone.append(int(key))
                shares.extend(_digest.shares([array]))
                continue
            group = [i for i, e in enumerate(entries) if e.get("buffer") == key]
            parts = _parts(index, key, np.asarray(array).reshape(-1), group, where)
            digests = _digest.packed_digests(np.concatenate(parts), [p.size for p in parts])
            found.update(zip(group, digests, strict=True))
        del arrays
    found.update(zip(alone, _digest.combine(shares), strict=True))
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


def _parts(
    index: dict[str, Any], name: str, buffer: np.ndarray, group: list[int], where: Any
) -> list[np.ndarray]:
    """The values of the shared buffer ``name``, each a flat slice of ``buffer``."""
    entries = index["values"]
    spans = [(entries[i]["offset"], stored_size(entries[i])) for i in group]
    if any(o < 0 or o + n > buffer.size for o, n in spans):
        raise damaged(where, f"its buffer {name} is shorter than its index says")
    return [buffer[o : o + n] for o, n in spans]


def _values(index: dict[str, Any], arrays: Any) -> dict[Any, Any]:
    """The values held by ``arrays`` (a batch read), keyed by path, in their shape."""
    entries = index["values"]
    flat: dict[int, Any] = {}
    for key, array in arrays.items():
        if key.startswith("small:"):
            group = [i for i, e in enumerate(entries) if e.get("buffer") == key]
            parts = _parts(index, key, np.asarray(array).reshape(-1), group, None)
            flat.update(zip(group, parts, strict=True))
        else:
            flat[int(key)] = array
    values = {}
    for i, array in flat.items():
        entry = entries[i]
        if "key_impl" in entry:
            array = jax.random.wrap_key_data(
                array.reshape((*entry["shape"], -1)), impl=entry["key_impl"]
            )
        else:
            array = array.reshape(entry["shape"])
        values[tuple(entry["path"])] = array
    return values
