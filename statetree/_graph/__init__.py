"""The engine room: the one traversal behind split, merge, state, update, mutable,
freeze, unbox and find_aliases; the GraphDef it produces; the registry of node classes.

Start with README.md beside this file: the value-index model and the map of one
``st.split`` call. The rest of statetree uses only the names below.
"""

from ._flatten import flatten as flatten
from ._flatten import unflatten as unflatten
from ._graphdef import GraphDef as GraphDef
from ._graphdef import Path as Path
from ._graphdef import PathKey as PathKey
from ._nodes import register_internal_node as register_internal_node
from ._nodes import register_node as register_node
