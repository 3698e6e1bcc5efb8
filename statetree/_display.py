"""Readable text for Variables in summaries, States and GraphDefs."""

from typing import Any

from ._errors import format_path
from ._variables import Variable, raw_of
from ._write import storage as _storage

__all__ = ["value_summary", "graphdef_repr"]

_MAX_LINES = 40


def value_summary(value: Any) -> str:
    """``Param float32[2,3] mutable``: kind, dtype, shape, form, on one line."""
    if isinstance(value, Variable):
        kind, raw, form = (
            type(value).__name__,
            raw_of(value),
            "mutable" if value.mutable else "frozen",
        )
    elif _storage.is_storage(value):
        kind, raw, form = "Ref", value, "mutable"
    else:
        kind, raw, form = "Array", value, "frozen"
    dtype = getattr(raw, "dtype", None)
    if dtype is None:
        return f"{kind} {raw!r}"
    text = f"{kind} {dtype}[{','.join(map(str, raw.shape))}] {form}"
    sharding = None if _storage.is_traced(raw) else getattr(raw, "sharding", None)
    if sharding is not None and len(getattr(sharding, "device_set", ())) > 1:
        spec = getattr(sharding, "spec", None)
        text += f" sharded{tuple(spec) if spec is not None else ''}"
    return text


def graphdef_repr(graphdef: Any) -> str:
    occurrences = graphdef.occurrences()
    lines = []
    for kind, paths in zip(graphdef.kinds, occurrences, strict=True):
        name = kind.__name__ if kind is not None else "Array/Ref"
        line = f"  {format_path(paths[0])}: {name}"
        if len(paths) > 1:
            line += "  shared with " + ", ".join(format_path(p) for p in paths[1:])
        lines.append(line)
    if len(lines) > _MAX_LINES:
        lines = [*lines[:_MAX_LINES], f"  ... and {len(lines) - _MAX_LINES} more values"]
    nodes = len(graphdef.parts) - 1
    head = f"GraphDef({graphdef.num_values} values" + (f", {nodes} nodes" if nodes else "")
    return head + (":\n" + "\n".join(lines) + "\n)" if lines else ")")
