"""The real measuring path of `quake-onnx tune` (bench.py, check/paired.py) on
small sample models, and `check` / `zoo` with tuned models. Smoke tests:
they check what was measured and written, never how fast anything is."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from tunetools import SAMPLES, cli, validate

import quake_onnx
from quake_onnx.check import compare as cmp
from quake_onnx.check.paired import Paired, rotated_batches, session_batches, settle, time_rounds
from quake_onnx.tuning import TUNED_ON

ENCODER = SAMPLES / "encoder_block.onnx"


def encoder_feeds(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((1, 64, 128)).astype(np.float32), "MASK": np.zeros((1, 1, 64, 64), np.float32)}


def test_real_timing_path(tmp_path):
    out = tmp_path / "encoder.tuned.onnx"
    started = time.monotonic()
    model, report = quake_onnx.tune(ENCODER, out, inputs=[encoder_feeds(0)], budget=20, rounds=4, min_cosine=0.999)
    took = time.monotonic() - started
    validate(report)
    assert report["budget"]["elapsed"] <= 20 + 5 and took < 60  # one step may overrun its estimate
    assert report["inputs"] == {"source": "feeds", "sets": 1, "shapes": {"X": [1, 64, 128], "MASK": [1, 1, 64, 64]}}
    assert report["groups"] and all(g["tried"] for g in report["groups"] if "not tried" not in g["reason"])
    measured = [c for c in report["configurations"] if c["status"] == "measured"]
    assert measured and all(c["speedup"]["rounds"] == 4 for c in measured)
    assert report["machine"]["cpu"] and report["environment"]["onnxruntime"]
    assert out.is_file()
    if report["result"] == "tuned":
        assert {p.key: p.value for p in onnx.load(out).metadata_props}[TUNED_ON] == report["machine"]["cpu"]
        assert report["final"]["speedup"]["q1"] > 1
        # within the tolerance on inputs it did not see too
        fresh = encoder_feeds(1)
        ref = quake_onnx.InferenceSession(str(ENCODER)).run(None, fresh)[0]
        got = quake_onnx.InferenceSession(str(out)).run(None, fresh)[0]
        assert cmp.compare("Y", ref, got).cosine >= 0.999
    else:
        assert out.read_bytes() == ENCODER.read_bytes()


def test_time_rounds_alternates_and_pairs():
    calls = []

    class Sleeper:
        def __init__(self, name, seconds):
            self.name, self.seconds = name, seconds

        def run(self, outputs, feeds):
            calls.append(self.name)
            time.sleep(self.seconds)

    # 5x apart, not 2x: on these VMs a 2 ms sleep once took 5 ms (a round read 0.76, CI failed).
    sessions = {"a": [Sleeper("a0", 0.010), Sleeper("a1", 0.010)], "b": [Sleeper("b0", 0.002), Sleeper("b1", 0.002)]}
    rounds = time_rounds(sessions, {}, 4, 0.0, 2, retries=0, warmup=1)
    assert [len(v) for v in rounds.medians.values()] == [4, 4] and rounds.runs == {"a": 8, "b": 8}
    timed = [c for c in calls[4:]]  # after one warm-up run of each instance
    assert timed[:4] == ["a0", "a0", "b0", "b0"] and timed[4:8] == ["b1", "b1", "a1", "a1"]  # rotated, instance r % 2
    p = Paired(tuple(a / b for a, b in zip(rounds.medians["a"], rounds.medians["b"])))
    assert p.median > 1.3 and p.faster


class FakeTime:
    """time as settle() sees it: each sleep advances the wall clock by its length and
    this process's CPU time by the next of `cpu_per_step` (seconds)."""

    def __init__(self, cpu_per_step):
        self.cpu_per_step, self.wall, self.cpu = list(cpu_per_step), 0.0, 0.0

    def perf_counter(self):
        return self.wall

    def process_time(self):
        return self.cpu

    def sleep(self, seconds):
        self.wall += seconds
        self.cpu += self.cpu_per_step.pop(0) if self.cpu_per_step else 0.0


@pytest.mark.parametrize(
    "cpu_per_step, waited",
    [
        ([0.0], 0.005),  # idle: one step
        ([0.005] * 8 + [0.0001], 0.045),  # a pool spinning 40 ms, then quiet
        ([0.005, 0.001, 0.0], 0.015),  # 20 % of a core is not quiet yet
        ([0.005] * 1000, 0.5),  # never quiet: the limit
    ],
)
def test_settle_waits_until_the_process_is_quiet(monkeypatch, cpu_per_step, waited):
    monkeypatch.setattr("quake_onnx.check.paired.time", FakeTime(cpu_per_step))
    assert settle() == pytest.approx(waited)


