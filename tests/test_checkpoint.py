"""st.save / st.restore: in place, bit-exact, structure-checked, crash-safe.

Multi-device layouts run in one subprocess (tests/multidevice/checkpoint_layouts.py);
the killed save in another (tests/multidevice/save_then_hang.py).
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _subprocess import ROOT, SCRIPTS, child_command, child_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_h

import statetree as st
from statetree._checkpoint import _digest, _files


def make_tree(seed: int = 0) -> dict:
    """One of every dtype the brief names, a shared Variable, a raw Ref, a static."""
    r = np.random.default_rng(seed)
    stat = st.BatchStat(jnp.asarray(r.normal(size=5), jnp.bfloat16))
    return {
        "params": [st.Param(jnp.asarray(r.normal(size=(3, 4)), jnp.float32), tag="w")],
        "stat": stat,
        "stat_again": stat,
        "int8": jnp.asarray(r.integers(-128, 128, size=6), jnp.int8),
        "raw_key": jax.random.key_data(jax.random.key(seed)),
        "keys": st.Cache(jax.random.split(jax.random.key(seed), 3)),
        "ref": jax.new_ref(jnp.arange(3) + seed),
        "activation": "gelu",
    }


def raw_bytes(tree: dict) -> dict:
    out = {}
    for path, value in st.state(tree).items():
        array = value.value if isinstance(value, st.Variable) else value[...]
        if jnp.issubdtype(array.dtype, jax.dtypes.prng_key):
            array = jax.random.key_data(array)
        out[path] = (str(array.dtype), np.asarray(array).tobytes())
    return out


def test_restore_is_in_place_bit_exact_and_keeps_sharing(tmp_path: pathlib.Path) -> None:
    saved = st.mutable(make_tree(0))
    st.save(tmp_path / "ckpt", saved)
    live = st.mutable(make_tree(1))
    objects = {path: id(v) for path, v in st.state(live).items()}
    assert raw_bytes(live) != raw_bytes(saved)
    st.restore(tmp_path / "ckpt", live)
    assert raw_bytes(live) == raw_bytes(saved)
    assert {path: id(v) for path, v in st.state(live).items()} == objects
    assert live["stat"] is live["stat_again"]
    assert live["keys"].dtype == saved["keys"].dtype  # typed keys come back typed
    assert live["params"][0].metadata == {"tag": "w"}
    live["stat_again"][...] = 3.0  # still one Variable
    assert float(live["stat"][0]) == 3.0


def test_a_saved_state_restores_into_a_state(tmp_path: pathlib.Path) -> None:
    model = st.mutable(make_tree(0))
    st.save(tmp_path / "params", st.state(model, st.Param))
    before = np.asarray(model["params"][0].value)
    model["params"][0][...] = 0.0
    st.restore(tmp_path / "params", st.state(model, st.Param))
    np.testing.assert_array_equal(np.asarray(model["params"][0].value), before)


def test_restore_names_every_mismatch_and_changes_nothing(tmp_path: pathlib.Path) -> None:
    st.save(tmp_path / "ckpt", st.mutable(make_tree(0)))
    other = make_tree(1)
    other["params"].append(st.Param(jnp.ones(2)))  # extra in the tree
    del other["int8"]  # missing from the tree
    other["stat_again"] = st.BatchStat(jnp.zeros(5, jnp.bfloat16))  # no longer shared
    other["keys"] = st.Param(other["keys"].value)  # another kind
    other["raw_key"] = other["raw_key"].astype(jnp.int32)  # another dtype
    other = st.mutable(other)
    other["frozen"] = st.Variable(jnp.ones(()), mutable=False)
    st.save(tmp_path / "with_frozen", {**make_tree(0), "frozen": jnp.ones(())})
    before = raw_bytes(other)
    with pytest.raises(st.StructureError, match="nothing was restored") as info:
        st.restore(tmp_path / "ckpt", other)
    message = str(info.value)
    for expected in [
        "['params'][1]: in the tree, not in the checkpoint",
        "['int8']: in the checkpoint, not in the tree",
        "['keys']: checkpoint has a Cache, tree a Param",
        "['raw_key']: checkpoint has uint32[2], tree int32[2]",
        "['stat'], ['stat_again']: share one value in the checkpoint only",
    ]:
        assert expected in message
    assert raw_bytes(other) == before
    with pytest.raises(st.StructureError, match=r"\['frozen'\]: the tree holds a frozen"):
        st.restore(
            tmp_path / "with_frozen", st.mutable(make_tree(0)) | {"frozen": other["frozen"]}
        )


def test_save_refuses_to_replace_unless_asked(tmp_path: pathlib.Path) -> None:
    model = st.mutable({"w": jnp.zeros(2)})
    st.save(tmp_path / "ckpt", model)
    with pytest.raises(st.CheckpointError, match=r"already exists.*overwrite=True"):
        st.save(tmp_path / "ckpt", model)
    model["w"][...] = 5.0
    st.save(tmp_path / "ckpt", model, overwrite=True)
    model["w"][...] = 0.0
    st.restore(tmp_path / "ckpt", model)
    assert model["w"].value.tolist() == [5.0, 5.0]
    assert os.listdir(tmp_path) == ["ckpt"]  # no working directories left behind


def test_missing_and_incomplete_checkpoints_are_refused(tmp_path: pathlib.Path) -> None:
    model = st.mutable({"w": jnp.zeros(2)})
    with pytest.raises(st.CheckpointError, match=r"no checkpoint at .*nowhere"):
        st.restore(tmp_path / "nowhere", model)
    (tmp_path / "partial" / "arrays").mkdir(parents=True)
    with pytest.raises(st.CheckpointError, match="not a complete statetree checkpoint"):
        st.restore(tmp_path / "partial", model)
    (tmp_path / "partial" / _files.INDEX).write_text('{"format": "other"}')
    with pytest.raises(st.CheckpointError, match="not a statetree index"):
        st.restore(tmp_path / "partial", model)


def test_a_failed_save_leaves_nothing(tmp_path: pathlib.Path, monkeypatch) -> None:
    model = st.mutable({"w": jnp.zeros(2)})

    def fail(tmp: pathlib.Path, final: pathlib.Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_files, "_commit", fail)
    with pytest.raises(OSError, match="disk full"):
        st.save(tmp_path / "ckpt", model)
    assert os.listdir(tmp_path) == []


def test_an_interrupted_overwrite_keeps_the_previous_checkpoint(
    tmp_path: pathlib.Path, monkeypatch
) -> None:
    model = st.mutable({"w": jnp.ones(2)})
    st.save(tmp_path / "ckpt", model)
    renames = []
    real_rename = os.rename

    def rename_once(src: str, dst: str) -> None:  # the crash falls between two renames
        if pathlib.Path(dst).parent == tmp_path:  # statetree's renames, not orbax's
            if renames:
                raise KeyboardInterrupt
            renames.append(dst)
        real_rename(src, dst)

    monkeypatch.setattr(_files.os, "rename", rename_once)
    with pytest.raises(KeyboardInterrupt):
        st.save(tmp_path / "ckpt", model, overwrite=True)
    monkeypatch.undo()
    with pytest.raises(st.CheckpointError, match="previous checkpoint is complete at"):
        st.restore(tmp_path / "ckpt", model)
    os.rename(renames[0], tmp_path / "ckpt")
    model["w"][...] = 0.0
    st.restore(tmp_path / "ckpt", model)
    assert model["w"].value.tolist() == [1.0, 1.0]


def test_save_refuses_traced_values_and_odd_keys(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TypeError, match=r"inside jax.jit"):
        jax.jit(lambda x: st.save(tmp_path / "c", {"x": x}))(jnp.ones(2))
    with pytest.raises(TypeError, match=r"keys other than str and int"):
        st.save(tmp_path / "c", {("a", "b"): jnp.ones(2)})
    assert not (tmp_path / "c").exists()


def test_missing_orbax_names_the_extra(tmp_path: pathlib.Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'statetree\[checkpoint\]'"):
        st.save(tmp_path / "c", {"x": jnp.ones(2)})
    with pytest.raises(ImportError, match="optional extra"):
        st.restore(tmp_path / "c", {"x": jnp.ones(2)})


def test_restore_across_device_layouts(eight_devices: Any) -> None:
    # tests/multidevice/checkpoint_layouts.py, in the session's 8-device subprocess.
    out = eight_devices.section("checkpoint layouts")
    assert "restored onto 4x2 mesh, other axes" in out and "restored onto one device" in out
    # The 8-device checkpoint restores in this one-device process too.
    tmp_path = eight_devices.directory
    expected = np.load(tmp_path / "expected.npz")
    target = st.mutable(
        {
            "params": {"w": st.Param(jnp.zeros((8, 8)))},
            "stat": (stat := st.BatchStat(jnp.zeros(16, jnp.bfloat16))),
            "same_stat": stat,
            "int8": jnp.zeros((8, 4), jnp.int8),
            "raw_key": jnp.zeros((8, 2), jnp.uint32),
            "keys": st.Cache(jax.random.split(jax.random.key(5), 8)),
        }
    )
    st.restore(tmp_path / "eight", target)
    for path, value in st.state(target).items():
        array = value.value
        if jnp.issubdtype(array.dtype, jax.dtypes.prng_key):
            array = jax.random.key_data(array)
        want = expected[" ".join(map(str, path))]
        assert np.asarray(array).tobytes() == want.tobytes(), path


def test_a_killed_save_never_restores(tmp_path: pathlib.Path) -> None:
    child = subprocess.Popen(
        child_command(SCRIPTS / "save_then_hang.py", str(tmp_path)),
        env=child_env(1),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            if line.startswith("SAVING step_2"):
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "".join(lines)
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert "step_1" in leftovers and "step_2" not in leftovers, leftovers
    model = st.mutable({"w": st.Param(jnp.zeros(6)), "step": jnp.array(0)})
    with pytest.raises(st.CheckpointError, match=r"no checkpoint at .*step_2.*unfinished save"):
        st.restore(tmp_path / "step_2", model)
    (working,) = [p for p in tmp_path.iterdir() if p.name.startswith(".step_2")]
    with pytest.raises(st.CheckpointError, match="working directory of a save"):
        st.restore(working, model)
    st.restore(tmp_path / "step_1", model)  # the previous good checkpoint still restores
    assert model["w"].value.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert int(model["step"].value) == 1


# ---------------------------------------------------------------- checked checkpoints
def small_tree(scale: float) -> dict:
    """Small values (stored in one buffer per dtype) and one stored on its own."""
    return st.mutable(
        {
            "w": st.Param(jnp.arange(12.0).reshape(3, 4) * scale),
            "b": st.BatchStat(jnp.arange(5, dtype=jnp.bfloat16) * scale),
            "n": jnp.arange(4, dtype=jnp.int8),
            "big": st.Param(jnp.arange(128 * 160.0).reshape(128, 160) * scale),  # 80 KiB
        }
    )


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One checkpoint of small_tree(1.0), and one of small_tree(2.0) beside it."""
    directory = tmp_path_factory.mktemp("intact")
    st.save(directory / "ckpt", small_tree(1.0))
    st.save(directory / "other", small_tree(2.0))
    return directory / "ckpt"


