"""`quake-onnx check`: thresholds and exit codes, input sources, one-line errors."""

import json
import warnings

import numpy as np
import onnx
import pytest
from checktools import FAST, ZOO, cli, copy_models, one_line, validate
from onnx import TensorProto, helper, numpy_helper

import quake_onnx

LEGACY = ZOO / "legacy_opset11"  # the smallest sample: fastest to check
BERT = ZOO / "bert_encoder"


def test_check_passes_and_reports_every_output(tmp_path):
    out = tmp_path / "r.json"
    r = cli("check", BERT, *FAST, "--max-abs-error", "0.05", "--min-top1-agreement", "0.5", "--json", out)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("PASS")
    assert "last_hidden_state" in r.stdout and "logits" in r.stdout and "speedup" in r.stdout
    result = json.loads(out.read_text())
    validate(result, ref="#/$defs/model")
    assert result["status"] == "pass" and result["timing"]["threads"] == 1 and result["timing"]["runs"] == 3
    assert [o["name"] for o in result["outputs"]] == ["last_hidden_state", "logits"]


def test_min_speedup_100_fails_with_one_line():
    r = cli("check", LEGACY, *FAST, "--min-speedup", "100")
    line = one_line(r, 1, prefix="FAIL: ", contains="< 100x")
    assert line.startswith("FAIL: speedup ")
    assert "PASS" not in r.stdout


def test_loose_thresholds_pass():
    r = cli("check", LEGACY, *FAST, "--min-speedup", "0.01", "--max-abs-error", "1", "--min-cosine", "0.9")
    assert r.exit_code == 0, r.stderr


def test_tight_max_abs_error_fails_naming_the_output():
    r = cli("check", LEGACY, *FAST, "--max-abs-error", "1e-9", "--min-elements", "0")
    one_line(r, 1, prefix="FAIL: ", contains="max abs error")
    assert "(output heatmap)" in r.stderr


def test_wrong_optimized_model_fails_accuracy(tmp_path):
    # An "optimized" model whose weights differ: the check must catch it.
    model = onnx.load(LEGACY / "model.onnx")
    w = next(t for t in model.graph.initializer if len(t.dims) == 2)
    w.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w), w.name))
    onnx.save(model, tmp_path / "wrong.onnx")
    r = cli("check", LEGACY, *FAST, "--optimized", tmp_path / "wrong.onnx")
    one_line(r, 1, prefix="FAIL: ", contains="cosine")


def test_top1_threshold_fails_when_the_argmax_moves(tmp_path):
    model = onnx.load(ZOO / "vit_block" / "model.onnx")
    bias = next(t for t in model.graph.initializer if t.name.startswith("head_b"))
    b = numpy_helper.to_array(bias).copy()
    b[:] = 0
    b[0] = 1e3  # every row's argmax becomes class 0
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    onnx.save(model, tmp_path / "biased.onnx")
    r = cli(
        "check",
        ZOO / "vit_block",
        *FAST,
        "--optimized",
        tmp_path / "biased.onnx",
        "--min-cosine",
        "-1",
        "--min-top1-agreement",
        "1",
    )
    one_line(r, 1, prefix="FAIL: ", contains="top-1 agreement 0.000 < 1")


def test_generated_inputs_with_dims_and_vocab(tmp_path):
    model = tmp_path / "bert.onnx"  # no test_data_set beside it
    model.write_bytes((BERT / "model.onnx").read_bytes())
    r = cli(
        "check", model, *FAST, "--dim", "batch=3", "--dim", "seq=16", "--vocab", "100", "--json", tmp_path / "r.json"
    )
    assert r.exit_code == 0, r.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["inputs"] == {
        "source": "generated",
        "sets": 1,
        "seed": 0,
        "shapes": {"input_ids": [3, 16], "attention_mask": [3, 16]},
        "dims": {"batch": 3, "seq": 16},
        "notes": [],
    }
    logits = next(o for o in result["outputs"] if o["name"] == "logits")
    assert logits["rows"] == 3


