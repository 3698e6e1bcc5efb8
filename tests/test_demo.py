"""`make demo` keeps working: the demo runs, its loss falls, sharing and aliasing show."""

import contextlib
import io
import pathlib
import re
import runpy

DEMO = pathlib.Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def test_demo_trains_in_place_and_shows_split_merge_and_aliasing() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(DEMO), run_name="__main__")
    text = out.getvalue()
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", text)]
    assert len(losses) == 5 and losses[-1] < 0.1 * losses[0], text
    assert re.search(r"plain\s+16 buffers", text), text
    assert re.search(r"packed\s+2 buffers", text), text
    assert re.search(r"one tree\s+1 buffer ", text), text
    assert "encoder and decoder share storage again: True" in text
    assert "<-> ['encoder']['kernel']" in text
