"""statetree: state in JAX pytrees, on JAX's native mutable array references."""

from ._aliases import check_aliases as check_aliases
from ._aliases import find_aliases as find_aliases
from ._checkpoint import CheckpointError as CheckpointError
from ._checkpoint import restore as restore
from ._checkpoint import save as save
from ._config import use_mutable_arrays as use_mutable_arrays
from ._convert import freeze as freeze
from ._convert import mutable as mutable
from ._convert import unbox as unbox
from ._errors import AliasError as AliasError
from ._errors import FrozenVariableError as FrozenVariableError
from ._errors import RefValueError as RefValueError
from ._errors import StateTreeError as StateTreeError
from ._errors import StructureError as StructureError
from ._errors import UnreadableValueError as UnreadableValueError
from ._errors import VariableIndexError as VariableIndexError
from ._errors import VariableWriteError as VariableWriteError
from ._errors import keystr as keystr
from ._filters import All as All
from ._filters import Any as Any
from ._filters import Not as Not
from ._filters import PathContains as PathContains
from ._graph import GraphDef as GraphDef
from ._graph import register_node as register_node
from ._manager import CheckpointManager as CheckpointManager
from ._optimizer import Optimizer as Optimizer
from ._packed import Packed as Packed
from ._split import merge as merge
from ._split import split as split
from ._split import state as state
from ._split import update as update
from ._state import State as State
from ._variables import BatchStat as BatchStat
from ._variables import Cache as Cache
from ._variables import OptState as OptState
from ._variables import Param as Param
from ._variables import Variable as Variable
from ._variables import is_mutable as is_mutable

__version__ = "0.1.0"