def test_rotated_batches_rotate_and_settle(monkeypatch):
    calls = []
    settled = []
    monkeypatch.setattr("quake_onnx.check.paired.settle", lambda: settled.append(len(calls)))
    batches = {k: (lambda k=k: calls.append(k) or float(len(calls))) for k in "abc"}
    times = rotated_batches(batches, 3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert settled == list(range(10))  # before the first batch and after every batch
    assert times == {"a": [1.0, 6.0, 8.0], "b": [2.0, 4.0, 9.0], "c": [3.0, 5.0, 7.0]}


def test_session_batches_warm_up_and_size_on_the_first_session(monkeypatch):
    class Session:
        def __init__(self, seconds):
            self.seconds, self.runs = seconds, 0

        def run(self, outputs, feeds):
            self.runs += 1
            clock[0] += self.seconds

    clock = [0.0]
    monkeypatch.setattr("quake_onnx.check.paired.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr("quake_onnx.check.paired.settle", lambda: None)
    a, b = Session(2**-7), Session(2**-5)  # exact in binary: the batch size is exactly budget / 2^-7
    batches, runs = session_batches({"a": a, "b": b}, {}, budget=0.5)
    assert runs == 64 and (a.runs, b.runs) == (6, 3)  # warm-ups, then 3 runs of a to size the batch
    assert batches["b"]() == 2**-5 and b.runs == 67
    assert batches["a"]() == 2**-7 and a.runs == 70


def test_paired_statistics():
    p = Paired((1.0, 1.1, 1.2, 1.3, 1.4))
    assert p.median == 1.2 and p.quartiles == (1.05, 1.35) and p.faster and not p.slower
    assert Paired((0.9, 1.1, 1.0, 1.05)).faster is False
    assert Paired((0.8, 0.9, 0.85, 0.88)).slower
    assert p.inverse().median == 1 / 1.2
    assert Paired((1.2, 1.3)).quartiles == (1.2, 1.3)
    assert p.to_dict() == {"median": 1.2, "q1": 1.05, "q3": 1.35, "rounds": 5}


def _tuned_elsewhere(src, dest, cpu="Some Other CPU (family 1 model 2)"):
    model = onnx.load(src)
    entry = model.metadata_props.add()
    entry.key, entry.value = TUNED_ON, cpu
    onnx.save(model, dest)


def test_check_warns_about_a_model_tuned_on_another_cpu(tmp_path):
    bert = SAMPLES / "zoo" / "bert_encoder" / "model.onnx"
    other = tmp_path / "tuned.onnx"
    _tuned_elsewhere(bert, other)
    result = cli("check", bert, "--optimized", other, "--runs", "2", "--warmup", "0")
    assert result.exit_code == 0, result.stderr
    assert "the optimized model was tuned on Some Other CPU (family 1 model 2), this CPU is" in result.stderr
    here = tmp_path / "here.onnx"
    _tuned_elsewhere(bert, here, cpu=quake_onnx.bench.machine.cpu_model())
    result = cli("check", bert, "--optimized", here, "--runs", "2", "--warmup", "0")
    assert "tuned on" not in result.stderr


def test_zoo_warns_about_a_model_tuned_on_another_cpu(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    _tuned_elsewhere(SAMPLES / "zoo" / "legacy_opset11" / "model.onnx", zoo / "m.onnx")
    result = cli("zoo", zoo, "--runs", "2", "--warmup", "0", "--max-abs-error", "0.05")
    assert "warning: m: the model was tuned on Some Other CPU" in result.stderr


def test_zoo_tune(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "m.onnx").write_bytes(ENCODER.read_bytes())
    report = tmp_path / "zoo.json"
    result = cli(
        "zoo",
        zoo,
        "--tune",
        "--tune-budget",
        "5",
        "--tune-attention-precision",
        "float32",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--json",
        report,
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    data = json.loads(report.read_text())
    (model,) = data["models"]
    assert data["settings"]["tune"] == 5
    tuned = model["optimized"]["tune"]
    assert model["optimized"]["source"] == "tuned now" and tuned["budget"] == 5
    # float32 asked for: tune built no bfloat16 configuration.
    assert tuned["attention_precision"] == "float32"
    assert tuned["configuration"] is None or tuned["configuration"]["attention_precision"] != "bfloat16"
    assert model["status"] == "pass"
    from checktools import validate as validate_zoo

    validate_zoo(data)


def silu_cnn(path) -> dict:
    """Conv (a 147 KB weight, which tune sets aside while it searches) -> SiLU as
    x * Sigmoid(x) -> GlobalAveragePool: ORT lays the Conv out at level all, so the
    layout rule looks at the Conv and its weight."""
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array((rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32), "W")
    nodes = [
        onnx.helper.make_node("Conv", ["X", "W"], ["c"], pads=[1, 1, 1, 1]),
        onnx.helper.make_node("Sigmoid", ["c"], ["s"]),
        onnx.helper.make_node("Mul", ["c", "s"], ["m"]),
        onnx.helper.make_node("GlobalAveragePool", ["m"], ["Y"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "silu_cnn",
        [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [1, 64, 32, 32])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1, 64, 1, 1])],
        [w],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    return {"X": rng.standard_normal((1, 64, 32, 32)).astype(np.float32)}


def test_weights_set_aside_are_never_read_by_the_rewrite(tmp_path):
    # Regression: the layout rule asked a Conv weight for its element type, which
    # loaded its bytes; set aside by tune, they were not there (EfficientNet-B0 failed).
    src = tmp_path / "cnn.onnx"
    feeds = silu_cnn(src)
    _, report = quake_onnx.tune(src, tmp_path / "cnn.tuned.onnx", inputs=[feeds], budget=20, rounds=4)
    validate(report)
    assert report["result"] in ("tuned", "original")
    assert {c["ort_level"] for c in report["configurations"]} >= {"all", "extended"}
