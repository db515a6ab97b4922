"""The pieces of check: metrics, input generation and data sets, S(t), thresholds."""

import math
import warnings

import numpy as np
import onnx
import pytest
from checktools import ZOO
from onnx import TensorProto, helper, numpy_helper

from quake_onnx.check import compare as cmp
from quake_onnx.check.inputs import InputError, generate, graph_inputs, load_inputs, parse_dims
from quake_onnx.check.runner import Thresholds, error_result, finish, summarize
from quake_onnx.check.zoo import Entry, discover, score, shard

# -- compare -----------------------------------------------------------------


def test_metrics_of_a_known_difference():
    ref = np.array([[1.0, -2.0, 0.0, 4.0]], np.float32)
    out = np.array([[1.5, -2.0, 0.001, 4.0]], np.float32)
    m = cmp.compare("hidden", ref[None], out[None])  # rank 3, no score name: not scores
    assert m.max_abs_error == pytest.approx(0.5)
    # 0.5 / |1| ; the 0.001 next to 0 is measured against the floor 1e-3 * 4
    assert m.max_rel_error == pytest.approx(0.5)
    r64, o64 = ref.ravel().astype(np.float64), out.ravel().astype(np.float64)
    expected = float(np.dot(r64, o64) / np.linalg.norm(r64) / np.linalg.norm(o64))
    assert m.cosine == pytest.approx(expected, rel=1e-12)
    assert not m.scores and m.top1_agreement is None


def test_relative_error_floor():
    ref = np.array([0.0, 1e-9, 10.0])
    out = np.array([0.0, 2e-9, 10.0])
    assert cmp.compare("x", ref[None, None], out[None, None]).max_rel_error == pytest.approx(1e-9 / 1e-2)


def test_top1_and_topk_agreement_per_row():
    ref = np.array([[0.1, 0.9, 0.0, 0.3], [0.8, 0.1, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]])
    out = ref.copy()
    out[2] = [0.4, 0.3, 0.2, 0.1]  # third row reversed: argmax moves, top-2 sets disjoint
    m = cmp.compare("logits", ref, out, top_k=2)
    assert m.scores and m.rows == 3 and m.k == 2
    assert m.top1_agreement == pytest.approx(2 / 3)
    assert m.topk_agreement == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "name, shape, dtype, expected",
    [
        ("logits", (1, 32, 256), np.float32, True),
        ("output", (1, 1000), np.float32, True),  # a classifier head's [batch, classes]
        ("last_hidden_state", (1, 32, 64), np.float32, False),
        ("probs", (4, 1), np.float32, False),  # one class: no argmax to compare
        ("labels", (1, 10), np.int64, False),
    ],
)
def test_looks_like_scores(name, shape, dtype, expected):
    assert cmp.looks_like_scores(name, shape, np.dtype(dtype)) is expected


def test_nonfinite_values_count_as_mismatch_unless_the_same():
    ref = np.array([1.0, np.inf, -np.inf, 2.0, np.nan, np.inf])
    out = np.array([1.0, np.inf, -np.inf, np.nan, np.nan, np.nan])
    m = cmp.compare("x", ref[None, None], out[None, None])
    assert m.nonfinite_mismatch == 2  # NaN for 2.0, NaN for inf; NaN for NaN agrees
    assert m.to_dict()["max_abs_error"] == "inf" and m.to_dict()["cosine"] == "nan"
    same = cmp.compare("x", ref[None, None, :3], out[None, None, :3])
    assert same.nonfinite_mismatch == 0 and same.max_abs_error == 0.0


def test_a_number_where_the_original_has_nan_is_no_mismatch():
    # A fully masked Softmax row: NaN in ONNX Runtime, 0 in the com.quake op.
    ref = np.array([[0.25, 0.75], [np.nan, np.nan], [1.0, np.inf]])
    out = np.array([[0.25, 0.7501], [0.0, 0.0], [1.0, np.inf]])
    m = cmp.compare("p", ref, out, scores=False)
    assert (m.nonfinite_mismatch, m.original_nan) == (0, 2)
    assert m.max_abs_error == pytest.approx(1e-4) and m.cosine > 0.99
    # The reverse, NaN in the output where the original has a number, still fails.
    back = cmp.compare("p", out, ref, scores=False)
    assert (back.nonfinite_mismatch, back.original_nan) == (2, 0)
    merged = cmp.merge([m, m])
    assert (merged.nonfinite_mismatch, merged.original_nan) == (0, 4)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        cmp.compare("y", np.zeros((2, 3)), np.zeros((3, 2)))


