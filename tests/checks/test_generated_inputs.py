"""Generated inputs that run more often: image-like defaults (--image-size),
INPUT:AXIS dims, static zeros, value ranges, and errors that name model, input and axis."""

import json

import numpy as np
import onnx
import pytest
from checktools import FAST, cli
from onnx import TensorProto, helper

from quake_onnx.check.inputs import InputError, generate, graph_inputs, image_axes


def _model(*inputs):
    """Identity per input: (name, elem type, dims) with dims as make_tensor_value_info takes them,
    where "-1" stands for dim_value -1 and None for a dim with neither value nor name."""
    infos, nodes, outs = [], [], []
    for name, elem, dims in inputs:
        info = helper.make_tensor_value_info(name, elem, [d if d != "-1" else 1 for d in dims])
        for d, dim in zip(dims, info.type.tensor_type.shape.dim):
            if d == "-1":
                dim.dim_value = -1
            elif d is None:
                dim.Clear()
            elif d == 0:
                dim.Clear()
                dim.dim_value = 0
        infos.append(info)
        nodes.append(helper.make_node("Sigmoid" if elem == TensorProto.FLOAT else "Identity", [name], [name + "_out"]))
        outs.append(helper.make_tensor_value_info(name + "_out", elem, None))
    graph = helper.make_graph(nodes, "g", infos, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_image_like_inputs_get_batch_1_and_the_image_size():
    model = _model(
        ("x", TensorProto.FLOAT, ["-1", 3, "?", "?"]),  # what a Paddle export writes
        ("y", TensorProto.FLOAT, [0, 0, 0, 3]),  # NHWC, static zeros
        ("z", TensorProto.UINT8, [None, 1, 32, None]),
    )
    notes, used = [], {}
    feeds = generate(model, graph_inputs(model), notes=notes, used=used)
    assert feeds["x"].shape == (1, 3, 224, 224)
    assert feeds["y"].shape == (1, 224, 224, 3)
    assert feeds["z"].shape == (1, 1, 32, 224)
    assert len(notes) == 3 and "[N, C, H, W]" in notes[0] and "[N, H, W, C]" in notes[1]
    assert "axis 0 (batch) = 1, axis 2 = 224 (--image-size), axis 3 = 224 (--image-size)" in notes[0]
    assert used == {}
    small = generate(model, graph_inputs(model), image_size=64)
    assert small["x"].shape == (1, 3, 64, 64)
    # an explicit dims entry still wins: by name ("?") or by input and axis
    assert generate(model, graph_inputs(model), dims={"x:3": 100})["x"].shape == (1, 3, 224, 100)


def test_what_is_not_an_image():
    def spec(name, elem, dims):
        return graph_inputs(_model((name, elem, dims)))[0]

    assert image_axes(spec("x", TensorProto.FLOAT, ["b", 3, "h", "w"])) == (1, (2, 3))
    assert image_axes(spec("x", TensorProto.FLOAT, ["b", "h", "w", 4])) == (3, (1, 2))
    assert image_axes(spec("x", TensorProto.FLOAT, ["b", 8, "h", "w"])) is None  # 8 channels
    assert image_axes(spec("x", TensorProto.FLOAT, ["b", 3, "h"])) is None  # rank 3
    assert image_axes(spec("x", TensorProto.INT64, ["b", 3, "h", "w"])) is None  # ids, not pixels
    assert image_axes(spec("attention_mask", TensorProto.FLOAT, ["b", 1, 1, None])) is None


def test_other_unnamed_dims_need_a_value_naming_model_input_and_axis():
    model = _model(("state", TensorProto.FLOAT, [2, None, 128]), ("sr", TensorProto.INT64, []))
    with pytest.raises(InputError) as e:
        generate(model, graph_inputs(model), model_name="vad/silero")
    assert str(e.value).startswith("input state of model vad/silero axis 1 has no size or name")
    assert "--dim state:1=SIZE" in str(e.value)
    used = {}
    feeds = generate(model, graph_inputs(model), dims={"state:1": 1}, used=used)
    assert feeds["state"].shape == (2, 1, 128) and feeds["sr"].shape == () and used == {"state:1": 1}
    neg = _model(("x", TensorProto.FLOAT, [1, "-1"]))
    with pytest.raises(InputError, match="input x axis 1 has no size or name"):
        generate(neg, graph_inputs(neg))


def test_static_zero_is_unknown_in_an_image_and_kept_elsewhere():
    image = _model(("pixels", TensorProto.FLOAT, [1, 4, 0, 8]))  # C = 4: image-like
    assert generate(image, graph_inputs(image))["pixels"].shape == (1, 4, 224, 8)
    past = _model(("past", TensorProto.FLOAT, [1, 12, 0, 64]))  # a decoder's empty past
    assert generate(past, graph_inputs(past))["past"].shape == (1, 12, 0, 64)


def test_ranges_come_first():
    model = _model(
        ("sr", TensorProto.INT64, []),
        ("audio", TensorProto.FLOAT, [1, 512]),
        ("attention_mask", TensorProto.INT64, [1, 8]),
        ("ids", TensorProto.INT32, [1, 1000]),
    )
    feeds = generate(
        model,
        graph_inputs(model),
        ranges={"sr": (16000, 16000), "audio": (-0.5, 0.25), "attention_mask": (0, 1), "ids": (5, 7)},
    )
    assert feeds["sr"] == 16000 and feeds["sr"].dtype == np.int64
    assert feeds["audio"].min() >= -0.5 and feeds["audio"].max() < 0.25
    assert set(np.unique(feeds["ids"])) == {5, 6, 7}  # inclusive
    assert set(np.unique(feeds["attention_mask"])) == {0, 1}
    with pytest.raises(InputError, match="holds no int32 value"):
        generate(model, graph_inputs(model), ranges={"ids": (0.2, 0.8)})
    warnings = []  # a misspelt name was ignored in silence
    generate(model, graph_inputs(model), ranges={"idz": (1, 2), "ids": (1, 2)}, warnings=warnings)
    assert warnings == ["ranges idz: the model has no input of that name"]


def test_check_prints_the_image_note_and_records_it(tmp_path):
    path = tmp_path / "img.onnx"
    onnx.save(_model(("x", TensorProto.FLOAT, ["-1", 3, "?", "?"])), path)
    r = cli("check", path, *FAST, "--image-size", "16", "--min-elements", "0", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    assert "note: input x looks like an image [N, C, H, W]" in r.stdout
    inputs = json.loads((tmp_path / "r.json").read_text())["inputs"]
    assert inputs["shapes"] == {"x": [1, 3, 16, 16]} and len(inputs["notes"]) == 1


def test_inputs_are_drawn_in_their_own_width():
    # A float32 input of 64 MB once took 128 MB of float64 draws first; a
    # range as wide as float32's own must still give finite values in it.
    import tracemalloc

    n = 1 << 24
    model = _model(
        ("big", TensorProto.FLOAT, [n]),
        ("ids", TensorProto.INT32, [n]),
        ("wide", TensorProto.FLOAT, [1000]),
        ("half", TensorProto.FLOAT16, [1000]),
        ("double", TensorProto.DOUBLE, [1000]),
        ("flag", TensorProto.BOOL, [1000]),
    )
    tracemalloc.start()
    try:
        feeds = generate(model, graph_inputs(model), ranges={"wide": (-3e38, 3e38), "double": (-1e308, 1e308)})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * 4 * n, peak  # big and ids, 4 bytes each, and little else
    assert feeds["big"].dtype == np.float32 and 0.5 < feeds["big"].std() < 1.5
    assert feeds["ids"].dtype == np.int32 and feeds["ids"].min() >= 0
    wide = feeds["wide"]
    assert np.isfinite(wide).all() and wide.min() < -1e37 and wide.max() > 1e37
    assert feeds["half"].dtype == np.float16 and np.isfinite(feeds["half"]).all()
    # A width float64 cannot hold (review: all inf and NaN).
    double = feeds["double"]
    assert double.dtype == np.float64 and np.isfinite(double).all() and double.min() < -1e307 < 1e307 < double.max()
    assert feeds["flag"].dtype == np.bool_ and 0 < feeds["flag"].sum() < 1000


def test_a_dim_of_zero_gives_an_empty_kv_cache():
    # A decoder's first step reads an empty past (fresh-user run: `--dim p=0`
    # was refused as not a positive size, so generated inputs could not cover it).
    from quake_onnx.check.inputs import parse_dims

    model = _model(("past_key", TensorProto.FLOAT, ["batch", 2, "past", 16]), ("x", TensorProto.FLOAT, ["batch", 4]))
    feeds = generate(model, graph_inputs(model), dims=parse_dims(["batch=1", "past=0"]))
    assert feeds["past_key"].shape == (1, 2, 0, 16) and feeds["x"].shape == (1, 4)
    with pytest.raises(InputError, match="integer size of 0 or more"):
        parse_dims(["past=-1"])


def test_a_report_with_a_dim_of_zero_is_valid(tmp_path):
    # Review: the schema still asked dims >= 1, so `--dim n=0` wrote a report
    # that failed its own schema.
    from checktools import validate

    path = tmp_path / "m.onnx"
    onnx.save(_model(("x", TensorProto.FLOAT, [1, "n"])), str(path))
    r = cli("check", str(path), "--dim", "n=0", "--runs", "1", "--warmup", "0", "--json", str(tmp_path / "r.json"))
    assert r.exit_code == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["inputs"]["dims"] == {"n": 0}
    validate(report, ref="#/$defs/model")
