"""A save that is killed midway. Usage: save_then_hang.py DIR.

Saves a good checkpoint to DIR/step_1, then starts saving DIR/step_2 and stops just
before the commit (every byte written, nothing renamed into place yet), printing
"SAVING step_2" so that tests/test_checkpoint.py can SIGKILL this process right there.
"""

import pathlib
import sys
import time

import jax.numpy as jnp

import statetree as st
from statetree._checkpoint import _files

directory = pathlib.Path(sys.argv[1])
model = st.mutable({"w": st.Param(jnp.arange(6.0)), "step": jnp.array(1)})
st.save(directory / "step_1", model)
print("SAVED step_1", flush=True)

model["w"][...] = -1.0
model["step"][...] = 2


def hang(tmp: pathlib.Path, final: pathlib.Path) -> None:
    print("SAVING step_2", flush=True)
    time.sleep(600)  # killed here


_files._commit = hang
st.save(directory / "step_2", model)
raise SystemExit("the parent should have killed this process")
