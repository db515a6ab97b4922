"""Float64 NumPy reference of the com.quake operators (docs: ops.md).

Exact math of the contract, independent of `order`: what every kernel
approximates. Special values follow custom_ops/kernels/kernels_scalar.cc, the
readable definition of the library: exp is +0 for z <= -87.336555 (where
e^z is below FLT_MIN, a subnormal the kernels flush) and +inf for
z >= 88.72284 (where e^z rounds to +inf in float32); silu and gelu take their limits at +-inf instead of inf * 0 = NaN;
a softmax row holding NaN or +inf is NaN; an all -inf row is 0 (softmax) or
-inf (logsoftmax).

Inputs of any float dtype are widened to float64; results are float64 (round
them to the tensor type yourself).
"""

import math

import numpy as np

# The kernels compare float32 values against these float32 constants; taking
# the same float32 values keeps the cut-offs bit-exact for float32 inputs.
EXP_UNDERFLOW = float(np.float32(-87.336555))
EXP_OVERFLOW = float(np.float32(88.72284))

GELU_K = 2.0 * math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715

_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def exp(x):
    x = _f64(x)
    with np.errstate(over="ignore"):
        y = np.exp(x)
    y = np.where(x <= EXP_UNDERFLOW, 0.0, y)
    return np.where(x >= EXP_OVERFLOW, np.inf, y)  # NaN fails both tests


def sigmoid(x):
    x = _f64(x)
    # Two branches so that neither overflows nor cancels.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def silu(x, alpha=1.0):
    x = _f64(x)
    with np.errstate(invalid="ignore"):
        y = x * sigmoid(alpha * x)
    return np.where(x == -np.inf, -0.0, y)  # the limit, not -inf * 0


def _gelu_tanh(u):
    with np.errstate(over="ignore", invalid="ignore"):
        y = u * sigmoid(GELU_K * (u + GELU_CUBIC * u * u * u))
    return np.where(u == -np.inf, -0.0, y)


def _gelu_erf(u):
    # 0.5 u erfc(-u/sqrt2) == 0.5 u (1 + erf(u/sqrt2)) without the
    # cancellation of 1 + erf for negative u.
    with np.errstate(invalid="ignore"):
        y = 0.5 * u * _erfc(-u / math.sqrt(2.0))
    return np.where(u == -np.inf, -0.0, y)


def gelu(x, bias=None, approximate="tanh"):
    """GELU of u = x + bias. approximate="tanh" is what com.quake computes
    (for both attribute values); "none" is the exact erf form, so tests can
    state the gap between the two."""
    u = _f64(x)
    if bias is not None:
        u = u + _f64(bias)  # broadcasts over the last axis
    if approximate == "tanh":
        return _gelu_tanh(u)
    if approximate == "none":
        return _gelu_erf(u)
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


GLU_ACTIVATIONS = ("silu", "gelu", "gelu_tanh")


def glu(a, b=None, activation="silu", alpha=1.0, gelu_form="tanh"):
    """com.quake Glu: act(a) * b; without b, a's last axis is cut in two
    halves and act(first) * second is returned. activation "silu" is
    a * sigmoid(alpha a); "gelu" and "gelu_tanh" are the GELU of `gelu_form`:
    "tanh" is what the library computes for both, "none" (the erf form) lets
    tests state the gap to what an erf-GELU graph computed. The activations
    take their limits at +-inf (silu(-inf) = -0), so act(-inf) * inf is NaN
    here; the library's gate keeps a tiny nonzero value there (docs/ops.md)."""
    if activation not in GLU_ACTIVATIONS:
        raise ValueError(f"activation must be one of {GLU_ACTIVATIONS}, got {activation!r}")
    a = _f64(a)
    if b is None:
        n = a.shape[-1] if a.ndim else 1
        if a.ndim == 0 or n % 2:
            raise ValueError(f"without b, a's last dimension must be even, got shape {a.shape}")
        a, b = a[..., : n // 2], a[..., n // 2 :]
    else:
        b = _f64(b)
        if b.shape != a.shape:
            raise ValueError(f"b must have a's shape {a.shape}, got {b.shape}")
    gate = silu(a, alpha) if activation == "silu" else gelu(a, approximate=gelu_form)
    with np.errstate(invalid="ignore", over="ignore"):
        return gate * b


def _rows(x, axis):
    """x as float64 with `axis` moved last, and a function putting it back."""
    x = _f64(x)
    axis = int(axis)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} out of range for rank {x.ndim}")
    moved = np.moveaxis(x, axis, -1)
    return moved, lambda y: np.moveaxis(y, -1, axis)


