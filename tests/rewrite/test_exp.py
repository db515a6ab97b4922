import numpy as np
import pytest

from .builders import EXP_RTOL, F16, F64, Graph, assert_untouched, check_rewrite, sample


def exp_model(dtype=None):
    g = Graph(dtype) if dtype else Graph()
    return g.model({"X": [4, 32]}, [g.node("Exp", ["X"], name="exp")])


@pytest.mark.parametrize("order,rtol", [(1, 0.031), (2, EXP_RTOL), (3, 1e-4)])
def test_exp(order, rtol):
    x = np.linspace(-20, 20, 128, dtype=np.float32).reshape(4, 32)
    check_rewrite(exp_model(), ["com.quake.Exp"], {"X": x}, rtol=rtol, order=order)


def test_float16():
    x = sample((4, 32), np.float16, scale=2.0)
    check_rewrite(exp_model(F16), ["com.quake.Exp"], {"X": x}, rtol=EXP_RTOL + 2**-10)  # + the final f16 rounding


def test_double():
    assert_untouched(exp_model(F64), "exp", "element type double is not supported")


def test_skip_nodes():
    assert_untouched(exp_model(), "exp", "skipped by --skip-nodes", skip_nodes=frozenset({"exp"}))