def _edit_index(ckpt: pathlib.Path, change) -> None:
    index = json.loads((ckpt / _files.INDEX).read_text())
    change(index)
    (ckpt / _files.INDEX).write_text(json.dumps(index))


def _rechecksum(index: dict) -> None:
    body = {"values": index["values"], "aliases": index["aliases"]}
    index["checksum"] = _digest.index_checksum(body)


def _truncate(file: pathlib.Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _swap_arrays(ckpt: pathlib.Path) -> None:  # same structure, another save's values
    shutil.rmtree(ckpt / "arrays")
    shutil.copytree(ckpt.parent.parent / "other" / "arrays", ckpt / "arrays")


def _forge_value(index: dict) -> None:  # an entry edited and the checksum recomputed
    index["values"][0]["digest"] = "xsum64:0000000000000001"
    _rechecksum(index)


def _drop_shape(index: dict) -> None:
    del index["values"][1]["shape"]
    _rechecksum(index)


CORRUPTIONS = {
    "index truncated": (lambda c: _truncate(c / "statetree.json"), "cannot be read"),
    "index not JSON": (lambda c: (c / "statetree.json").write_text("{nope"), "cannot be read"),
    "index not a dict": (lambda c: (c / "statetree.json").write_text("[]"), "not a statetree"),
    "index missing": (lambda c: (c / "statetree.json").unlink(), "cannot be read"),
    "index edited": (
        lambda c: _edit_index(c, lambda i: i["values"][0].update(dtype="float16")),
        "does not match the checksum",
    ),
    "index without checksum": (
        lambda c: _edit_index(c, lambda i: i.pop("checksum")),
        "does not match the checksum",
    ),
    "index wrong structure": (
        lambda c: _edit_index(c, _drop_shape),
        "does not have the structure",
    ),
    "digest forged": (
        lambda c: _edit_index(c, _forge_value),
        r"digest stored at save time: \['b'\]\.",
    ),
    "arrays missing": (lambda c: shutil.rmtree(c / "arrays"), "orbax cannot read"),
    "orbax metadata garbled": (
        lambda c: (c / "arrays" / "_METADATA").write_text("{]"),
        "damaged",
    ),
    "manifest truncated": (lambda c: _truncate(c / "arrays" / "manifest.ocdbt"), "damaged"),
    "data files missing": (
        lambda c: [f.unlink() for f in (c / "arrays").rglob("d/*")],
        "damaged",
    ),
    "arrays of another save": (_swap_arrays, r"do not match the digest.*\['w'\]"),
}


# orbax's readers leave tensorstore callbacks behind when a file cannot be read.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_damaged_checkpoint_is_a_checkpoint_error(
    name: str, intact: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    damage, message = CORRUPTIONS[name]
    ckpt = tmp_path / "copy" / "ckpt"
    shutil.copytree(intact, ckpt)
    shutil.copytree(intact.parent / "other", tmp_path / "other")
    damage(ckpt)
    live = small_tree(0.5)
    before = raw_bytes(live)
    with pytest.raises(st.CheckpointError, match=message):
        st.restore(ckpt, live)
    assert raw_bytes(live) == before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st_h.data())