def _row_max(r):
    """Row maxima (keepdims); NaN for rows holding a NaN or +inf."""
    bad = np.any(np.isnan(r) | (r == np.inf), axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        m = np.max(np.where(np.isnan(r), -np.inf, r), axis=-1, keepdims=True)
    return np.where(bad, np.nan, m)


def softmax(x, axis=-1):
    r, back = _rows(x, axis)
    if r.size == 0:
        return back(r.copy())
    m = _row_max(r)
    dead = m == -np.inf  # all -inf: 0, not 0/0
    with np.errstate(invalid="ignore"):
        e = exp(r - np.where(dead, 0.0, m))
        y = e / np.sum(e, axis=-1, keepdims=True)
    y = np.where(dead, 0.0, y)
    return back(np.where(np.isnan(m), np.nan, y))


def logsoftmax(x, axis=-1):
    r, back = _rows(x, axis)
    if r.size == 0:
        return back(r.copy())
    m = _row_max(r)
    dead = m == -np.inf
    safe_m = np.where(dead | np.isnan(m), 0.0, m)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = r - safe_m
        y = z - np.log(np.sum(exp(z), axis=-1, keepdims=True))
    y = np.where(dead, -np.inf, y)
    return back(np.where(np.isnan(m), np.nan, y))


# EXAQ (Softmax method "exaq", docs/ops.md): z = x - max is clipped to
# [lo, 0] and rounded to one of 2^bits evenly spaced levels; e^z is the
# level's exponential. C = slope * sigma + offset, the authors' fits for 2..4
# bits and their least-squares lines for 5..8 (extrapolated).
EXAQ_CLIP_FITS = {2: (-1.66, -1.85), 3: (-1.75, -2.06), 4: (-1.83, -2.27)}


def exaq_clip(bits, sigma):
    """C for `bits` and standard deviation `sigma` (what clip=0 uses per row)."""
    bits = int(bits)
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if bits in EXAQ_CLIP_FITS:
        slope, offset = EXAQ_CLIP_FITS[bits]
    else:
        slope, offset = -5.24 / 3 - 0.085 * (bits - 3), -2.06 - 0.21 * (bits - 3)
    return slope * np.asarray(sigma, dtype=np.float64) + offset


def exaq_row_stats(x, axis=-1):
    """(sigma, live count) of every row's live elements (z = x - max >
    EXP_UNDERFLOW: masks are not data), population standard deviation; sigma
    is NaN for rows holding a NaN or +inf and for fully masked rows."""
    r, _ = _rows(x, axis)
    m = _row_max(r)
    ok = np.isfinite(m)
    with np.errstate(invalid="ignore"):
        z = r - np.where(ok, m, 0.0)
        live = (z > EXP_UNDERFLOW) & ok
        count = live.sum(-1)
        zl = np.where(live, z, 0.0)
        mean = zl.sum(-1) / np.maximum(count, 1)
        var = np.maximum((zl * zl).sum(-1) / np.maximum(count, 1) - mean * mean, 0.0)
    return np.where(count > 0, np.sqrt(var), np.nan), count


def softmax_exaq(x, axis=-1, bits=3, clip=0.0, return_u=False):
    """The exaq softmax in float64. clip < 0: lo = max(clip, -87.3) in every
    row; clip = 0: lo = max(C(sigma of the row's live z), smallest live z).
    return_u: also the code argument u = z (L - 1) / -lo + L - 1, whose
    rounding picks the level (callers use it to spot rounding ties)."""
    r, back = _rows(x, axis)
    levels = 2 ** int(bits)
    if r.size == 0:
        return (back(r.copy()), back(r.copy())) if return_u else back(r.copy())
    m = _row_max(r)
    dead = m == -np.inf
    bad = np.isnan(m)
    with np.errstate(invalid="ignore"):
        z = r - np.where(dead | bad, 0.0, m)
        live = (z > EXP_UNDERFLOW) & ~(dead | bad)
    if clip == 0:
        sigma, _ = exaq_row_stats(r, -1)
        c = np.float32(exaq_clip(bits, np.nan_to_num(sigma))).astype(np.float64)  # the kernels keep C as a float
        zmin = np.where(live, z, 0.0).min(-1)
        lo = np.maximum(c, zmin)[..., None]
    else:
        lo = np.full(m.shape, max(_f32(clip), EXP_UNDERFLOW))
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(lo < 0, (levels - 1) / -lo, 0.0)
        u = np.where(live, z * a + (levels - 1), 0.0)
        code = np.clip(np.rint(u), 0, levels - 1)
        e = np.where(live, np.exp(lo + code * (-lo / (levels - 1))), 0.0)
        y = e / e.sum(-1, keepdims=True)
    y = np.where(dead, 0.0, y)
    y = back(np.where(bad, np.nan, y))
    return (y, back(u)) if return_u else y


ATTENTION_PRECISIONS = ("float32", "bfloat16")


def bfloat16_round(x):
    """x rounded to bfloat16 (8 significant bits, nearest even) and returned
    as float32, as the bf16 engines convert: NaN stays NaN, values that round
    beyond the range become inf, float32 denormals become 0 (VCVTNEPS2BF16)."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
    with np.errstate(invalid="ignore"):
        rounded = np.where(np.abs(x) < np.finfo(np.float32).tiny, np.copysign(np.float32(0), x), rounded)
    return np.where(np.isnan(x), x, rounded).astype(np.float32)


def attention(q, k, v, mask=None, scale=1.0, causal=0, k_transposed=0, precision="float32"):
    """com.quake Attention in float64: softmax(scale * Q K^T + M, causal) V
    over the last axis. K is [..., Skv, D] (or [..., D, Skv] with
    k_transposed); K's and V's heads (axis -3) divide Q's, query head h using
    key/value head h // (H / H_kv); every other leading axis and the mask
    broadcast numpy-style; a float16 mask's -65504 (float16's lowest) counts
    as float's lowest. causal: key j > i + (Skv - Sq) is masked. The
    softmax rules apply per row (fully masked rows give 0, a NaN or +inf
    score makes the row NaN); a weight of 0 times a NaN in V is NaN here, as
    in the unfused graph.

    precision "bfloat16" emulates the bf16 engines' roundings (docs/ops.md):
    Q, K and V rounded to bfloat16, and each unnormalised weight
    p = e^(s - max) rounded to bfloat16 for the product with V while the row
    sum uses the exact p. (The kernels round p against the running max of
    the tiles seen so far, so theirs can differ by one bf16 unit.)"""
    if precision not in ATTENTION_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(ATTENTION_PRECISIONS)}, not {precision!r}")
    bf16 = precision == "bfloat16"
    if bf16:
        q, k, v = bfloat16_round(q), bfloat16_round(k), bfloat16_round(v)
    q, k, v = _f64(q), _f64(k), _f64(v)
    if k_transposed:
        k = np.swapaxes(k, -1, -2)
    heads = q.shape[-3] if q.ndim >= 3 else 1

    def repeat_heads(x):
        if x.ndim >= 3 and x.shape[-3] not in (1, heads):
            if x.shape[-3] == 0 or heads % x.shape[-3]:
                raise ValueError(f"{x.shape[-3]} key/value heads do not divide {heads} query heads")
            return np.repeat(x, heads // x.shape[-3], axis=-3)
        return x

    k, v = repeat_heads(k), repeat_heads(v)
    with np.errstate(invalid="ignore", over="ignore"):
        scores = np.matmul(q, np.swapaxes(k, -1, -2)) * float(np.float32(scale))
        if mask is not None:
            if np.asarray(mask).dtype == np.float16:  # float16's lowest reads as float's (docs/ops.md)
                mask = np.where(np.asarray(mask) == np.float16(-65504), np.finfo(np.float32).min, _f64(mask))
            scores = scores + _f64(mask)
    sq, skv = scores.shape[-2], scores.shape[-1]
    if causal:
        i = np.arange(sq)[:, None]
        j = np.arange(skv)[None, :]
        scores = np.where(j > i + (skv - sq), -np.inf, scores)
    weights = softmax(scores, axis=-1)
    if bf16 and skv > 0:
        with np.errstate(invalid="ignore", over="ignore"):
            m = scores.max(axis=-1, keepdims=True)
            ordinary = np.isfinite(m)  # rows with a live key and no NaN / +inf score
            p = np.exp(scores - np.where(ordinary, m, 0.0))
            rounded = bfloat16_round(p).astype(np.float64) / p.sum(axis=-1, keepdims=True)
            weights = np.where(ordinary, rounded, weights)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.matmul(weights, v)  # no keys (Skv = 0): zeros, as fully masked rows


def _attention_op(inputs, attrs):
    mask = inputs[3] if len(inputs) > 3 else None
    return attention(
        inputs[0],
        inputs[1],
        inputs[2],
        mask,
        _f32(attrs["scale"]),
        attrs.get("causal", 0),
        attrs.get("k_transposed", 0),
        attrs.get("precision", "float32"),
    )


def _f32(v):
    # ONNX float attributes are float32; the kernels see the rounded value.
    return float(np.float32(v))


def _softmax_op(inputs, attrs):
    method = attrs.get("method", "quake")
    if method == "exaq":
        return softmax_exaq(inputs[0], attrs.get("axis", -1), attrs.get("bits", 3), _f32(attrs.get("clip", 0.0)))
    if method != "quake":
        raise NotImplementedError(f"Softmax method {method!r} is not implemented")
    return softmax(inputs[0], attrs.get("axis", -1))


def _gelu_op(inputs, attrs):
    bias = inputs[1] if len(inputs) > 1 else None
    # The library computes the tanh formula for both attribute values.
    return gelu(inputs[0], bias, approximate="tanh")


def _glu_op(inputs, attrs):
    b = inputs[1] if len(inputs) > 1 else None
    return glu(inputs[0], b, attrs["activation"], _f32(attrs.get("alpha", 1.0)))


# op_type -> f(inputs, attrs) -> float64 output; `order` never matters.
REFERENCES = {
    "Exp": lambda inputs, attrs: exp(inputs[0]),
    "Sigmoid": lambda inputs, attrs: sigmoid(inputs[0]),
    "Silu": lambda inputs, attrs: silu(inputs[0], _f32(attrs.get("alpha", 1.0))),
    "Gelu": _gelu_op,
    "Softmax": _softmax_op,
    "LogSoftmax": lambda inputs, attrs: logsoftmax(inputs[0], attrs.get("axis", -1)),
    "Attention": _attention_op,
    "Glu": _glu_op,
}