def test_merge_takes_the_worst_and_pools_rows():
    a = cmp.compare("logits", np.array([[0.0, 1.0]]), np.array([[0.0, 1.1]]))
    b = cmp.compare("logits", np.array([[0.0, 1.0], [1.0, 0.0]] * 2), np.array([[1.0, 0.0], [1.0, 0.0]] * 2))
    m = cmp.merge([a, b])
    assert m.max_abs_error == b.max_abs_error and m.cosine == b.cosine
    assert m.rows == 5 and m.top1_agreement == pytest.approx((1 + 2) / 5)


def test_an_empty_output_compares_equal_with_no_agreement_and_no_warnings():
    # A score-shaped output with no rows: nothing differs, and there is no
    # row to take an agreement over (None, not NaN; numpy's mean of an empty
    # slice would warn).
    ref = np.zeros((0, 128), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = cmp.compare("y", ref, ref.copy())
        assert m.scores and m.rows == 0 and m.k == 5
        assert m.top1_agreement is None and m.topk_agreement is None
        assert (m.max_abs_error, m.max_rel_error, m.cosine, m.nonfinite_mismatch) == (0.0, 0.0, 1.0, 0)
        both_empty = cmp.merge([m, m])
        assert both_empty.rows == 0 and both_empty.top1_agreement is None and both_empty.topk_agreement is None
        rows = cmp.compare("y", np.eye(2, 128), np.eye(2, 128)[::-1])
        pooled = cmp.merge([m, rows])
        assert pooled.rows == 2 and pooled.top1_agreement == 0.0
    assert summarize([m.to_dict()])["min_top1_agreement"] is None
    assert summarize([m.to_dict(), rows.to_dict()])["min_top1_agreement"] == 0.0  # outputs with rows decide


# -- thresholds --------------------------------------------------------------


def _result(max_abs=1e-3, cosine=0.9999, top1=1.0, speedup=1.2, nonfinite=0):
    out = {
        "name": "logits",
        "max_abs_error": max_abs,
        "max_rel_error": 0.0,
        "cosine": cosine,
        "nonfinite_mismatch": nonfinite,
        "scores": True,
        "top1_agreement": top1,
    }
    r = {"status": "pass", "outputs": [out], "timing": {"speedup": speedup}}
    r["summary"] = summarize(r["outputs"])
    return r


@pytest.mark.parametrize(
    "thresholds, result_kw, failing",
    [
        (Thresholds(1e-2, 0.999, 0.9, 1.1), {}, []),
        (Thresholds(max_abs_error=1e-4), {}, ["max abs error"]),
        (Thresholds(min_cosine=0.99999), {}, ["cosine"]),
        (Thresholds(min_top1_agreement=0.95), {"top1": 0.9}, ["top-1 agreement"]),
        (Thresholds(min_speedup=2), {}, ["speedup"]),
        (Thresholds(), {"nonfinite": 3, "max_abs": "inf", "cosine": "nan"}, ["non-finite"]),
        (Thresholds(1e-4, 0.99999, None, 2), {}, ["max abs error", "cosine", "speedup"]),
    ],
)
def test_each_threshold_fails_on_its_own(thresholds, result_kw, failing):
    r = _result(**result_kw)
    finish(r, thresholds)
    assert [f.split(" ")[0] for f in r["failures"]] == [f.split(" ")[0] for f in failing]
    assert r["status"] == ("fail" if failing else "pass")
    assert r["accurate"] == (not any(f != "speedup" for f in failing))


# -- S(t) --------------------------------------------------------------------


def _scored(speedup, accurate=True):
    r = _result(max_abs=1e-3 if accurate else 1.0, speedup=speedup)
    finish(r, Thresholds(max_abs_error=1e-2))
    return r


def test_score_definition():
    th = Thresholds(max_abs_error=1e-2)
    results = [_scored(2.0), _scored(0.5), _scored(4.0)]
    assert score(results, th)["value"] == pytest.approx(math.exp((math.log(2) + math.log(0.5) + math.log(4)) / 3))
    results.append(_scored(8.0, accurate=False))  # fast but wrong: the penalty, not 8
    results.append(error_result("x.onnx", "x", "load", "broken"))
    s = score(results, th, penalty=0.1)
    assert s["value"] == pytest.approx((2 * 0.5 * 4 * 0.1 * 0.1) ** (1 / 5))
    assert s["within"] == 3 and s["models"] == 5
    assert s["geomean_speedup_within"] == pytest.approx(4 ** (1 / 3))
    assert s["value"] == pytest.approx(s["geomean_speedup_within"] ** (3 / 5) * 0.1 ** (2 / 5))
    assert score([], th) is None


def test_speedup_threshold_failures_keep_their_speedup_in_the_score():
    r = _scored(0.9)
    finish(r, Thresholds(max_abs_error=1e-2, min_speedup=1.5))
    assert r["status"] == "fail"
    assert score([r], Thresholds(max_abs_error=1e-2))["value"] == pytest.approx(0.9)


def test_shard_scores_combine_exactly():
    th = Thresholds(max_abs_error=1e-2)
    results = [_scored(s, accurate=s != 3.0) for s in (1.5, 0.8, 3.0, 1.1, 2.2)]
    whole = score(results, th)
    parts = [score(results[:2], th), score(results[2:], th)]
    merged = math.exp(sum(p["log_sum"] for p in parts) / sum(p["models"] for p in parts))
    assert merged == pytest.approx(whole["value"])


def test_score_curve_tightens():
    results = [_result(max_abs=e) for e in (5e-2, 5e-3, 5e-4)]
    curve = {c["max_abs_error"]: c["within"] for c in score(results, Thresholds())["curve"]}
    assert curve == {1e-1: 3, 1e-2: 2, 1e-3: 1, 1e-4: 0, 1e-5: 0}


# -- shards and discovery ----------------------------------------------------


def test_shard_is_round_robin_over_the_sorted_list():
    entries = [Entry(f"m{i}", None) for i in range(7)]
    assert [e.name for e in shard(entries, 1, 3)] == ["m0", "m3", "m6"]
    assert [e.name for e in shard(entries, 3, 3)] == ["m2", "m5"]


def test_discovery_names_and_skips(tmp_path):
    for rel in ("b/model.onnx", "a.onnx", "a/model.onnx", "c/x.quake.onnx", ".hidden/m.onnx", "d/e/f.onnx"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [e.name for e in discover(tmp_path)] == ["a", "a/model.onnx", "b", "d/e/f"]


# -- inputs ------------------------------------------------------------------


def _ids_model(vocab=50):
    table = numpy_helper.from_array(np.zeros((vocab, 4), np.float32), "emb")
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["token_type_ids"], ["t"]),
        helper.make_node("Identity", ["position_ids"], ["p"]),
        helper.make_node("Identity", ["pixel"], ["x"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "seq"]),
            helper.make_tensor_value_info("token_type_ids", TensorProto.INT32, ["batch_size", "seq"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "seq"]),
            helper.make_tensor_value_info("pixel", TensorProto.FLOAT, [1, 3]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("e", "m", "x")]
        + [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in ("p",)]
        + [helper.make_tensor_value_info("t", TensorProto.INT32, None)],
        initializer=[table],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_generated_inputs_follow_names_and_tables():
    model = _ids_model(vocab=50)
    warnings = []
    feeds = generate(model, graph_inputs(model), dims={"seq": 64}, seed=3, warnings=warnings)
    assert feeds["input_ids"].shape == (1, 64)  # batch_size defaults to 1
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].max() < 50 and feeds["input_ids"].max() > 25
    assert (feeds["attention_mask"] == 1).all()
    assert (feeds["token_type_ids"] == 0).all() and feeds["token_type_ids"].dtype == np.int32
    assert feeds["position_ids"].tolist() == [list(range(64))]
    assert feeds["pixel"].dtype == np.float32 and feeds["pixel"].shape == (1, 3)
    again = generate(model, graph_inputs(model), dims={"seq": 64}, seed=3)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert warnings == []


