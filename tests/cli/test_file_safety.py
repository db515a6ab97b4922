"""No command ever writes over the input model or a file it references, and
the result is the same from any working folder (issue: a user's weights
were overwritten). Every case runs from two working folders: the models'
own folder (paths given as bare names) and its parent (paths through the
folder), and asserts the input's bytes, model and data, are unchanged."""

from __future__ import annotations

import importlib
import os
import signal
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from clitools import (
    assert_one_line_error,
    assert_one_line_error_real,
    cli,
    file_bytes,
    quake_nodes,
    run_model,
    run_real,
    wide_model,
)
from onnx import numpy_helper

N = 64  # a 16 KiB weight: external with size_threshold 0


@pytest.fixture(params=["inside", "outside"])
def place(request, tmp_path, monkeypatch):
    """(folder holding the models, function naming a file in it as the command line should)."""
    folder = tmp_path / "models"
    folder.mkdir()
    if request.param == "inside":
        monkeypatch.chdir(folder)
        return folder, lambda name: name
    monkeypatch.chdir(tmp_path)
    return folder, lambda name: f"models/{name}"


def save_external(folder: Path, name: str, location: str) -> tuple[Path, dict, np.ndarray]:
    """The wide model at folder/name with its weight in folder/location; its
    feeds and its output through plain ONNX Runtime."""
    model, feeds = wide_model(N)
    path = folder / name
    # onnx resolves `location` against the working folder when it checks for an existing file.
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        onnx.save(model, name, save_as_external_data=True, location=location, size_threshold=0)
    finally:
        os.chdir(cwd)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    return path, feeds, ref


