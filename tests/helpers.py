"""Model builders, sessions and input samplers for the kernel-library tests."""

import contextlib

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import quake_onnx

DOMAIN = "com.quake"
ONNX_TYPE = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16, np.float64: TensorProto.DOUBLE}
# One name per op so error messages can be checked for it.
NODE_NAME = "quake_{}"


def node_name(op_type):
    return NODE_NAME.format(op_type)


def make_model(op_type, attrs=None, shape=("N",), dtype=np.float32, with_bias=False, bias_shape=None):
    """A single com.quake node Y = op(X[, B]). Dimensions may be ints or names
    (symbolic, so one session serves every size); the bias is 1-D with X's
    last dimension unless bias_shape says otherwise. shape=None: rank unknown."""
    elem = ONNX_TYPE[np.dtype(dtype).type]
    inputs = [helper.make_tensor_value_info("X", elem, None if shape is None else list(shape))]
    if with_bias:
        inputs.append(helper.make_tensor_value_info("B", elem, list(bias_shape or [shape[-1]])))
    node = helper.make_node(
        op_type, [i.name for i in inputs], ["Y"], name=node_name(op_type), domain=DOMAIN, **(attrs or {})
    )
    graph = helper.make_graph([node], f"{op_type}_test", inputs, [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 8  # readable by every ONNX Runtime we support
    return model


@contextlib.contextmanager
def quake_isa(isa):
    """QUAKE_ISA set to `isa` (None: unset) for the duration; the library reads
    it when a session creates its kernels."""
    with pytest.MonkeyPatch.context() as mp:
        if isa is None:
            mp.delenv("QUAKE_ISA", raising=False)
        else:
            mp.setenv("QUAKE_ISA", isa)
            # A silent fallback would test another table than the one named.
            assert quake_onnx.selected_isa() == isa
        yield


def session_options(threads=1):
    so = ort.SessionOptions()
    # No fusions or constant folding: the node under test is what runs.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.register_custom_ops_library(quake_onnx.get_library_path())
    return so


def make_session(model, isa=None, threads=1):
    with quake_isa(isa):
        return ort.InferenceSession(
            model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
        )


def run(sess, x, bias=None):
    feed = {"X": x} if bias is None else {"X": x, "B": bias}
    return sess.run(None, feed)[0]


# ---------------------------------------------------------------------------
# Inputs.

_BITS = {np.float32: (np.uint32, 23, 8), np.float16: (np.uint16, 10, 5)}


def band_samples(dtype=np.float32, per_band=16, seed=0, specials=True):
    """Values of `dtype` from every exponent band (denormals included), both
    signs, drawn by bit pattern, then the special values. 1-D."""
    dtype = np.dtype(dtype).type
    utype, mant_bits, exp_bits = _BITS[dtype]
    rng = np.random.default_rng(seed)
    exps = np.repeat(np.arange(2**exp_bits - 1, dtype=np.uint64), per_band)  # all finite bands
    mants = rng.integers(0, 2**mant_bits, size=exps.size, dtype=np.uint64)
    bits = (exps << mant_bits) | mants
    vals = bits.astype(utype).view(dtype)
    vals = np.concatenate([vals, -vals])
    if specials:
        vals = np.concatenate([vals, special_values(dtype)])
    return vals


def special_values(dtype=np.float32):
    """NaN, infinities, zeros, the range ends and the exp cut-offs with their
    float neighbours (where the type can hold them)."""
    dtype = np.dtype(dtype).type
    info = np.finfo(dtype)
    v = [
        np.nan,
        np.inf,
        -np.inf,
        0.0,
        -0.0,
        info.max,
        info.min,
        info.tiny,
        -info.tiny,
        info.smallest_subnormal,
        -info.smallest_subnormal,
        1.0,
        -1.0,
        0.5,
        -0.5,
    ]
    v = np.array(v, dtype=dtype)
    cut = np.array(
        [-87.336555, 88.72284, -87.3, 88.7, -88.72283, 87.33655, -12.0, 11.0, 11.1], dtype=np.float32
    ).astype(dtype)
    near = np.concatenate([cut, np.nextafter(cut, dtype(np.inf)), np.nextafter(cut, dtype(-np.inf))])
    return np.concatenate([v, near[np.isfinite(near)]]).astype(dtype)


def logits(rows, n, scale=4.0, seed=0, dtype=np.float32):
    """Softmax-like rows: normal logits times `scale`."""
    return (np.random.default_rng(seed).standard_normal((rows, n)) * scale).astype(dtype)


# ---------------------------------------------------------------------------
# Comparison.


def errors(got, ref, dtype=None):
    """(max abs error, max rel error) over elements where both are finite; the
    relative error only where |ref| is a normal number of the tensor type."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    tiny = np.finfo(dtype or np.float32).tiny
    both = np.isfinite(got) & np.isfinite(ref)
    err = np.abs(got - ref)[both]
    big = np.abs(ref[both]) >= tiny
    max_abs = float(err.max()) if err.size else 0.0
    max_rel = float((err[big] / np.abs(ref[both][big])).max()) if big.any() else 0.0
    return max_abs, max_rel


def assert_close(got, ref, dtype, abs_tol, rel_tol, x=None, what=""):
    """Every element of `got` (the library's output, of type `dtype`) within
    abs_tol + rel_tol * |ref| of the float64 reference. NaN must match NaN;
    an infinite reference must be met exactly; an infinite result is accepted
    only where a value within the tolerance would round to it in `dtype`."""
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), f"{what}: output type {got.dtype}, expected {np.dtype(dtype)}"
    g = got.astype(np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert g.shape == ref.shape, f"{what}: shape {g.shape}, expected {ref.shape}"
    tol = abs_tol + rel_tol * np.abs(ref)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.abs(g - ref) <= tol
        ok |= np.isnan(g) & np.isnan(ref)
        ok |= np.isinf(ref) & (g == ref)
        edge = (ref + np.sign(g) * tol).astype(dtype).astype(np.float64)
        ok |= np.isinf(g) & np.isfinite(ref) & (edge == g)
    if not ok.all():
        bad = np.flatnonzero(~ok.ravel())
        lines = [f"{what}: {bad.size} of {ok.size} elements outside abs {abs_tol:g} + rel {rel_tol:g}"]
        for i in bad[:8]:
            idx = np.unravel_index(i, ok.shape)
            xi = "" if x is None else f"x={np.asarray(x)[idx]!r} "
            lines.append(f"  at {idx}: {xi}expected {ref[idx]!r} got {g[idx]!r}")
        raise AssertionError("\n".join(lines))
