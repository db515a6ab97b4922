"""Threading: ORT's intra-op split must not change results, and one session
must serve concurrent run() calls."""

import threading

import numpy as np
import pytest
from helpers import logits, make_model, run

# Softmax rows are computed by one task each today, so 1 and 2 threads agree
# bit for bit. Should a row ever be split, only the order of its float32
# summation may change: the row sum then moves within the 1e-5 of ops.md, so
# every output within 2e-5 relative of the other run (plus float denormals).
SOFTMAX_SPLIT_REL = 2e-5
SOFTMAX_SPLIT_ABS = 1e-38


def bits(a):
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


def big_input(op, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if op in ("Softmax", "LogSoftmax"):
        x = logits(64, 50257, 3.0, seed=seed, dtype=dtype)
        x[1, rng.random(50257) < 0.5] = -np.inf
        return x
    # 2M elements: many more than ORT splits into tasks.
    return (rng.standard_normal((2048, 1024)) * 6).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op", ["Exp", "Sigmoid", "Silu", "Gelu", "GeluBias", "Softmax", "LogSoftmax"])
def test_one_vs_two_threads(session_cache, isa, op, dtype):
    with_bias = op == "GeluBias"
    op = op.replace("Bias", "")
    model = make_model(op, {}, ("R", "C"), dtype, with_bias=with_bias)
    x = big_input(op, dtype)
    bias = np.linspace(-1, 1, x.shape[1]).astype(dtype) if with_bias else None
    y1 = run(session_cache(model, isa, threads=1), x, bias)
    y2 = run(session_cache(model, isa, threads=2), x, bias)
    if op == "Softmax":
        np.testing.assert_allclose(y2, y1, rtol=SOFTMAX_SPLIT_REL, atol=SOFTMAX_SPLIT_ABS)
    else:
        # Elementwise work is split at element boundaries: same bits.
        np.testing.assert_array_equal(bits(y2), bits(y1))


@pytest.mark.parametrize("op", ["Gelu", "Softmax"])
def test_concurrent_runs_on_one_session(session_cache, isa, op):
    model = make_model(op, {"order": 2}, ("R", "C"))
    sess = session_cache(model, isa, threads=2)
    inputs = [logits(16, 3001, 2.0 + k, seed=k) for k in range(8)]
    expected = [run(sess, x) for x in inputs]
    failures = []

    def worker(t):
        try:
            for i in range(20):
                k = (t * 7 + i) % len(inputs)
                if not np.array_equal(bits(run(sess, inputs[k])), bits(expected[k])):
                    failures.append((t, i, k))
        except Exception as e:  # surfaced below, not lost in the thread
            failures.append((t, repr(e)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, f"concurrent runs differ from sequential ones: {failures[:5]}"
