"""The one door to orbax-checkpoint, an optional extra.

orbax is imported on the first ``save``, ``restore`` or ``CheckpointManager``, never by
``import statetree``; a missing install is an ImportError that says what to install.
orbax's own failures while reading a checkpoint become statetree errors here
(``read``): a file that cannot be read is a damaged checkpoint.
"""

from collections.abc import Callable
from typing import Any

from ._failures import damaged

__all__ = ["orbax", "checkpointer", "read", "read_arrays"]


def orbax() -> Any:
    """The ``orbax.checkpoint`` module, or an ImportError naming the extra to install."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise ImportError(
            "statetree checkpoints are written with orbax-checkpoint, an optional extra "
            "that is not installed. Install it with: pip install 'statetree[checkpoint]' "
            f"(or pip install orbax-checkpoint). The import failed with: {e}"
        ) from e
    return ocp


def checkpointer(ocp: Any) -> Any:
    """A synchronous orbax checkpointer: when ``save`` returns, the values are on disk."""
    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def read(what: str, where: Any, reading: Callable[[], Any]) -> Any:
    """``reading()`` (an orbax read of ``what`` from the checkpoint at ``where``); any
    failure to read it (a missing or damaged file) is a CheckpointError naming the
    checkpoint."""
    try:
        return reading()
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        raise damaged(where, f"orbax cannot read its {what} ({type(e).__name__}: {reason})") from e


def read_arrays(ocp: Any, directory: Any, targets: dict[str, Any], where: Any) -> Any:
    """The arrays ``targets`` names (any subset of those saved) from the orbax
    checkpoint in ``directory``: each into the layout of its target (a
    ``jax.ShapeDtypeStruct`` with a sharding, or a NumPy array for a host buffer)."""
    handler = ocp.PyTreeCheckpointHandler()
    args = ocp.args.PyTreeRestore(
        item=targets,
        restore_args=ocp.checkpoint_utils.construct_restore_args(targets),
        partial_restore=True,
    )
    return read("arrays", where, lambda: ocp.Checkpointer(handler).restore(directory, args=args))
