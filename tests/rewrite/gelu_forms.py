"""Decomposed GELUs as exporters write them, for the erf/tanh GELU tests."""

from __future__ import annotations

import math

import numpy as np

from .builders import Graph

# How 0.5 * x * p is associated: PyTorch, TF/Keras, Hugging Face, 0.5 * (1 + f) first, and /2.
TAILS = ["x*p*0.5", "(x*0.5)*p", "(0.5*x)*p", "(p*0.5)*x", "x*p/2", "p*x*0.5"]


def half_product(g: Graph, x: str, p: str, tail: str, half: float = 0.5) -> str:
    if tail == "x*p*0.5":
        return g.node("Mul", [g.node("Mul", [x, p]), g.const(half)])
    if tail == "p*x*0.5":
        return g.node("Mul", [g.const(half), g.node("Mul", [p, x])])
    if tail == "(x*0.5)*p":
        return g.node("Mul", [g.node("Mul", [x, g.const(half)]), p])
    if tail == "(0.5*x)*p":
        return g.node("Mul", [p, g.node("Mul", [g.const(half), x])])
    if tail == "(p*0.5)*x":
        return g.node("Mul", [x, g.node("Mul", [p, g.const(half)])])
    if tail == "x*p/2":
        return g.node("Div", [g.node("Mul", [x, p]), g.const(1 / half)])
    raise ValueError(tail)


def erf_gelu(
    g: Graph, x: str, tail: str = "x*p*0.5", scale: str = "div", swap_add: bool = False, sqrt2=1.4142135
) -> str:
    if scale == "div":
        s = g.node("Div", [x, g.const(sqrt2)])
    else:
        s = g.node("Mul", [g.const(1 / sqrt2), x])
    e = g.node("Erf", [s], name="erf")
    one = g.const(1.0)
    p = g.node("Add", [one, e] if swap_add else [e, one])
    return half_product(g, x, p, tail)


def tanh_gelu(g: Graph, x: str, tail: str = "(0.5*x)*p", cube: str = "pow", swap: bool = False, coef=0.044715) -> str:
    if cube == "pow":
        c = g.node("Pow", [x, g.const(3.0)])
    elif cube == "mul":
        c = g.node("Mul", [g.node("Mul", [x, x]), x])
    else:  # x * Pow(x, 2)
        c = g.node("Mul", [x, g.node("Pow", [x, g.const(2.0)])])
    k = g.node("Mul", [c, g.const(coef)] if swap else [g.const(coef), c])
    inner = g.node("Add", [k, x] if swap else [x, k])
    t = g.node("Tanh", [g.node("Mul", [g.const(math.sqrt(2 / math.pi)), inner])], name="tanh")
    one = g.const(1.0)
    p = g.node("Add", [t, one] if swap else [one, t])
    return half_product(g, x, p, tail)


def projected(g: Graph, bias=None, bias_first: bool = False) -> str:
    """h = X[4, 16] @ W[16, 24] (+ bias): the usual producer of a GELU's input."""
    rng = np.random.default_rng(1)
    h = g.node("MatMul", ["X", g.const(rng.standard_normal((16, 24)) / 4, "W")], name="matmul")
    if bias is not None:
        b = g.const(bias, "bias")
        h = g.node("Add", [b, h] if bias_first else [h, b], name="bias_add")
    return h