def test_npz_inputs(tmp_path):
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "x.npz", features=rng.standard_normal((1, 16, 24)).astype(np.float32))
    model = tmp_path / "m.onnx"
    model.write_bytes((LEGACY / "model.onnx").read_bytes())
    r = cli("check", model, *FAST, "--inputs", tmp_path / "x.npz", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["inputs"]["source"] == "npz"


def test_json_to_stdout_is_the_only_stdout(tmp_path):
    r = cli("check", LEGACY, *FAST, "--json", "-")
    assert r.exit_code == 0
    validate(json.loads(r.stdout), ref="#/$defs/model")


def _softmax_model(path, rows):
    """Softmax over [rows, 128]: rows 0 gives an empty input and output."""
    from onnx import TensorProto, helper

    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [rows, 128]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g", info[:1], info[1:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


@pytest.mark.parametrize("static", [True, False])
def test_an_empty_output_is_a_verdict_without_warnings(tmp_path, static):
    # No element differs: PASS, "-" where there is no row to agree on, and no
    # numpy warning about the mean of an empty slice.
    model = _softmax_model(tmp_path / "m.onnx", 0 if static else "n")
    args = [] if static else ["--inputs", _npz(tmp_path / "x.npz", x=np.zeros((0, 128), np.float32))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = cli("check", model, "--runs", "2", "--warmup", "1", *args, "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("PASS") and "Warning" not in r.stderr
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    row = next(line for line in r.stdout.splitlines() if "[0, 128]" in line)
    assert [c.strip() for c in row.split("│")][-4:-1] == ["1.000000", "-", "-"], row  # cosine, top-1, top-k
    result = json.loads((tmp_path / "r.json").read_text())
    validate(result, ref="#/$defs/model")
    (y,) = result["outputs"]
    assert y["rows"] == 0 and y["top1_agreement"] is None and y["topk_agreement"] is None and y["cosine"] == 1.0
    assert result["summary"]["min_top1_agreement"] is None


def test_a_fully_masked_row_where_onnx_runtime_gives_nan_passes_with_a_warning(tmp_path):
    # A padded batch: row 1 all -inf. ONNX Runtime's Softmax gives NaN there,
    # the com.quake one 0 (docs/ops.md): the original failed, not the rewrite.
    model = _softmax_model(tmp_path / "m.onnx", 4)
    x = np.random.default_rng(1).standard_normal((4, 128)).astype(np.float32)
    x[1] = -np.inf
    npz = _npz(tmp_path / "x.npz", x=x)
    args = ["--runs", "2", "--warmup", "1", "--min-elements", "0", "--inputs", npz, "--json", tmp_path / "r.json"]
    r = cli("check", model, *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("PASS")
    result = json.loads((tmp_path / "r.json").read_text())
    validate(result, ref="#/$defs/model")
    (y,) = result["outputs"]
    assert (y["nonfinite_mismatch"], y["original_nan"]) == (0, 128)
    assert result["summary"]["original_nan"] == 128
    assert any("NaN where the optimized model gives numbers: 128 elements" in w for w in result["warnings"])


def test_every_row_fully_masked_fails_and_the_warning_says_why(tmp_path):
    # Nothing but fully masked rows: no element is left to compare, so the
    # NaN-for-0 excuse does not apply (docs/zoo.md) and check fails; a
    # warning says that this is why, rather than a bare non-finite mismatch.
    model = _softmax_model(tmp_path / "m.onnx", 4)
    npz = _npz(tmp_path / "x.npz", x=np.full((4, 128), -np.inf, np.float32))
    args = ["--runs", "2", "--warmup", "1", "--min-elements", "0", "--inputs", npz, "--json", tmp_path / "r.json"]
    r = cli("check", model, *args)
    assert r.exit_code == 1, r.stdout + r.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    (y,) = result["outputs"]
    assert (y["nonfinite_mismatch"], y["original_nan"]) == (512, 0)
    (w,) = [w for w in result["warnings"] if "NaN everywhere in the original" in w]
    assert "give inputs in which some rows are not fully masked" in w
    assert "NaN everywhere in the original" in " ".join(r.stderr.split())


def test_an_optimized_model_that_fails_to_run_says_why(tmp_path):
    # The original takes any number of rows, the "optimized" one 48: ORT's
    # reason is on the lines after its first, and the one error line keeps it.
    original = _softmax_model(tmp_path / "m.onnx", "n")
    model = onnx.load(original)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 48
    onnx.save(model, tmp_path / "o.onnx")
    x = _npz(tmp_path / "x.npz", x=np.zeros((64, 128), np.float32))
    r = cli("check", original, *FAST, "--optimized", tmp_path / "o.onnx", "--inputs", x)
    line = one_line(r, 1, contains="the optimized model fails to run: ")
    assert "for the following indices; index: 0 Got: 64 Expected: 48; Please fix" in line


@pytest.fixture
def bert_copy(tmp_path):
    model = tmp_path / "bert.onnx"
    model.write_bytes((BERT / "model.onnx").read_bytes())
    return model


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "args, contains",
    [
        (["missing.onnx"], "does not exist"),
        (["{tmp}/garbage.onnx"], "is not an onnx model"),
        (["{tmp}"], "no .onnx files"),
        (["{bert}"], "--dim seq=SIZE"),
        (["{bert}", "--dim", "seq"], "not NAME=SIZE"),
        (["{bert}", "--dim", "seq=-1"], "not NAME=SIZE"),
        (["{bert}", "--dim", "seq=8", "--vocab", "100000"], "indices element out of data bounds"),
        (["{bert}", "--inputs", "{tmp}/garbage.onnx"], "not a readable .npz"),
        (["{bert}", "--inputs", "{tmp}/nothing.npz"], "does not exist"),
        (["{bert}", "--inputs", "{tmp}/ids.npz"], "no array for input attention_mask"),
        (["{bert}", "--inputs", "{tmp}/floats.npz"], "the model takes int64"),
        (["{bert}", "--dim", "seq=8", "--optimized", "{tmp}/nothing.onnx"], "--optimized: "),
        (["{bert}", "--dim", "seq=8", "--optimized", "{tmp}/garbage.onnx"], "--optimized: "),
        (["{bert}", "--dim", "seq=8", "--optimized", "{tmp}"], "is a directory"),
        (["{bert}", "--dim", "seq=8", "--json", "{tmp}/no/such/dir/r.json"], "does not exist"),
        (["{bert}", "--runs", "0"], "--runs"),
        (["{bert}", "--order", "7"], "--order"),
    ],
)
def test_usage_and_input_errors_are_one_line_exit_2(tmp_path, bert_copy, args, contains):
    (tmp_path / "garbage.onnx").write_bytes(b"not a model at all")
    _npz(tmp_path / "ids.npz", input_ids=np.zeros((1, 8), np.int64))
    _npz(tmp_path / "floats.npz", input_ids=np.zeros((1, 8), np.float32), attention_mask=np.ones((1, 8), np.int64))
    args = [a.format(tmp=tmp_path, bert=bert_copy) for a in args]
    if args[0] == str(tmp_path):  # a folder with no model in it
        empty = tmp_path / "empty"
        empty.mkdir()
        args[0] = str(empty)
    one_line(cli("check", *FAST, *args), 2, contains=contains)


def _truncated(src, dest, keep: int = 40):
    dest.write_bytes(src.read_bytes()[:keep])
    return dest


def _stamped(src, dest, ir_version=None, opset=None):
    model = onnx.load(str(src))
    if ir_version is not None:
        model.ir_version = ir_version
    if opset is not None:
        next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = opset
    onnx.save(model, str(dest))
    return dest


def test_a_corrupt_optimized_model_is_bad_input_like_a_corrupt_model(tmp_path):
    # --optimized names the user's file: a truncated one is refused as MODEL
    # would be (exit 2, one line naming the option and the file), not reported
    # as a failure of the tool with ONNX Runtime's protobuf error.
    model = LEGACY / "model.onnx"
    bad = _truncated(model, tmp_path / "bad.onnx")
    as_model = one_line(cli("check", bad, *FAST), 2, contains="is not an ONNX model")
    line = one_line(cli("check", LEGACY, *FAST, "--optimized", bad), 2, contains="--optimized: ")
    assert as_model.removeprefix("error: ") in line and "ONNXRuntimeError" not in line
    # Its external data checked before ONNX Runtime opens it, as MODEL's is.
    weights = onnx.load(str(model))
    onnx.save(weights, str(tmp_path / "ext.onnx"), save_as_external_data=True, size_threshold=0, location="ext.bin")
    (tmp_path / "ext.bin").write_bytes(b"")
    one_line(cli("check", LEGACY, *FAST, "--optimized", tmp_path / "ext.onnx"), 2, contains="ext.bin is truncated")


@pytest.mark.parametrize(
    "stamp, words", [({"ir_version": 99}, "Unsupported model IR version: 99"), ({"opset": 99}, "Opset 99")]
)
@pytest.mark.parametrize("role", ["model", "optimized"])
def test_a_model_onnx_runtime_refuses_is_one_readable_line(tmp_path, stamp, words, role):
    # ONNX Runtime's reason, without the C++ source location and function
    # signature it puts before it.
    odd = _stamped(LEGACY / "model.onnx", tmp_path / "odd.onnx", **stamp)
    args = [odd] if role == "model" else [LEGACY, "--optimized", odd]
    line = one_line(cli("check", *FAST, *args), 2, contains="ONNX Runtime cannot load")
    assert words in line and str(odd) in line
    assert "onnxruntime::" not in line and ".cc:" not in line and ".h:" not in line


def test_an_optimized_model_as_model_is_refused_with_what_to_run(tmp_path):
    # check compares ONNX Runtime's own ops with com.quake's: a model that
    # already has com.quake nodes has no reference, and the line says what to pass.
    optimized = tmp_path / "q.onnx"
    quake_onnx.optimize(LEGACY / "model.onnx", optimized, min_elements=0)
    line = one_line(cli("check", optimized, *FAST), 2, contains="already has com.quake nodes")
    assert f"--optimized {optimized}" in line
    r = cli("check", LEGACY, *FAST, "--optimized", optimized)  # what it says to run
    assert r.exit_code == 0, r.stdout + r.stderr
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    optimized.rename(zoo / "q.onnx")
    r = cli("zoo", zoo, *FAST)  # in a zoo: that model's error, with the reason
    assert r.exit_code == 1 and "already has com.quake nodes" in r.stdout + r.stderr


def test_check_takes_a_model_zoo_folder(tmp_path):
    folder = copy_models(tmp_path, "legacy_opset11") / "legacy_opset11"
    r = cli("check", folder, *FAST, "--json", tmp_path / "r.json")
    assert r.exit_code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["inputs"]["source"] == "test_data_set" and result["model"].endswith("model.onnx")


def test_recorded_outputs_that_do_not_match_warn(tmp_path):
    folder = copy_models(tmp_path, "legacy_opset11") / "legacy_opset11"
    out = folder / "test_data_set_0" / "output_0.pb"
    tensor = onnx.TensorProto()
    tensor.ParseFromString(out.read_bytes())
    out.write_bytes(numpy_helper.from_array(numpy_helper.to_array(tensor) + 1, tensor.name).SerializeToString())
    r = cli("check", folder, *FAST, "--json", tmp_path / "r.json")
    assert r.exit_code == 0  # thresholds judge optimized against original
    assert "differs from the recorded one" in r.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["outputs"][0]["expected"]["original_matches"] is False


def test_demo_still_runs():
    # quickstart.sh ran `demo` before `check` replaced it there; the command stays.
    r = cli("demo", "--runs", "3")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout


def test_demo_models_that_is_no_folder_is_bad_input(tmp_path):
    # It read "error: FILE/encoder_block.onnx not found (build it with ...)".
    (tmp_path / "f.txt").write_text("x")
    line = one_line(cli("demo", "--models", tmp_path / "f.txt"), 2, contains="--models ")
    assert line.endswith(f"{tmp_path / 'f.txt'} is not a folder (give the folder holding encoder_block.onnx)"), line
    one_line(cli("demo", "--models", tmp_path / "none"), 2, contains="none does not exist (give the folder")
    one_line(cli("demo", "--models", tmp_path), 2, contains="encoder_block.onnx not found")


def test_demo_optimized_that_is_no_usable_model_is_bad_input(tmp_path):
    # --optimized names the user's file: refused with one line naming it, exit 2.
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    line = one_line(cli("demo", "--runs", "1", "--optimized", text), 2, contains="--optimized: ")
    assert f"{text} is not an ONNX model" in line
    one_line(cli("demo", "--runs", "1", "--optimized", tmp_path / "none.onnx"), 2, contains="does not exist")
    sample = onnx.load(ZOO.parent / "encoder_block.onnx")
    sample.ir_version = 99
    onnx.save(sample, tmp_path / "ir99.onnx")
    line = one_line(cli("demo", "--runs", "1", "--optimized", tmp_path / "ir99.onnx"), 2)
    assert "ONNX Runtime cannot load --optimized" in line and "Unsupported model IR version: 99" in line
    other = _softmax_model(tmp_path / "other.onnx", 4)  # takes x, not the encoder block's X and MASK
    line = one_line(cli("demo", "--runs", "1", "--optimized", other), 2, contains="does not run on the encoder block")
    assert "Required inputs (['x']) are missing" in line


def test_float32_data_for_a_float16_model_is_cast_with_a_note(tmp_path):
    # A model converted to float16 next to the float32 data it was exported
    # with: the data is narrowed, and check says so, overflows counted.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4, 128])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT16, [4, 128])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["probs"], axis=-1, name="sm")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    data = np.random.default_rng(0).standard_normal((4, 128)).astype(np.float32)
    data[0, :5] = -1e9  # a padding mask: -inf in float16
    npz = _npz(tmp_path / "x.npz", x=data)
    r = cli(
        "check",
        tmp_path / "m.onnx",
        "--runs",
        "2",
        "--min-elements",
        "0",
        "--inputs",
        npz,
        "--json",
        tmp_path / "r.json",
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "Warning" not in r.stderr, r.stderr
    note = "input x: float32 data cast to float16, the model's type (5 finite values became inf)"
    assert f"note: {note}" in r.stdout
    assert json.loads((tmp_path / "r.json").read_text())["inputs"]["notes"] == [note]


def test_a_seed_or_image_size_numpy_cannot_take_is_a_usage_error(tmp_path):
    """--seed -1 and --image-size 100000 were 'internal error (ValueError /
    MemoryError ...); please report it', exit 1 (fresh-user run)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, None, None])
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])],
        "g",
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "img.onnx")
    for command in ("check", "tune"):
        one_line(cli(command, tmp_path / "img.onnx", "--seed", "-1"), 2, contains="'--seed'")
    one_line(
        cli("check", tmp_path / "img.onnx", "--image-size", "100000"),
        2,
        contains="cannot make input x of shape [1, 3, 100000, 100000]",
    )
    one_line(
        cli("check", tmp_path / "img.onnx", "--image-size", "99999999999999999999"), 2, contains="cannot make input x"
    )
    with pytest.raises(quake_onnx.check.inputs.InputError, match="seed of generated inputs must be an integer >= 0"):
        quake_onnx.tune(tmp_path / "img.onnx", None, seed=-1)


def test_a_failure_line_never_prints_the_two_sides_alike():
    """'FAIL: cosine 0.999999 < 0.999999' for 0.99999932 against 0.99999933:
    the digits grow until the two sides differ (fresh-user run)."""
    from quake_onnx.check.runner import Thresholds, judge

    outputs = [{"name": "y", "nonfinite_mismatch": 0, "cosine": 0.99999932, "max_abs_error": 1.0, "scores": False}]
    summary = {"nonfinite_mismatch": 0, "max_abs_error": 1.0, "min_cosine": 0.99999932, "min_top1_agreement": None}
    th = Thresholds(max_abs_error=0.99999999, min_cosine=0.99999933, min_top1_agreement=None, min_speedup=None)
    assert judge({"summary": summary, "outputs": outputs}, th) == [
        "max abs error 1 > 0.99999999 (output y)",
        "cosine 0.99999932 < 0.99999933 (output y)",
    ]
    # Unequal strings are not enough: "speedup 1.00x < 1x" for 0.996 (review).
    timing = {"speedup": 0.996}
    fine = {"nonfinite_mismatch": 0, "max_abs_error": 0.0, "min_cosine": 1.0, "min_top1_agreement": 0.9996}
    th = Thresholds(min_speedup=1.0, min_top1_agreement=1.0)
    scores = [{**outputs[0], "scores": True, "top1_agreement": 0.9996}]
    assert judge({"summary": fine, "outputs": scores, "timing": timing}, th) == [
        "top-1 agreement 0.9996 < 1 (output y)",
        "speedup 0.996x < 1x",
    ]


def test_user_text_is_never_read_as_emoji_codes(tmp_path):
    """rich turned ':a:' in '--dim x:a=2' and ':smile:' in a model's name into
    emoji in warnings, progress lines and the zoo table (fresh-user run)."""
    (tmp_path / "z").mkdir()
    _softmax_model(tmp_path / "z" / "v1:smile:.onnx", 2)
    r = cli("check", tmp_path / "z" / "v1:smile:.onnx", "--dim", "x:a=2", *FAST)
    assert "--dim x:a: no input has such a dimension" in r.stderr, r.stderr
    r = cli("zoo", tmp_path / "z", *FAST)
    assert r.stdout.count("v1:smile:") + r.stderr.count("v1:smile:") >= 2, r.stdout + r.stderr
    assert "\U0001f604" not in r.stdout + r.stderr


@pytest.mark.parametrize("command", ["check", "tune"])
def test_inputs_given_twice_is_refused_not_the_last_taken(tmp_path, command):
    """check and tune read one --inputs file; a second silently replaced the
    first (tune then tuned on the other set), where calibrate takes several."""
    model = _softmax_model(tmp_path / "m.onnx", 2)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", x=np.zeros((2, 128), np.float32))
    extra = [tmp_path / "out.onnx"] if command == "tune" else []
    args = [command, model, *extra, "--inputs", tmp_path / "a.npz", "--inputs", tmp_path / "b.npz"]
    one_line(cli(*args), 2, contains="'--inputs': takes one file here")
    assert not (tmp_path / "out.onnx").exists()