def save_pointing_at(src: Path, location: str, dest: Path) -> None:
    """A copy of model `src` at `dest` whose external tensors name `location`
    (its data file left where it is: a model copied without its data)."""
    model = onnx.load(str(src), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(model, str(dest))


def locations(path: Path) -> set[str]:
    stored = onnx.load(str(path), load_external_data=False)
    return {e.value for t in stored.graph.initializer for e in t.external_data if e.key == "location"}


def test_output_named_after_the_inputs_data_file(place):
    # a.onnx keeps its weight in b.onnx.data: writing b.onnx must not take that name.
    folder, name = place
    src, feeds, ref = save_external(folder, "a.onnx", "b.onnx.data")
    before = file_bytes(src, folder / "b.onnx.data")
    result = cli("optimize", name("a.onnx"), name("b.onnx"), "--min-elements", "0")
    assert result.exit_code == 0, result.stderr
    assert file_bytes(src, folder / "b.onnx.data") == before
    assert locations(folder / "b.onnx") == {"b.onnx.1.data"}
    np.testing.assert_allclose(run_model(folder / "b.onnx", feeds), ref, atol=3e-3)
    np.testing.assert_allclose(run_model(src, feeds), ref, rtol=0, atol=0)
    # Again over the existing output: the old pair goes, the input's file stays.
    result = cli("optimize", name("a.onnx"), name("b.onnx"), "--min-elements", "0")
    assert result.exit_code == 0, result.stderr
    assert file_bytes(src, folder / "b.onnx.data") == before
    assert sorted(p.name for p in folder.iterdir()) == ["a.onnx", "b.onnx", "b.onnx.2.data", "b.onnx.data"]
    np.testing.assert_allclose(run_model(folder / "b.onnx", feeds), ref, atol=3e-3)


def test_another_models_data_file_is_never_replaced(place):
    # c.onnx (not the input) keeps its weight in out.onnx.data.
    folder, name = place
    src, feeds, ref = save_external(folder, "a.onnx", "a.onnx.data")
    other, other_feeds, other_ref = save_external(folder, "c.onnx", "out.onnx.data")
    before = file_bytes(src, folder / "a.onnx.data", other, folder / "out.onnx.data")
    result = cli("optimize", name("a.onnx"), name("out.onnx"), "--min-elements", "0")
    assert result.exit_code == 0, result.stderr
    assert file_bytes(src, folder / "a.onnx.data", other, folder / "out.onnx.data") == before
    np.testing.assert_allclose(run_model(other, other_feeds), other_ref, rtol=0, atol=0)
    np.testing.assert_allclose(run_model(folder / "out.onnx", feeds), ref, atol=3e-3)


@pytest.mark.parametrize("target", ["m.onnx.data", "hardlink.bin", "symlink.onnx", "m.onnx"])
def test_output_that_is_an_input_file_is_refused(place, target):
    folder, name = place
    src, _, _ = save_external(folder, "m.onnx", "m.onnx.data")
    os.link(folder / "m.onnx.data", folder / "hardlink.bin")
    os.symlink("m.onnx", folder / "symlink.onnx")
    before = file_bytes(src, folder / "m.onnx.data")
    listing = sorted(p.name for p in folder.iterdir())
    words = "is the input" if target in ("m.onnx", "symlink.onnx") else "external data file of the input"
    assert_one_line_error(cli("optimize", name("m.onnx"), name(target)), 2, words)
    # Not even with --in-place when OUT is one of the input's data files.
    if target in ("m.onnx.data", "hardlink.bin"):
        assert_one_line_error(cli("optimize", name("m.onnx"), name(target), "--in-place"), 2, words)
    assert file_bytes(src, folder / "m.onnx.data") == before
    assert sorted(p.name for p in folder.iterdir()) == listing


def test_in_place_replaces_model_and_data_together(place):
    folder, name = place
    src, feeds, ref = save_external(folder, "m.onnx", "weights.bin")
    result = cli("optimize", name("m.onnx"), "--in-place", "--min-elements", "0")
    assert result.exit_code == 0, result.stderr
    # The old data file is gone only because the new pair is in place.
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert locations(src) == {"m.onnx.data"} and quake_nodes(onnx.load(str(src), load_external_data=False))
    np.testing.assert_allclose(run_model(src, feeds), ref, atol=3e-3)
    # In place again: the data file keeps its name.
    result = cli("optimize", name("m.onnx"), name("m.onnx"), "--in-place", "--min-elements", "0")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.onnx.data"]
    np.testing.assert_allclose(run_model(src, feeds), ref, atol=3e-3)


def test_rerun_into_an_existing_output(place):
    folder, name = place
    src, feeds, ref = save_external(folder, "m.onnx", "m.onnx.data")
    before = file_bytes(src, folder / "m.onnx.data")
    for _ in range(3):
        result = cli("optimize", name("m.onnx"), name("o.onnx"), "--min-elements", "0")
        assert result.exit_code == 0, result.stderr
        assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.onnx.data", "o.onnx", "o.onnx.data"]
        np.testing.assert_allclose(run_model(folder / "o.onnx", feeds), ref, atol=3e-3)
    assert file_bytes(src, folder / "m.onnx.data") == before


def test_same_result_from_either_working_folder(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    save_external(folder, "m.onnx", "m.onnx.data")
    assert cli("optimize", "models/m.onnx", "models/outside.onnx").exit_code == 0
    monkeypatch.chdir(folder)
    assert cli("optimize", "m.onnx", "inside.onnx").exit_code == 0
    assert (folder / "inside.onnx.data").read_bytes() == (folder / "outside.onnx.data").read_bytes()
    inside, outside = (onnx.load(str(folder / f), load_external_data=False) for f in ("inside.onnx", "outside.onnx"))
    for t in [*inside.graph.initializer, *outside.graph.initializer]:  # only the data file's name differs
        for e in t.external_data:
            if e.key == "location":
                e.value = "DATA"
    assert inside.SerializeToString() == outside.SerializeToString()


def test_failed_in_place_write_leaves_the_pair(place, monkeypatch):
    save_module = importlib.import_module("quake_onnx.pipeline.save")
    folder, name = place
    src, feeds, ref = save_external(folder, "m.onnx", "m.onnx.data")
    before = file_bytes(src, folder / "m.onnx.data")

    def refuse(path, libraries):
        raise save_module.OptimizeError("the rewritten model does not load in ONNX Runtime: planted", exit_code=1)

    monkeypatch.setattr(save_module, "verify_written", refuse)
    assert_one_line_error(cli("optimize", name("m.onnx"), "--in-place"), 1, "planted")
    assert file_bytes(src, folder / "m.onnx.data") == before
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.onnx.data"]  # no temporary left


def test_ctrl_c_at_the_commit_waits_for_the_pair_and_its_cleanup(place, monkeypatch):
    """Ctrl-C right after the model replaced OUT (fresh-user run: interrupts
    near the end): the data file the new model points at was then removed as
    if the write had failed, and the old pair's data file stayed. Now the
    interrupt is taken once the commit and its cleanup are done: OUT loads,
    the old data file is gone, exit 130."""
    writes = importlib.import_module("quake_onnx.writes")
    folder, name = place
    src, feeds, ref = save_external(folder, "m.onnx", "m.onnx.data")
    assert cli("optimize", name("m.onnx"), name("o.onnx"), "--min-elements", "0").exit_code == 0
    assert locations(folder / "o.onnx") == {"o.onnx.data"}
    replace = os.replace

    def replace_then_ctrl_c(a, b):
        replace(a, b)
        if Path(b).name == "o.onnx":
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(writes.os, "replace", replace_then_ctrl_c)
    # Python's own SIGINT handler, as in a terminal: a CI job run in the background starts with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = cli("optimize", name("m.onnx"), name("o.onnx"), "--min-elements", "0", "--order", "3")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.exit_code == 130 and "interrupted" in result.stderr
    monkeypatch.setattr(writes.os, "replace", replace)
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.onnx.data", "o.onnx", "o.onnx.data"]
    np.testing.assert_allclose(run_model(folder / "o.onnx", feeds), ref, atol=3e-3)
    orders = {a.i for n in onnx.load(folder / "o.onnx").graph.node for a in n.attribute if a.name == "order"}
    assert orders == {3}


@pytest.mark.parametrize("where", ["claim", "point_at"])
def test_ctrl_c_after_the_data_file_is_claimed_removes_it(place, monkeypatch, where):
    """A signal after the staged data file took its name beside OUT and
    before the model replaced OUT (fresh-user run: SIGTERM 2 s into a 68 MB
    optimize) left that data file for good: OUT was the old model, and a rerun
    wrote OUT.1.data beside the orphan."""
    writes = importlib.import_module("quake_onnx.writes")
    folder, name = place
    save_external(folder, "m.onnx", "m.onnx.data")
    assert cli("optimize", name("m.onnx"), name("o.onnx"), "--min-elements", "0").exit_code == 0
    before = file_bytes(folder / "o.onnx", folder / "o.onnx.data")
    original = getattr(writes, f"_{where}")

    def then_ctrl_c(*args):
        result = original(*args)
        signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(writes, f"_{where}", then_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = cli("optimize", name("m.onnx"), name("o.onnx"), "--min-elements", "0")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.exit_code == 130 and "interrupted" in result.stderr
    # The new data file took the next free name (o.onnx.1.data) and went again.
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.onnx.data", "o.onnx", "o.onnx.data"]
    assert file_bytes(folder / "o.onnx", folder / "o.onnx.data") == before


def test_a_signal_after_the_command_cannot_kill_its_exit():
    """Python restores the default handlers while it shuts down: a Ctrl-C or
    SIGTERM there killed a finished run silently (exit -2 / -15 after the
    output was written). run() ignores both once the command is over."""
    import subprocess
    import sys

    import quake_onnx

    code = (
        "import signal\n"
        "from quake_onnx.cli import run\n"
        "try:\n    run()\nexcept SystemExit as e:\n"
        "    print(e.code, signal.getsignal(signal.SIGINT) is signal.SIG_IGN, "
        "signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(quake_onnx.__file__).parent.parent))
    out = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, env=env)
    assert out.stdout.splitlines()[-1] == "0 True True", out.stdout + out.stderr


@pytest.mark.parametrize("report", ["m.onnx.data", "m.onnx", "o.onnx", "o.onnx.data", "o.onnx.3.data"])
def test_report_never_lands_on_a_model_or_data_file(place, report):
    folder, name = place
    src, _, _ = save_external(folder, "m.onnx", "m.onnx.data")
    before = file_bytes(src, folder / "m.onnx.data")
    result = cli("optimize", name("m.onnx"), name("o.onnx"), "--report", name(report))
    assert_one_line_error(result, 2, report)
    assert file_bytes(src, folder / "m.onnx.data") == before
    assert not (folder / "o.onnx").exists()


def test_calibrate_never_writes_over_its_inputs(place):
    folder, name = place
    src, feeds, _ = save_external(folder, "m.onnx", "m.onnx.data")
    exaq = folder / "m.exaq.onnx"
    assert (
        cli(
            "optimize", name("m.onnx"), name("m.exaq.onnx"), "--softmax-method", "exaq", "--min-elements", "0"
        ).exit_code
        == 0
    )
    np.savez(folder / "samples.npz", **feeds)
    files = [
        exaq,
        *(folder / n for n in os.listdir(folder) if n.startswith("m.exaq.onnx") and n.endswith(".data")),
        folder / "samples.npz",
        src,
        folder / "m.onnx.data",
    ]
    before = file_bytes(*files)
    for target in ("m.exaq.onnx", "m.exaq.onnx.data", "samples.npz"):
        result = cli("calibrate", name("m.exaq.onnx"), name(target), "--inputs", name("samples.npz"))
        assert_one_line_error(result, 2, target)
    assert file_bytes(*files) == before
    result = cli("calibrate", name("m.exaq.onnx"), name("cal.onnx"), "--inputs", name("samples.npz"))
    assert result.exit_code == 0, result.stderr
    assert file_bytes(*files) == before
    assert locations(folder / "cal.onnx") == {"cal.onnx.data"}


@pytest.mark.parametrize("command", ["check", "zoo", "tune", "calibrate", "optimize"])
def test_the_model_zoos_test_data_sets_are_inputs(tmp_path, monkeypatch, command):
    """check, zoo, tune and calibrate read test_data_set_*/*.pb beside the
    model: a report (or calibrate's OUT) there replaced the data set, and
    every later run failed on it (fresh-user run)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zoo" / "m" / "test_data_set_0").mkdir(parents=True)
    model, feeds = wide_model(64)
    onnx.save(model, "zoo/m/model.onnx")
    if command == "calibrate":
        assert (
            cli("optimize", "zoo/m/model.onnx", "q.onnx", "--softmax-method", "exaq", "--min-elements", "0").exit_code
            == 0
        )
        os.replace("q.onnx", "zoo/m/model.onnx")
    sets = tmp_path / "zoo" / "m" / "test_data_set_0"
    (sets / "input_0.pb").write_bytes(numpy_helper.from_array(feeds["X"], "X").SerializeToString())
    (sets / "output_0.pb").write_bytes(numpy_helper.from_array(np.zeros((2, 64), np.float32), "Y").SerializeToString())
    before = file_bytes(sets / "input_0.pb", sets / "output_0.pb")
    for pb in ("input_0.pb", "output_0.pb"):
        target = f"zoo/m/test_data_set_0/{pb}"
        args = {
            "check": ["check", "zoo/m/model.onnx", "--json", target],
            "zoo": ["zoo", "zoo", "--json", target],
            "tune": ["tune", "zoo/m/model.onnx", "t.onnx", "--report", target],
            "calibrate": ["calibrate", "zoo/m/model.onnx", target],
            "optimize": ["optimize", "zoo/m/model.onnx", target],
        }[command]
        assert_one_line_error(cli(*args), 2, "is a test data set file of")
    assert file_bytes(sets / "input_0.pb", sets / "output_0.pb") == before


def test_check_and_zoo_reports_never_land_on_a_model_file(place):
    folder, name = place
    src, _, _ = save_external(folder, "m.onnx", "m.onnx.data")
    before = file_bytes(src, folder / "m.onnx.data")
    for target in ("m.onnx", "m.onnx.data"):
        assert_one_line_error(cli("check", name("m.onnx"), "--json", name(target)), 2, target)
        for option in ("--json", "--markdown", "--junit"):
            assert_one_line_error(cli("zoo", name("."), option, name(target)), 2, target)
    assert file_bytes(src, folder / "m.onnx.data") == before


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_device_or_fifo_is_never_replaced(place, kind):
    # os.replace would put a regular file where the node was (as root: /dev/null).
    # The nodes are made in tmp_path, so a regression replaces those, never the system's.
    folder, name = place
    src, _, _ = save_external(folder, "m.onnx", "m.onnx.data")
    node = folder / "sink"
    if kind == "fifo":
        os.mkfifo(node)
    else:
        try:
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of its own
        except PermissionError:
            pytest.skip("making a device node needs root")
    words = "a FIFO" if kind == "fifo" else "a device"
    assert_one_line_error(cli("optimize", name("m.onnx"), name("sink")), 2, words)
    assert_one_line_error(cli("optimize", name("m.onnx"), name("o.onnx"), "--report", name("sink")), 2, words)
    assert_one_line_error(cli("check", name("m.onnx"), "--json", name("sink")), 2, words)
    mode = os.stat(node).st_mode
    assert stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode)
    assert not (folder / "o.onnx").exists()


def test_a_fifo_as_input_is_refused_not_read(tmp_path):
    # Reading a FIFO as a model would wait for a writer forever: a real process, with a timeout.
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    sample = Path(__file__).resolve().parents[2] / "sample_models" / "encoder_block.onnx"
    for args in (("optimize", fifo, tmp_path / "o.onnx"), ("inspect", fifo), ("check", sample, "--optimized", fifo)):
        line = assert_one_line_error_real(run_real(*args, timeout=60), 2, "not a regular file")
        assert str(fifo) in line
    assert not (tmp_path / "o.onnx").exists()


def test_names_at_the_filesystems_limit(place):
    # A 246-byte output name leaves room for `.999.data`: temporaries must not
    # add to it, and re-running (`.1.data` first) works. A longer model name is
    # refused before any work; past the limit is the user's error (exit 2, not
    # the tool's), for any argument.
    folder, name = place
    save_external(folder, "m.onnx", "m.onnx.data")
    long_name = "o" * 241 + ".onnx"
    for _ in range(2):
        result = cli("optimize", name("m.onnx"), name(long_name), "--min-elements", "0")
        assert result.exit_code == 0, result.stderr
        assert quake_nodes(onnx.load(str(folder / long_name), load_external_data=False))
    assert (folder / f"{long_name}.data").exists()
    before = sorted(p.name for p in folder.iterdir())
    assert_one_line_error(cli("optimize", name("m.onnx"), name("o" * 245 + ".onnx")), 2, "room for its data file")
    report = "r" * 250  # a report has no data file
    assert cli("optimize", name("m.onnx"), name("o.onnx"), "--report", name(report)).exit_code == 0
    too_long = "o" * 300 + ".onnx"
    assert_one_line_error(cli("optimize", name("m.onnx"), name(too_long)), 2, "too long")
    assert_one_line_error(cli("optimize", name(too_long), name("o.onnx")), 2, "too long")
    assert_one_line_error(cli("check", name("m.onnx"), "--json", name("j" * 300)), 2, "too long")
    after = set(p.name for p in folder.iterdir()) - {"o.onnx", "o.onnx.data", report}
    assert sorted(after) == before  # no temporary left


def test_a_data_file_another_model_still_names_is_kept(place):
    # d.onnx and its copy share w.data: replacing d.onnx must not delete it.
    folder, name = place
    src, feeds, ref = save_external(folder, "m.onnx", "m.onnx.data")
    save_external(folder, "d.onnx", "w.data")
    (folder / "copy.onnx").write_bytes((folder / "d.onnx").read_bytes())
    result = cli("optimize", name("m.onnx"), name("d.onnx"), "--min-elements", "0")
    assert result.exit_code == 0, result.stderr
    assert (folder / "w.data").exists()
    run_model(folder / "copy.onnx", feeds)  # still complete
    np.testing.assert_allclose(run_model(folder / "d.onnx", feeds), ref, atol=3e-3)
    # Without a copy the replaced output's data file goes, as before, also when
    # another model's data file has a name that ends with it (no substring match).
    save_external(folder, "e.onnx", "e.onnx.data")
    save_external(folder, "my_e.onnx", "my_e.onnx.data")
    for _ in range(3):
        assert cli("optimize", name("m.onnx"), name("e.onnx"), "--min-elements", "0").exit_code == 0
        assert locations(folder / "e.onnx") == {"e.onnx.data"}
    assert not [p for p in folder.iterdir() if p.name.startswith("e.onnx.") and p.name != "e.onnx.data"]


def test_symlinked_data_files_are_read_and_protected(tmp_path, monkeypatch):
    # The Hugging Face hub cache: snapshots/<rev>/ holds links into blobs/.
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    blobs.mkdir()
    snap.mkdir(parents=True)
    _, feeds, ref = save_external(blobs, "model.onnx", "model.onnx.data")
    for f in ("model.onnx", "model.onnx.data"):
        (blobs / f).rename(blobs / f"blob-{f}")
        (snap / f).symlink_to(Path("../../blobs") / f"blob-{f}")
    before = file_bytes(blobs / "blob-model.onnx", blobs / "blob-model.onnx.data")
    monkeypatch.chdir(tmp_path)
    result = cli("optimize", snap / "model.onnx", "out.onnx", "--min-elements", "0")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_allclose(run_model(tmp_path / "out.onnx", feeds), ref, atol=3e-3)
    assert cli("inspect", snap / "model.onnx").exit_code == 0
    # The link's target is the input's data: never an output.
    assert_one_line_error(cli("optimize", snap / "model.onnx", blobs / "blob-model.onnx.data"), 2, "external data")
    assert file_bytes(blobs / "blob-model.onnx", blobs / "blob-model.onnx.data") == before
    # Through a link into another folder a model with external data would get
    # its data beside the target, where loading the link does not look: it
    # was written (exit 0) and the snapshot's model no longer loaded.
    os.symlink(Path("../../blobs") / "new-blob", snap / "linked.onnx")
    for args in ([snap / "model.onnx", "--in-place"], [snap / "model.onnx", snap / "linked.onnx"]):
        line = assert_one_line_error(cli("optimize", *args, "--min-elements", "0"), 2, "in another folder")
        assert "would not load from the link" in line
    assert file_bytes(blobs / "blob-model.onnx", blobs / "blob-model.onnx.data") == before
    assert sorted(p.name for p in blobs.iterdir()) == ["blob-model.onnx", "blob-model.onnx.data"]
    np.testing.assert_allclose(run_model(snap / "model.onnx", feeds), ref, atol=0)
    # The same link in the target's own folder finds the data: written through.
    os.symlink("made.onnx", tmp_path / "same.onnx")
    assert cli("optimize", snap / "model.onnx", tmp_path / "same.onnx", "--min-elements", "0").exit_code == 0
    assert os.path.islink(tmp_path / "same.onnx")
    np.testing.assert_allclose(run_model(tmp_path / "same.onnx", feeds), ref, atol=3e-3)


def test_a_data_location_outside_the_models_folder_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    save_external(tmp_path, "w.onnx", "w.data")
    save_pointing_at(tmp_path / "w.onnx", "../w.data", folder / "m.onnx")
    monkeypatch.chdir(folder)
    assert_one_line_error(cli("optimize", "m.onnx", "o.onnx"), 2, "../w.data")  # ORT's words or ours
    # A location that climbs and comes back stays inside: read as ORT reads it.
    (folder / "sub").mkdir()
    (tmp_path / "w.data").rename(folder / "w.data")
    save_pointing_at(tmp_path / "w.onnx", "sub/../w.data", folder / "m.onnx")
    assert cli("optimize", "m.onnx", "o.onnx").exit_code == 0


def test_an_empty_external_tensor(tmp_path, monkeypatch):
    # onnx stores a 0-element tensor as offset 0, length 0: zero bytes, not the rest of the file.
    model, feeds = wide_model(N)
    empty = numpy_helper.from_array(np.zeros((0,), np.float32), "E")
    model.graph.initializer.insert(0, empty)
    monkeypatch.chdir(tmp_path)
    onnx.save(model, "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    assert {e.key: e.value for e in onnx.load("m.onnx", load_external_data=False).graph.initializer[0].external_data}[
        "length"
    ] == "0"
    result = cli("optimize", "m.onnx", "o.onnx", "--min-elements", "0")
    assert result.exit_code == 0, result.stderr


def test_a_data_file_a_model_in_a_subfolder_names_is_kept(tmp_path, monkeypatch):
    # out/o.onnx keeps its weights at a/b/d.bin, which out/a/m.onnx also names
    # (as b/d.bin): replacing out/o.onnx must not delete it.
    out = tmp_path / "out"
    (out / "a" / "b").mkdir(parents=True)
    _, feeds, ref = save_external(out / "a", "m.onnx", "b/d.bin")
    save_pointing_at(out / "a" / "m.onnx", "a/b/d.bin", out / "o.onnx")
    src, _, _ = save_external(tmp_path, "in.onnx", "in.onnx.data")
    monkeypatch.chdir(tmp_path)
    result = cli("optimize", "in.onnx", "out/o.onnx", "--min-elements", "0")
    assert result.exit_code == 0, result.stderr
    assert (out / "a" / "b" / "d.bin").exists()
    np.testing.assert_allclose(run_model(out / "a" / "m.onnx", feeds), ref)
    np.testing.assert_allclose(run_model(out / "o.onnx", feeds), ref, atol=3e-3)


@pytest.mark.parametrize("out", ["nodir/", "new.onnx/", "new.onnx/.", "-"])
def test_an_output_naming_a_folder_or_stdout_is_refused(tmp_path, monkeypatch, out):
    # pathlib drops a trailing '/' or '/.': OUT would become a file of that name.
    monkeypatch.chdir(tmp_path)
    save_external(tmp_path, "m.onnx", "m.onnx.data")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_line_error(cli("optimize", "m.onnx", out), contains="give a file path")
    assert_one_line_error(cli("optimize", "m.onnx", "ok.onnx", "--report", "sub/"), contains="names a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_sigterm_mid_write_leaves_no_temporaries(tmp_path):
    # SIGTERM (timeout, CI runners) arrives while OUT's data file is staged:
    # one line, exit 143, and nothing of the write left in OUT's folder.
    import subprocess
    import sys

    import quake_onnx

    save_external(tmp_path, "m.onnx", "m.onnx.data")
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "import os, signal, sys\n"
        "import quake_onnx.writes as w\n"
        "def killed(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "w.write_bytes_atomic = killed\n"
        "from quake_onnx.cli import run\n"
        "sys.argv = ['quake-onnx', 'optimize', 'm.onnx', 'out/o.onnx', '--min-elements', '0']\n"
        "run()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(quake_onnx.__file__).parent.parent))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert_one_line_error_real(proc, code=143, contains="terminated")
    assert list(out.iterdir()) == []


def test_an_unreadable_data_file_is_named(tmp_path, monkeypatch):
    # As a user without read permission (os.access is what root would pass):
    # ONNX Runtime's own words for it are "SystemError : 13".
    import quake_onnx.modelio as modelio

    save_external(tmp_path, "m.onnx", "m.onnx.data")
    real_access = os.access
    monkeypatch.setattr(
        modelio.os, "access", lambda p, mode: False if Path(p).name == "m.onnx.data" else real_access(p, mode)
    )
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(
        cli("optimize", "m.onnx", "o.onnx"), contains="cannot read its external data file m.onnx.data"
    )
    assert not (tmp_path / "o.onnx").exists()


def test_a_symlinked_output_or_report_is_written_through_the_link(place):
    """OUT and reports that are symlinks replace the file they point at and
    stay links (os.replace once put a file where the link was); a dangling
    link makes the file it names."""
    folder, name = place
    save_external(folder, "m.onnx", "m.onnx.data")
    (folder / "target.json").write_text("old")
    os.symlink("target.json", folder / "report.json")
    os.symlink("made.onnx", folder / "out.onnx")  # dangling
    result = cli("optimize", name("m.onnx"), name("out.onnx"), "--report", name("report.json"))
    assert result.exit_code == 0, result.stderr
    assert os.path.islink(folder / "report.json") and os.path.islink(folder / "out.onnx")
    assert (folder / "target.json").read_text().startswith("{")
    assert (folder / "made.onnx").is_file() and not os.path.islink(folder / "made.onnx")
    onnx.checker.check_model(onnx.load(folder / "made.onnx"))


def test_a_report_to_a_link_to_standard_output_goes_to_stdout(place):
    """`--json /dev/stdout` with stdout redirected to a file replaced the
    /dev/stdout link with a file of the report. A link to this process's
    fd 1 (made in tmp_path, so a regression replaces that link, never the
    system's) is standard output; a model there is refused."""
    folder, name = place
    save_external(folder, "m.onnx", "m.onnx.data")
    os.symlink("/proc/self/fd/1", folder / "out")
    result = cli("check", name("m.onnx"), "--json", name("out"), "--runs", "1", "--warmup", "0")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.rstrip().endswith("}")  # the JSON report, after the table
    assert os.path.islink(folder / "out")
    assert_one_line_error(cli("optimize", name("m.onnx"), name("out")), 2, "file descriptor 1")
    assert os.path.islink(folder / "out")


def test_dot_dot_after_a_link_is_read_as_the_os_reads_it(tmp_path, monkeypatch):
    """Fresh-user run: with `sl` a link to a/b, `sl/../x.onnx` (a/x.onnx to
    the OS) was written as ./x.onnx, `sl/../m.onnx` read its data from ./ and
    protected ./ files, and `nodir/../y.onnx` was written though nodir does
    not exist."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "sl").symlink_to(Path("a") / "b")
    monkeypatch.chdir(tmp_path)
    src, feeds, ref = save_external(tmp_path / "a", "m.onnx", "m.onnx.data")
    assert cli("optimize", "sl/../m.onnx", "sl/../x.onnx", "--min-elements", "0").exit_code == 0
    assert (tmp_path / "a" / "x.onnx").is_file() and not (tmp_path / "x.onnx").exists()
    np.testing.assert_allclose(run_model(tmp_path / "a" / "x.onnx", feeds), ref, atol=3e-3)
    # ./m.onnx is another file than the input a/m.onnx: writing it is allowed;
    # the input itself is refused as OUT under its `..` name.
    assert cli("optimize", "sl/../m.onnx", "m.onnx", "--min-elements", "0").exit_code == 0
    before = file_bytes(src, tmp_path / "a" / "m.onnx.data")
    assert_one_line_error(cli("optimize", "a/m.onnx", "sl/../m.onnx"), 2, "input")
    assert file_bytes(src, tmp_path / "a" / "m.onnx.data") == before
    result = cli("optimize", "sl/../m.onnx", "nodir/../y.onnx")
    assert result.exit_code == 2 and not (tmp_path / "y.onnx").exists(), result.stdout + result.stderr


def test_a_report_over_the_output_data_file_through_a_link_and_dot_dot_is_refused(tmp_path, monkeypatch):
    """Review: with L a link to real/, `--report L/x/../out.onnx.data` is the
    data file of OUT `L/out.onnx`; paths compared as absolute() spells them
    (links kept up to a `..`) told them apart, and the report replaced the
    model's data, exit 0."""
    writes = importlib.import_module("quake_onnx.writes")
    (tmp_path / "real" / "x").mkdir(parents=True)
    (tmp_path / "L").symlink_to("real")
    monkeypatch.chdir(tmp_path)
    save_external(tmp_path, "m.onnx", "m.onnx.data")
    result = cli("optimize", "m.onnx", "L/out.onnx", "--min-elements", "0", "--report", "L/x/../out.onnx.data")
    assert_one_line_error(result, 2, "would be written over the output model or its data file")
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["x"]
    assert writes.same_path("L/x/../r.json", "L/r.json") and writes.same_path("-", "-")
    assert not writes.same_path("L/r.json", "r.json")