def test_a_flipped_bit_anywhere_never_restores_silently(
    data: st_h.DataObject, intact: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Flip one bit of any file of the checkpoint: the restore either raises
    CheckpointError, leaving the tree as it was, or restores the saved values exactly
    (a bit no reader looks at)."""
    ckpt = tmp_path_factory.mktemp("flip") / "ckpt"
    shutil.copytree(intact, ckpt)
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.stat().st_size)
    file = data.draw(st_h.sampled_from(files), label="file")
    raw = bytearray(file.read_bytes())
    bit = data.draw(st_h.integers(0, len(raw) * 8 - 1), label="bit")
    raw[bit // 8] ^= 1 << (bit % 8)
    file.write_bytes(bytes(raw))
    live = small_tree(0.5)
    before = raw_bytes(live)
    try:
        st.restore(ckpt, live)
    except st.CheckpointError:
        assert raw_bytes(live) == before
    else:
        assert raw_bytes(live) == raw_bytes(small_tree(1.0))


def test_zero_size_values_save_and_restore(tmp_path: pathlib.Path) -> None:
    tree = {
        "empty": st.Param(jnp.zeros((0, 3))),
        "keys": st.Cache(jax.random.split(jax.random.key(0), 0)),
        "w": jnp.ones(2),
    }
    st.save(tmp_path / "c", st.mutable(tree))
    live = st.mutable(
        {
            "empty": st.Param(jnp.zeros((0, 3))),
            "keys": st.Cache(jax.random.split(jax.random.key(1), 0)),
            "w": jnp.zeros(2),
        }
    )
    st.restore(tmp_path / "c", live)
    assert live["empty"].shape == (0, 3) and live["w"].value.tolist() == [1.0, 1.0]
    st.save(tmp_path / "only_empty", st.mutable({"e": jnp.zeros(0, jnp.int8)}))
    st.restore(tmp_path / "only_empty", st.mutable({"e": jnp.zeros(0, jnp.int8)}))
    with pytest.raises(st.StructureError, match=r"checkpoint has int8\[0\], tree int8\[1\]"):
        st.restore(tmp_path / "only_empty", st.mutable({"e": jnp.zeros(1, jnp.int8)}))


def test_restore_inside_jit_says_why(tmp_path: pathlib.Path) -> None:
    model = st.mutable({"w": jnp.ones(2)})
    st.save(tmp_path / "c", model)

    @jax.jit
    def as_argument(model):
        st.restore(tmp_path / "c", model)

    @jax.jit
    def closed_over(x):
        st.restore(tmp_path / "c", model)
        return x

    for call in (lambda: as_argument(model), lambda: closed_over(1.0)):
        with pytest.raises(TypeError, match=r"restore: called inside jax.jit.*outside"):
            call()
    assert model["w"].value.tolist() == [1.0, 1.0]


def test_save_and_restore_flatten_the_live_tree_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import statetree._graph as graph

    calls = []
    real = graph.flatten

    def counting(tree: Any) -> Any:
        calls.append(tree)
        return real(tree)

    tree = st.mutable(make_tree(0))
    monkeypatch.setattr(graph, "flatten", counting)
    st.save(tmp_path / "c", tree)
    assert sum(t is tree for t in calls) == 1
    calls.clear()
    st.restore(tmp_path / "c", tree)
    assert sum(t is tree for t in calls) == 1
