"""Tiny models for the rewrite tests, ONNX Runtime sessions, and the checks every rule's test repeats."""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import quake_onnx
from quake_onnx.rewrite import rewrite_model
from quake_onnx.schemas import register_schemas

F32, F16, F64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE
NP = {F32: np.float32, F16: np.float16, F64: np.float64}

# ops.md error budgets (order 2, float32), max abs error unless stated.
SOFTMAX_ATOL = 2e-3
SIGMOID_ATOL = 1e-3
GELU_TANH_ATOL = 2e-3
GELU_ERF_ATOL = 2e-3 + 4.8e-4
EXP_RTOL = 2e-3


class Graph:
    """Collects nodes and constants; `node` returns the output name so patterns nest like the math."""

    def __init__(self, dtype: int = F32):
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, value, name: Optional[str] = None, dtype=None) -> str:
        name = name or f"c{len(self.inits)}"
        array = np.asarray(value, dtype=dtype or NP[self.dtype])
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(
        self, op: str, inputs: Sequence[str], name: Optional[str] = None, domain: str = "", outputs=None, **attrs
    ) -> str:
        name = f"{op.lower()}_{len(self.nodes)}" if name is None else name
        outputs = outputs or [f"{name}_out"]
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=name, domain=domain, **attrs))
        return outputs[0]

    def model(
        self,
        inputs: dict,
        outputs,
        opset: int = 20,
        extra_opsets: Sequence[tuple[str, int]] = (),
    ) -> onnx.ModelProto:
        """inputs: name -> shape or (shape, elem type). outputs: names (shaped like the first
        input: every op under test keeps shapes) or name -> shape. The checker wants a shape
        on every graph input and output."""

        def info(name, spec):
            shape, elem = spec if isinstance(spec, tuple) else (spec, self.dtype)
            return helper.make_tensor_value_info(name, elem, shape)

        first = next(iter(inputs.values()))
        first = first[0] if isinstance(first, tuple) else first
        if not isinstance(outputs, dict):
            outputs = {name: first for name in outputs}
        graph = helper.make_graph(
            self.nodes,
            "test",
            [info(n, s) for n, s in inputs.items()],
            [info(n, s) for n, s in outputs.items()],
            initializer=self.inits,
        )
        opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
        return helper.make_model(graph, opset_imports=opsets, ir_version=9, producer_name="rewrite-tests")


def op_types(model: onnx.ModelProto) -> list[str]:
    return [f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in model.graph.node]


@functools.lru_cache(maxsize=None)
def _session(serialized: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(quake_onnx.get_library_path())
    # Both models run as written: ORT's own fusions must not stand in for the rewrite.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return _session(model.SerializeToString()).run(None, feeds)


def sample(shape, dtype=np.float32, scale: float = 3.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def check_rewrite(
    model: onnx.ModelProto,
    expected_ops: list[str],
    feeds: dict[str, np.ndarray],
    atol: float = 0.0,
    rtol: float = 0.0,
    **options,
):
    """Rewrite, then assert: the exact op types, the full onnx check, outputs within the bounds,
    the input model untouched, and a second pass that changes nothing. Returns (model, report)."""
    before = model.SerializeToString()
    out, report = rewrite_model(model, **options)
    assert model.SerializeToString() == before, "rewrite_model mutated its input"
    assert op_types(out) == expected_ops
    register_schemas()
    onnx.checker.check_model(out, full_check=True)
    if feeds:
        for want, got in zip(run(model, feeds), run(out, feeds)):
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), atol=atol, rtol=rtol)
    again, second = rewrite_model(out, **options)
    assert not second.replaced
    assert again.SerializeToString() == out.SerializeToString()
    return out, report


def decision(report, rule: str):
    found = [d for d in report.decisions if d.rule == rule]
    assert len(found) == 1, report.decisions
    return found[0]


def assert_untouched(model: onnx.ModelProto, rule: str, reason: str, **options):
    """The pass leaves the model as it was and reports `reason` (a substring) for `rule`."""
    out, report = rewrite_model(model, **options)
    assert op_types(out) == op_types(model)
    assert not any(o.domain == "com.quake" for o in out.opset_import)
    d = decision(report, rule)
    assert not d.replaced and reason in d.reason, d
    return report
