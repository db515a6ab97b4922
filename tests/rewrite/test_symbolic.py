"""quake_onnx.rewrite.symbolic: run-time sizes derived from the model's input
dimensions where onnx shape inference leaves fresh names, and None (no
claim) wherever a size is not the same for every input."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto

from quake_onnx.rewrite.context import Context, Names
from quake_onnx.rewrite.scopes import Scopes
from quake_onnx.rewrite.symbolic import ONE, Expr, Sizes
from quake_onnx.rewrite.types import TypeTable

from .builders import Graph
from .decoder_export import llama_export


def sizes_of(model: onnx.ModelProto):
    scopes = Scopes(gs.import_onnx(model))
    ctx = Context(scope=scopes.main, scopes=scopes, opset=17, order=2, types=TypeTable(model), names=Names())
    return Sizes(ctx), scopes.main.graph.tensors()


def e(**terms) -> Expr:
    const = terms.pop("const", 0)
    return Expr(tuple(sorted(terms.items())), const)


def test_expr_arithmetic():
    a = Expr.of("past") + Expr.of("seq")
    assert a - Expr.of("seq") == Expr.of("past")
    assert (a - a).is_const and (a - a).const == 0
    assert a.nonnegative() and not (Expr.of("seq") - ONE).nonnegative()
    assert str(a.scaled(2) - Expr.of(3)) == "2*past + 2*seq - 3"


def test_decode_layer_sizes():
    # The export's fresh names (unk__...) resolved: the cache Concat is past + seq, the scores
    # [batch, 6, seq, past + seq], the computed Expand target of the mask and of repeat_kv.
    model, block, _ = llama_export(past=True)
    sizes, tensors = sizes_of(model)
    nodes = {n.name: n for n in model.graph.node}
    scores = tensors[nodes[block[0]].output[0]]
    assert sizes.dims(scores) == [Expr.of("batch"), Expr.of(6), Expr.of("seq"), e(past=1, seq=1)]
    assert sizes.dim(tensors["present_key"], 2) == e(past=1, seq=1)
    q = tensors[nodes[block[0]].input[0]]
    assert sizes.dim(q, 1) == Expr.of(6)  # Reshape(x, [B, S, -1, 8]) of [B, S, 48]: the -1 is 6
    expands = [n for n in model.graph.node if n.op_type == "Expand"]
    mask_target = sizes.value(tensors[expands[0].input[1]])
    # [B, -1, Sq, Skv] with torch's -1 handled by Where(Equal(s, -1), 1, s): -1 is never a dimension
    assert mask_target.items == [Expr.of("batch"), ONE, Expr.of("seq"), e(past=1, seq=1)]
    kv_target = sizes.value(tensors[expands[1].input[1]])
    assert kv_target.items == [Expr.of("batch"), Expr.of(2), Expr.of(3), e(past=1, seq=1), Expr.of(8)]


def _dim(g: Graph, x: str, axis: int) -> str:
    return g.node("Gather", [g.node("Shape", [x]), g.const(axis, dtype=np.int64)], axis=0)


def _i64(g: Graph, value) -> str:
    return g.const(value, dtype=np.int64)


@pytest.mark.parametrize(
    "build, axis, want",
    [
        # Range(1, n): n - 1 may be negative (n = 0 gives an empty range): no length claimed
        (lambda g: g.node("Range", [_i64(g, 1), _dim(g, "x", 0), _i64(g, 1)]), 0, None),
        # Range(0, n + 2, 1): n + 2
        (
            lambda g: g.node("Range", [_i64(g, 0), g.node("Add", [_dim(g, "x", 0), _i64(g, 2)]), _i64(g, 1)]),
            0,
            e(n=1, const=2),
        ),
        # Range with a step of 2: not followed
        (lambda g: g.node("Range", [_i64(g, 0), _dim(g, "x", 0), _i64(g, 2)]), 0, None),
        # x [n, m] + y [k]: m and k broadcast, neither known to be 1 or the other
        (lambda g: g.node("Add", ["x", "y"]), 1, None),
        # a broadcast against a static 1 keeps m
        (lambda g: g.node("Mul", ["x", g.const(np.ones((1, 1), np.float32))]), 1, Expr.of("m")),
        # Concat of x with itself on axis 0: 2n
        (lambda g: g.node("Concat", ["x", "x"], axis=0), 0, e(n=2)),
        # LayerNormalization with its one output, of x + Range(0, m) (as GPT-2's embeddings plus
        # positions, whose size onnx names anew): m, through the LayerNormalization
        (
            lambda g: g.node(
                "LayerNormalization",
                [
                    g.node(
                        "Add",
                        ["x", g.node("Cast", [g.node("Range", [_i64(g, 0), _dim(g, "x", 1), _i64(g, 1)])], to=1)],
                    ),
                    g.const(np.ones(1, np.float32)),
                ],
                axis=-1,
            ),
            1,
            Expr.of("m"),
        ),
        # Reshape(x, [-1, 4]) of [n, m]: the -1 is n * m / 4, not affine
        (lambda g: g.node("Reshape", ["x", _i64(g, [-1, 4])]), 0, None),
        # Reshape(x, [0, -1]): n kept, m from the element count (the shared n cancels)
        (lambda g: g.node("Reshape", ["x", _i64(g, [0, -1])]), 1, Expr.of("m")),
        # Reshape(x, [0, 2, -1]): m / 2 is not an integer expression
        (lambda g: g.node("Reshape", ["x", _i64(g, [0, 2, -1])]), 2, None),
        # Reshape(Concat(x, ..., x) [n, 6m], [0, -1, 3]): 2m
        (lambda g: g.node("Reshape", [g.node("Concat", ["x"] * 6, axis=1), _i64(g, [0, -1, 3])]), 1, e(m=2)),
        # Slice of axis 1 with computed bounds: axis 0 kept, axis 1 unknown
        (
            lambda g: g.node(
                "Slice", ["x", _i64(g, [0]), g.node("Unsqueeze", [_dim(g, "x", 0), _i64(g, [0])]), _i64(g, [1])]
            ),
            0,
            Expr.of("n"),
        ),
        (
            lambda g: g.node(
                "Slice", ["x", _i64(g, [0]), g.node("Unsqueeze", [_dim(g, "x", 0), _i64(g, [0])]), _i64(g, [1])]
            ),
            1,
            None,
        ),
    ],
)
def test_dimensions(build, axis, want):
    g = Graph()
    out = build(g)
    model = g.model({"x": ["n", "m"], "y": ["k"]}, {g.node("Identity", [out]): None}, opset=17)
    sizes, tensors = sizes_of(model)
    assert sizes.dim(tensors[out], axis) == want


def test_equal_to_minus_one_is_decided_only_for_dimensions():
    g = Graph()
    s = g.node("Concat", [g.node("Unsqueeze", [_dim(g, "x", 0), _i64(g, [0])]), _i64(g, [-1])], axis=0)
    eq = g.node("Equal", [s, _i64(g, [-1, -1])])
    model = g.model({"x": ["n", "m"]}, {eq: (None, TensorProto.BOOL)}, opset=17)
    sizes, tensors = sizes_of(model)
    assert sizes.value(tensors[eq]).items == [False, True]
    # A difference of dimensions may be -1: undecided
    g = Graph()
    eq = g.node("Equal", [g.node("Sub", [_dim(g, "x", 0), _dim(g, "x", 1)]), _i64(g, -1)])
    model = g.model({"x": ["n", "m"]}, {eq: (None, TensorProto.BOOL)}, opset=17)
    sizes, tensors = sizes_of(model)
    assert sizes.value(tensors[eq]).items == [None]


def test_names_stated_by_the_model_are_kept_fresh_ones_are_not():
    # NonZero's count is unknown to inference: the name an output states for it stands for
    # itself; inside the graph, inference's fresh unk__ name claims nothing.
    g = Graph()
    nz = g.node("NonZero", ["x"])
    y = g.node("Neg", [g.node("Cast", [nz], to=TensorProto.FLOAT)])
    model = g.model({"x": ["n", "m"]}, {nz: ([2, "count"], TensorProto.INT64), y: [2, None]}, opset=17)
    sizes, tensors = sizes_of(model)
    assert sizes.dim(tensors[nz], 1) == Expr.of("count")
    assert sizes.dim(tensors[y], 1) == Expr.of("count")  # through Cast and Neg
    g = Graph()
    y = g.node("Neg", [g.node("Cast", [g.node("NonZero", ["x"])], to=TensorProto.FLOAT)])
    model = g.model({"x": ["n", "m"]}, {y: [2, None]}, opset=17)
    sizes, tensors = sizes_of(model)
    assert sizes.dim(tensors[y], 1) is None
