"""Checkpoints: ``st.save`` / ``st.restore`` of one directory, and
``st.CheckpointManager`` for the numbered steps of a training job, on orbax-checkpoint.

Start with README.md beside this file: what a checkpoint promises, and the map of one
``st.save`` -> ``st.restore``. The rest of statetree uses only the names below.
"""

from ._failures import CheckpointError as CheckpointError
from ._failures import PeerError as PeerError
from ._files import restore as restore
from ._files import save as save
from ._manager import CheckpointManager as CheckpointManager
