"""Checkpoint digests: one number per value, the same for any layout and process count.

A value's digest must not depend on how the value was laid out when it was saved: a
checkpoint written by N processes (each holding some shards) is verified by M processes
holding other shards. So the digest is a **sum of position-keyed element hashes**: every
machine word of the array is hashed together with its global position (splitmix64), and
the hashes are added modulo 2**64. A sum does not care about order or grouping, so

- each process hashes only the shards it holds (one replica of each: ``replica_id`` 0),
- the per-process partial sums are added across processes (``_processes.sum_across``),

and the result is the same for any sharding and any number of processes. One flipped
bit changes one word's hash completely; a swapped pair of elements changes two; so a
damaged value is caught except with probability about 2**-64. (It detects damage, it is
not a cryptographic signature.)

Everything here runs on the host with NumPy, one block of about a million words at a
time; the values are read from the devices once.
"""

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _processes

__all__ = ["digests", "packed_digests", "index_checksum"]

_BLOCK = 1 << 17  # words hashed per NumPy step (bounds the temporary memory: ~1 MiB each)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SALT = np.uint64(0x5851F42D4C957F2D)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_WORDS = {8: np.uint64, 4: np.uint32, 2: np.uint16, 1: np.uint8}


def _hash(words: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Each word hashed with its position (uint64 in, uint64 out, wrapping arithmetic).
    For a fixed position the map is a bijection (xor, odd multiplications, xor-shifts),
    so changing any one word always changes the sum."""
    x = words ^ (positions * _GOLDEN + _SALT)
    x *= _M1
    x ^= x >> np.uint64(31)
    x *= _M2
    x ^= x >> np.uint64(29)
    return x


def _positions(
    starts: tuple[int, ...], block: tuple[int, ...], shape: tuple[int, ...]
) -> np.ndarray:
    """The global flat position of each element of the block of size ``block`` at
    ``starts`` in an array of ``shape`` (uint64, flat, in the block's C order)."""
    out = np.zeros((), np.uint64)
    stride = 1
    strides = []
    for n in reversed(shape):
        strides.append(stride)
        stride *= n
    for axis, (start, size) in enumerate(zip(starts, block, strict=True)):
        along = np.arange(start, start + size, dtype=np.uint64) * np.uint64(strides[-1 - axis])
        out = out[..., None] + along.reshape((1,) * axis + (-1,))
    return out.reshape(-1)


def _partial(block: np.ndarray, starts: tuple[int, ...], shape: tuple[int, ...]) -> int:
    """The digest's share of one block (at ``starts``) of an array of ``shape``: its
    words' position-keyed hashes, summed modulo 2**64."""
    if block.size == 0:
        return 0
    itemsize = block.dtype.itemsize
    word = next(w for w in (8, 4, 2, 1) if itemsize % w == 0)
    per = itemsize // word  # words per element (2 for complex128)
    if block.ndim == 0:
        block, starts, shape = block.reshape(1), (0,), (1,)
    rows = max(1, _BLOCK // max(1, (block.size // block.shape[0]) * per))
    total = np.uint64(0)
    for r in range(0, block.shape[0], rows):
        part = np.ascontiguousarray(block[r : r + rows])
        words = part.view(_WORDS[word]).reshape(-1).astype(np.uint64)
        at = (starts[0] + r, *starts[1:])
        position = _positions(at, part.shape, shape).reshape(-1, 1) * np.uint64(per)
        position = (position + np.arange(per, dtype=np.uint64)).reshape(-1)
        with np.errstate(over="ignore"):  # wrapping: the sum is modulo 2**64
            total = total + np.sum(_hash(words, position), dtype=np.uint64)
    return int(total)


def _local(array: Any) -> int:
    """This process's share of ``array``'s digest: one replica of each of its shards."""
    if isinstance(array, np.ndarray):
        return _partial(array, (0,) * array.ndim, array.shape)
    total = 0
    for shard in array.addressable_shards:
        if shard.replica_id == 0:
            starts = tuple(s.indices(n)[0] for s, n in zip(shard.index, array.shape, strict=True))
            total += _partial(np.asarray(shard.data), starts, array.shape)
    return total % (1 << 64)


def digests(arrays: Sequence[Any]) -> list[str]:
    """The digest of each array (NumPy or ``jax.Array``, sharded or not), the same
    whatever the arrays' layouts and however many processes hold them. Every process
    calls it with its view of the same global arrays."""
    return combine(shares(arrays))


def shares(arrays: Sequence[Any]) -> list[int]:
    """This process's share of each array's digest (``combine`` adds the processes')."""
    return [_local(a) for a in arrays]


def combine(shares: Sequence[int]) -> list[str]:
    """The digests whose shares, on every process, are ``shares`` (one meeting of the
    processes for any number of values)."""
    total = _processes.sum_across(np.array(shares, dtype=np.uint64))
    return [_format(int(d)) for d in np.atleast_1d(total)]  # 1-D (typed for checkers)


def packed_digests(buffer: np.ndarray, sizes: Sequence[int]) -> list[str]:
    """The digests of the values laid end to end in the flat host ``buffer`` (``sizes``
    elements each): the same numbers ``digests`` gives for each value on its own, in a
    few NumPy passes for any number of values. No other process is asked: the buffer
    holds whole values."""
    sizes_arr = np.asarray(sizes, dtype=np.int64)
    if buffer.size == 0:
        return [_format(0) for _ in sizes]
    itemsize = buffer.dtype.itemsize
    word = next(w for w in (8, 4, 2, 1) if itemsize % w == 0)
    per = itemsize // word
    words = np.ascontiguousarray(buffer).view(_WORDS[word]).reshape(-1).astype(np.uint64)
    starts = np.concatenate([[0], np.cumsum(sizes_arr)[:-1]])
    elements = np.arange(buffer.size, dtype=np.int64) - np.repeat(starts, sizes_arr)
    position = elements.astype(np.uint64).reshape(-1, 1) * np.uint64(per)
    position = (position + np.arange(per, dtype=np.uint64)).reshape(-1)
    hashed = _hash(words, position)
    sums = np.zeros(len(sizes), np.uint64)
    nonempty = sizes_arr > 0
    sums[nonempty] = np.add.reduceat(hashed, (starts * per)[nonempty], dtype=np.uint64)
    return [_format(int(d)) for d in sums]


def _format(digest: int) -> str:
    return f"xsum64:{digest:016x}"


def index_checksum(body: dict[str, Any]) -> str:
    """sha256 of an index's contents, written canonically (sorted keys, no spaces)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
