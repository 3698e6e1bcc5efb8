"""Every 8-device check in one process (JAX's start-up and imports paid once).

Usage: eight_devices.py DIR. Runs each script below as ``__main__`` in turn, in this
process (8 CPU devices, statetree under typeguard: tests/_subprocess.py). Each section's
output is framed by ``=== <name>`` and ``=== <name>: passed`` (or ``: FAILED`` after
its traceback), and one failing section does not stop the others: the tests that read
this output (the ``eight_devices`` fixture in tests/conftest.py) report each one apart.
"""

import pathlib
import runpy
import sys
import traceback

HERE = pathlib.Path(__file__).resolve().parent
DOCS = HERE.parents[1] / "docs"
directory = pathlib.Path(sys.argv[1])

# name -> (script, its arguments). The checkpoint script goes first: it checks that
# importing statetree imports no orbax, which a later page's st.save would.
SECTIONS = {
    "checkpoint layouts": ("checkpoint_layouts.py", [str(directory)]),
    "sharding checks": ("sharding_checks.py", []),
    "sharding.md": ("run_page.py", [str(DOCS / "sharding.md")]),
    "packed shardings": ("packed_shardings.py", []),
}

failed = []
for name, (script, args) in SECTIONS.items():
    print(f"=== {name}", flush=True)
    sys.argv = [str(HERE / script), *args]
    try:
        runpy.run_path(str(HERE / script), run_name="__main__")
    except BaseException:  # reported, and the next section still runs
        traceback.print_exc(file=sys.stdout)
        print(f"=== {name}: FAILED", flush=True)
        failed.append(name)
    else:
        print(f"=== {name}: passed", flush=True)
sys.exit(1 if failed else 0)