def test_vocab_option_bounds_ids_and_warns_above_the_table():
    model = _ids_model(vocab=50)
    warnings = []
    feeds = generate(model, graph_inputs(model), dims={"seq": 500}, vocab=5, warnings=warnings)
    assert feeds["input_ids"].max() < 5
    generate(model, graph_inputs(model), dims={"seq": 8, "nope": 2}, vocab=80, warnings=warnings)
    assert any("--vocab 80" in w for w in warnings) and any("--dim nope" in w for w in warnings)


def test_unset_symbolic_dimension_names_the_option():
    model = _ids_model()
    with pytest.raises(InputError, match="--dim seq=SIZE"):
        generate(model, graph_inputs(model))


def test_parse_dims():
    assert parse_dims(["batch=2", " seq = 128"]) == {"batch": 2, "seq": 128}
    for bad in ("seq", "=3", "seq=-1", "seq=x"):
        with pytest.raises(InputError):
            parse_dims([bad])


def test_data_set_tensors_match_by_name_or_position(tmp_path):
    model = onnx.load(ZOO / "bert_encoder" / "model.onnx")
    (tmp_path / "test_data_set_0").mkdir()
    ids = np.arange(8, dtype=np.int64).reshape(1, 8)
    mask = np.ones((1, 8), np.int64)
    # stored in reverse order with names: matched by name
    (tmp_path / "test_data_set_0" / "input_0.pb").write_bytes(
        numpy_helper.from_array(mask, "attention_mask").SerializeToString()
    )
    (tmp_path / "test_data_set_0" / "input_1.pb").write_bytes(
        numpy_helper.from_array(ids, "input_ids").SerializeToString()
    )
    (tmp_path / "test_data_set_10").mkdir()  # sorted naturally: after test_data_set_2
    (tmp_path / "test_data_set_2").mkdir()
    for d, arrays in (("test_data_set_10", (ids, mask)), ("test_data_set_2", (ids + 1, mask))):
        for i, a in enumerate(arrays):  # unnamed: by position
            (tmp_path / d / f"input_{i}.pb").write_bytes(numpy_helper.from_array(a).SerializeToString())
    got = load_inputs(model, tmp_path / "model.onnx")
    assert got.source == "test_data_set" and [s.name for s in got.sets] == [
        "test_data_set_0",
        "test_data_set_2",
        "test_data_set_10",
    ]
    assert np.array_equal(got.sets[0].feeds["input_ids"], ids)
    assert np.array_equal(got.sets[1].feeds["input_ids"], ids + 1)


def test_data_set_with_the_wrong_input_count_is_an_input_error(tmp_path):
    model = onnx.load(ZOO / "bert_encoder" / "model.onnx")
    (tmp_path / "test_data_set_0").mkdir()
    (tmp_path / "test_data_set_0" / "input_0.pb").write_bytes(
        numpy_helper.from_array(np.zeros((1, 2), np.int64)).SerializeToString()
    )
    with pytest.raises(InputError, match="has 1 input_"):
        load_inputs(model, tmp_path / "model.onnx")


@pytest.mark.parametrize("threads, settles", [(1, 0), (2, 8)])
def test_timing_waits_for_spinning_pools_only_with_threads(monkeypatch, threads, settles):
    from quake_onnx.check import timing

    calls = []
    monkeypatch.setattr(timing, "settle", lambda: calls.append("settle"))

    class Session:
        def __init__(self, name):
            self.name = name

        def run(self, outputs, feeds):
            calls.append(self.name)

    t = timing.measure(Session("a"), Session("b"), {}, threads=threads, warmup=1, runs=4)
    assert t.runs == 4 and calls.count("settle") == settles
    timed = [c for c in calls[2:] if c != "settle"]
    assert timed == ["a", "b", "b", "a"] * 2  # each first every other run
    if threads > 1:  # every timed run right after a wait
        assert calls[2:] == ["settle", "a", "settle", "b", "settle", "b", "settle", "a"] * 2


def test_nan_rows_have_no_top1_to_agree_on():
    """An all-NaN original row (a Softmax of a fully -inf mask) 'agreed' with a
    row of zeros, both argmax 0: top-1 1.000 beside a non-finite mismatch
    (fresh-user run). The original's NaN rows are out of the agreement; a NaN
    row of the output agrees with nothing."""
    ref = np.full((4, 10), np.nan, np.float32)
    out = np.zeros((4, 10), np.float32)
    m = cmp.compare("probs", ref, out, scores=True)
    assert m.rows == 0 and m.top1_agreement is None and m.topk_agreement is None
    ref = np.tile(np.arange(10, dtype=np.float32), (4, 1))
    out = ref.copy()
    out[1, 3] = np.nan
    m = cmp.compare("probs", ref, out, scores=True, top_k=3)
    assert m.rows == 4 and m.top1_agreement == 0.75 and m.topk_agreement == 0.75


def test_markdown_cells_show_html_specials_as_text():
    # Fresh-user run: a model named a&b<c>"q" went into the table raw, and
    # GitHub took <c> for a tag.
    from quake_onnx.check.reports import md_cell

    assert md_cell('a&b<c>"q"|x\ny') == 'a&amp;b&lt;c&gt;"q"\\|x y'


def test_timing_runs_each_session_once_untimed_even_at_warmup_0(monkeypatch):
    # Review: at --warmup 0 and --runs 1-2 the first, cold run alone made a
    # model against itself read 2-3x.
    from quake_onnx.check import timing

    calls = []

    class Session:
        def __init__(self, name):
            self.name = name

        def run(self, outputs, feeds):
            calls.append(self.name)

    timing.measure(Session("a"), Session("b"), {}, threads=1, warmup=0, runs=1)
    assert calls == ["a", "b", "a", "b"]
