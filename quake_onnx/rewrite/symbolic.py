"""Run-time sizes as symbols: tensor dimensions and the small integer tensors
exporters compute from them, as affine expressions over the model's input
dimensions.

torch.onnx writes a decoder's shapes as computations (Shape -> Gather ->
Unsqueeze -> Concat -> Reshape / Expand, Range for positions), and onnx shape
inference gives their results fresh names (`unk__7`) that say nothing about
which sizes are equal. A pattern whose correctness depends on such sizes (the
causal mask a decoder builds at run time, the Expand of grouped-query K/V)
asks this module instead:

- `dim(t, axis)`: the dimension as an `Expr`, e.g. `past + seq`, derived
  through the producers of t (broadcasting, MatMul, Transpose, Reshape with a
  computed shape, Expand, Concat, Gather, Range...) down to the dimensions of
  the graph's inputs, which are the symbols (`seq`, `past`: their dim_param
  names) or integers;
- `value(t)`: the elements of a small integer (or bool) tensor of rank 0 or 1
  computed from shapes, each an `Expr` (or a bool), None where unknown.

Everything here is sound or None: an expression is returned only when the
run-time value equals it for every input the graph accepts. Two assumptions,
both those of onnx shape inference itself: a dimension name stated in the
model (a graph input's or output's dim_param) stands for one value wherever
it appears, and a dimension is never negative. (A Reshape whose computed
target holds a dimension that is 0 at run time copies the input's instead;
such a tensor is empty, and so is everything computed from it.)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .match import DEFAULT_DOMAINS, const_shape, const_value, is_op, producer

MAX_DEPTH = 48  # producers followed from a shape value (Shape -> Gather -> Concat ... chains are short)
QUAKE_DOMAIN = "com.quake"
SMALL = 16  # elements of a value: shape vectors and scalars only
_BIG = 1 << 62  # a Slice end at or beyond this takes the whole axis (torch writes INT64_MAX)


@dataclass(frozen=True)
class Expr:
    """const + sum(coef * symbol): an integer known up to the input dimensions' values."""

    terms: tuple[tuple[str, int], ...] = ()  # sorted by symbol, no zero coefficients
    const: int = 0

    @staticmethod
    def of(value: Union[int, str]) -> "Expr":
        return Expr(const=int(value)) if isinstance(value, (int, np.integer)) else Expr(((value, 1),))

    def _combine(self, other: "Expr", sign: int) -> "Expr":
        coefs = dict(self.terms)
        for sym, c in other.terms:
            coefs[sym] = coefs.get(sym, 0) + sign * c
        return Expr(tuple(sorted((s, c) for s, c in coefs.items() if c)), self.const + sign * other.const)

    def __add__(self, other: "Expr") -> "Expr":
        return self._combine(other, 1)

    def __sub__(self, other: "Expr") -> "Expr":
        return self._combine(other, -1)

    def scaled(self, k: int) -> "Expr":
        return Expr(tuple((s, c * k) for s, c in self.terms if c * k), self.const * k)

    def divided(self, k: int) -> Optional["Expr"]:
        """self / k when every coefficient and the constant are multiples of k, else None."""
        if k <= 0 or self.const % k or any(c % k for _, c in self.terms):
            return None
        return Expr(tuple((s, c // k) for s, c in self.terms), self.const // k)

    @property
    def is_const(self) -> bool:
        return not self.terms

    def nonnegative(self) -> bool:
        """Provably >= 0: dimensions are, so any sum of them with a non-negative constant is."""
        return self.const >= 0 and all(c > 0 for _, c in self.terms)

    def __str__(self) -> str:
        parts = [(s if c == 1 else f"{c}*{s}") for s, c in self.terms]
        if self.const or not parts:
            parts.append(str(self.const))
        return " + ".join(parts).replace("+ -", "- ")


ONE = Expr.of(1)
Item = Union[Expr, bool, None]


@dataclass
class Value:
    """A small integer or bool tensor of rank 0 or 1, element by element (None: unknown)."""

    items: list[Item]
    rank: int  # 0 or 1


_UNARY_SAME = frozenset(
    {
        "Identity",
        "Cast",
        "CastLike",
        "Neg",
        "Abs",
        "Sqrt",
        "Reciprocal",
        "Exp",
        "Log",
        "Erf",
        "Tanh",
        "Sigmoid",
        "Relu",
        "Softmax",
        "LogSoftmax",
        "Not",
        "Sin",
        "Cos",
        "Dropout",
        "QuantizeLinear",
        "DequantizeLinear",
    }
)
# Several outputs, the first shaped as the first input.
_FIRST_OUTPUT_SAME = frozenset({"DynamicQuantizeLinear", "LayerNormalization", "Dropout"})
_BROADCASTING = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Where",
        "Equal",
        "Less",
        "LessOrEqual",
        "Greater",
        "GreaterOrEqual",
        "And",
        "Or",
        "Xor",
        "Max",
        "Min",
        "Sum",
        "Mod",
    }
)


class Sizes:
    """Dimensions and shape values of one model's tensors, memoised: build one per question
    (the graph may have changed since the last)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self._dims: dict[tuple[str, int], Optional[Expr]] = {}
        self._done: set[str] = set()  # tensors whose every dimension is in _dims
        self._values: dict[str, Optional[Value]] = {}
        self.inputs: set[str] = set()  # the dimension names of the graphs' inputs: the free symbols
        for scope in ctx.scopes.all:
            for t in scope.graph.inputs:
                for d in ctx.shape(t) or []:
                    if isinstance(d, str):
                        self.inputs.add(d)

    # ------------------------------------------------------------------ dimensions

    def rank(self, t: gs.Tensor) -> Optional[int]:
        shape = self.ctx.shape(t)
        return None if shape is None else len(shape)

    def dims(self, t: gs.Tensor) -> Optional[list[Optional[Expr]]]:
        rank = self.rank(t)
        return None if rank is None else [self.dim(t, a) for a in range(rank)]

    def dim(self, t: gs.Tensor, axis: int) -> Optional[Expr]:
        """Dimension `axis` (negative counts from the end) of t at run time, or None."""
        shape = self.ctx.shape(t)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        axis %= len(shape)
        d = shape[axis]
        if isinstance(d, int):
            return Expr.of(d)
        if isinstance(d, str) and d in self.inputs:
            return Expr.of(d)
        if not t.name:
            return None
        if t.name not in self._done:
            self._forward(t)
        return self._dims.get((t.name, axis))

    def _forward(self, t: gs.Tensor) -> None:
        """Derives the dimensions of t and of every tensor it is computed from, producers before
        readers (an iterative walk: a decoder's residual stream is hundreds of nodes deep)."""
        order: list[gs.Node] = []
        seen: set[int] = set()
        stack: list[tuple[Optional[gs.Node], bool]] = [(producer(t), False)]
        while stack:
            node, ready = stack.pop()
            if node is None:
                continue
            if ready:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for i in node.inputs:
                if i.name and i.name not in self._done:
                    stack.append((producer(i), False))
        if producer(t) is None:
            order = []
            self._settle(t)
        for node in order:
            for out in node.outputs:
                self._settle(out)

    def _settle(self, t: gs.Tensor) -> None:
        if not t.name or t.name in self._done:
            return
        shape = self.ctx.shape(t) or []
        for axis, d in enumerate(shape):
            found = None
            if isinstance(d, int) or (isinstance(d, str) and d in self.inputs):
                found = Expr.of(d)
            else:
                with contextlib.suppress(KeyError, IndexError, TypeError, ValueError):
                    found = self._derive(t, axis, len(shape))
                if found is None and isinstance(d, str) and d and not d.startswith("unk__"):
                    found = Expr.of(d)  # a name the model states (an output's dim_param): one value wherever it is
            self._dims[(t.name, axis)] = found
        self._done.add(t.name)

    def _derive(self, t: gs.Tensor, axis: int, rank: int) -> Optional[Expr]:
        node = producer(t)
        if node is None:
            return None
        op, ins = node.op, list(node.inputs)
        if (node.domain or "") == QUAKE_DOMAIN:  # an earlier replacement (docs/ops.md)
            if self.rank(ins[0]) != rank:
                return None
            if op == "Attention":  # Q's dimensions, V's last
                return self.dim(ins[2], -1) if axis == rank - 1 else self.dim(ins[0], axis)
            if op == "Glu" and len(ins) == 1 and axis == rank - 1:  # the halves form
                d = self.dim(ins[0], axis)
                return None if d is None else d.divided(2)
            return self.dim(ins[0], axis)  # elementwise
        if (node.domain or "") not in DEFAULT_DOMAINS:
            return None
        if op in _FIRST_OUTPUT_SAME and t is node.outputs[0]:  # with its optional outputs or without
            return self.dim(ins[0], axis) if self.rank(ins[0]) == rank else None
        if len(node.outputs) != 1:
            if op == "Split":
                return self._sliced(node, axis, rank)
            return None
        if op in _UNARY_SAME:
            return self.dim(ins[0], axis) if self.rank(ins[0]) == rank else None
        if op in _BROADCASTING:
            return self._broadcast([self._aligned(i, axis, rank) for i in ins if i.name])
        if op == "Transpose":
            perm = node.attrs.get("perm")
            perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
            return self.dim(ins[0], perm[axis])
        if op in ("MatMul", "MatMulInteger"):
            ra, rb = self.rank(ins[0]), self.rank(ins[1])
            if ra is None or rb is None or ra < 2 or rb < 2:
                return None
            if axis == rank - 1:
                return self.dim(ins[1], -1)
            if axis == rank - 2:
                return self.dim(ins[0], -2)
            return self._broadcast([self._aligned(i, axis, rank - 2, offset=2) for i in ins[:2]])  # batch axes
        if op == "Gather":
            data_rank, idx_rank = self.rank(ins[0]), self.rank(ins[1])
            if data_rank is None or idx_rank is None:
                return None
            g = int(node.attrs.get("axis", 0)) % data_rank
            if axis < g:
                return self.dim(ins[0], axis)
            if axis < g + idx_rank:
                return self.dim(ins[1], axis - g)
            return self.dim(ins[0], axis - idx_rank + 1)
        if op in ("Unsqueeze", "Squeeze"):
            return self._squeezed(node, axis, rank)
        if op == "Reshape":
            target = self.value(ins[1])
            if target is None or target.rank != 1 or len(target.items) != rank:
                return None
            item = target.items[axis]
            if not isinstance(item, Expr):
                return None
            if item.is_const and item.const == 0 and not node.attrs.get("allowzero", 0):
                return self.dim(ins[0], axis)
            if item.is_const and item.const < 0:
                return self._inferred(node, target.items, axis)
            return item
        if op == "Expand":
            target = self.value(ins[1])
            if target is None or target.rank != 1:
                return None
            n = len(target.items)
            parts = [self._aligned(ins[0], axis, rank)]
            if axis - (rank - n) >= 0:
                item = target.items[axis - (rank - n)]
                parts.append(item if isinstance(item, Expr) else None)
            return self._broadcast(parts)
        if op == "Concat":
            a = int(node.attrs["axis"]) % rank
            if axis != a:
                return next((d for d in (self.dim(i, axis) for i in ins) if d is not None), None)
            total = Expr()
            for i in ins:
                d = self.dim(i, axis)
                if d is None:
                    return None
                total = total + d
            return total
        if op == "Slice":
            return self._sliced(node, axis, rank)
        if op == "Range":
            start, limit, delta = (self.scalar(i) for i in ins[:3])
            if delta is None or not delta.is_const or delta.const != 1 or start is None or limit is None:
                return None
            length = limit - start
            return length if length.nonnegative() else None
        if op == "ConstantOfShape":
            target = self.value(ins[0])
            if target is None or target.rank != 1 or len(target.items) != rank:
                return None
            item = target.items[axis]
            return item if isinstance(item, Expr) else None
        if op.startswith("Reduce") and node.attrs.get("keepdims", 1):
            axes = node.attrs.get("axes")
            if axes is None and len(ins) > 1 and ins[1].name:
                v = const_value(ins[1])
                axes = None if v is None else np.asarray(v).reshape(-1).tolist()
            if axes is None:
                return None
            reduced = {int(a) % rank for a in axes}
            return ONE if axis in reduced else self.dim(ins[0], axis)
        return None

    def _inferred(self, node: gs.Node, items: list, axis: int) -> Optional[Expr]:
        """The -1 of a Reshape target: the input's element count over the other items', when the
        dimensions they share cancel and what is left is a number ([B, S, 576] to [B, S, -1, 64]:
        9) or one dimension times a number ([B, S, 9, 64] to [B, -1, 576]: S)."""
        dims = self.dims(node.inputs[0])
        if dims is None or any(d is None for d in dims):
            return None
        rest = list(dims)
        others = []
        for i, item in enumerate(items):
            if i == axis:
                continue
            if not isinstance(item, Expr):
                return None
            if item.is_const and item.const == 0 and not node.attrs.get("allowzero", 0):
                item = dims[i] if i < len(dims) else None
                if item is None:
                    return None
            if item in rest:
                rest.remove(item)
            else:
                others.append(item)
        symbolic = [d for d in rest if not d.is_const]
        if len(symbolic) > 1 or not all(d.is_const for d in others):
            return None
        num = int(np.prod([d.const for d in rest if d.is_const]))
        den = int(np.prod([d.const for d in others]))
        return (symbolic[0] if symbolic else ONE).scaled(num).divided(den)

    def _aligned(self, t: gs.Tensor, axis: int, rank: int, offset: int = 0) -> Optional[Expr]:
        """t's dimension on output axis `axis` of a rank-`rank` numpy broadcast (ONE where t has no
        such axis). offset: trailing axes of t not taking part (a MatMul's matrix axes)."""
        r = self.rank(t)
        if r is None:
            return None
        r -= offset
        if axis < 0:
            axis += rank
        k = axis - (rank - r)
        return ONE if k < 0 else self.dim(t, k)

    @staticmethod
    def _broadcast(parts: list[Optional[Expr]]) -> Optional[Expr]:
        """The broadcast of dimensions: all known, each 1 or the same expression."""
        if any(p is None for p in parts):
            return None
        others = {p for p in parts if p != ONE}
        if not others:
            return ONE
        if len(others) == 1:
            return others.pop()
        return None

    def _squeezed(self, node: gs.Node, axis: int, rank: int) -> Optional[Expr]:
        axes = axes_of(node)
        if axes is None:
            return None
        if node.op == "Unsqueeze":
            axes = sorted(a % rank for a in axes)
            if axis in axes:
                return ONE
            return self.dim(node.inputs[0], axis - sum(a < axis for a in axes))
        in_rank = self.rank(node.inputs[0])
        if in_rank is None:
            return None
        removed = sorted(a % in_rank for a in axes)
        k = axis
        for a in removed:
            if a <= k:
                k += 1
        return self.dim(node.inputs[0], k)

    def _sliced(self, node: gs.Node, axis: int, rank: int) -> Optional[Expr]:
        """A Slice or Split keeps the axes it does not cut (a Slice [0, INT64_MAX) cuts none)."""
        if self.rank(node.inputs[0]) != rank:
            return None
        if node.op == "Split":
            return self.dim(node.inputs[0], axis) if int(node.attrs.get("axis", 0)) % rank != axis else None
        if "starts" in node.attrs:  # opset < 10
            return None
        ins = list(node.inputs[1:5]) + [None] * (5 - len(node.inputs))
        starts, ends, axes, steps = (const_value(i) if i is not None and i.name else None for i in ins[:4])
        if ins[2] is not None and ins[2].name:
            if axes is None:
                return None
        else:
            n = self.ctx.shape(ins[0])  # the default axes: one per start, from 0
            if n is None or len(n) != 1 or not isinstance(n[0], int):
                return None
            axes = np.arange(n[0])
        axes = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
        if axis not in axes:
            return self.dim(node.inputs[0], axis)  # an axis the Slice does not cut
        if starts is None or ends is None:
            return None
        i = axes.index(axis)
        s, e = int(np.asarray(starts).reshape(-1)[i]), int(np.asarray(ends).reshape(-1)[i])
        st = 1 if steps is None else int(np.asarray(steps).reshape(-1)[i])
        return self.dim(node.inputs[0], axis) if (s, st) == (0, 1) and e >= _BIG else None

    # ------------------------------------------------------------------ values

    def scalar(self, t: gs.Tensor) -> Optional[Expr]:
        """The one integer a tensor of one element holds, or None."""
        v = self.value(t)
        if v is None or len(v.items) != 1 or not isinstance(v.items[0], Expr):
            return None
        return v.items[0]

    def value(self, t: gs.Tensor, depth: int = MAX_DEPTH) -> Optional[Value]:
        """The elements of a small integer or bool tensor of rank 0 or 1, or None."""
        if t.name in self._values:
            return self._values[t.name]
        found = self._value(t, depth - 1) if depth > 0 else None
        if t.name:
            self._values[t.name] = found
        return found

    def _value(self, t: gs.Tensor, depth: int) -> Optional[Value]:
        shape = const_shape(t)
        if shape is not None:
            if len(shape) > 1 or int(np.prod(shape)) > SMALL:
                return None
            v = const_value(t)
            if v is None:
                return None
            v = np.asarray(v)
            if v.dtype == np.bool_:
                return Value([bool(x) for x in v.reshape(-1)], v.ndim)
            if v.dtype.kind not in "iu":
                return None
            return Value([Expr.of(int(x)) for x in v.reshape(-1)], v.ndim)
        node = producer(t)
        if node is None or (node.domain or "") not in DEFAULT_DOMAINS or len(node.outputs) != 1:
            return None
        op, ins = node.op, list(node.inputs)

        def arg(i: int) -> Optional[Value]:
            return self.value(ins[i], depth) if len(ins) > i and ins[i].name else None

        try:
            if op == "Shape":
                r = self.rank(ins[0])
                if r is None:
                    return None
                start = int(node.attrs.get("start", 0))
                end = node.attrs.get("end")
                axes = range(r)[slice(start, None if end is None else int(end))]
                if len(axes) > SMALL:
                    return None
                return Value([self.dim(ins[0], a) for a in axes], 1)
            if op in ("Identity", "Cast"):
                v = arg(0)
                if v is None or op == "Identity":
                    return v
                to = onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))
                if np.issubdtype(to, np.integer):  # ints stay (dims fit), bools become 0 / 1
                    return Value([Expr.of(int(x)) if isinstance(x, bool) else x for x in v.items], v.rank)
                if to == np.bool_:
                    return Value([_truth(x) for x in v.items], v.rank)
                return None
            if op == "Gather":
                v, idx = arg(0), const_value(ins[1])
                if v is None or v.rank != 1 or idx is None:
                    return None
                idx = np.asarray(idx)
                picked = [v.items[int(i)] for i in idx.reshape(-1)]
                return Value(picked, idx.ndim)
            if op in ("Unsqueeze", "Squeeze", "Reshape", "Flatten"):
                v = arg(0)
                if v is None:
                    return None
                r = self.rank(t)
                return Value(v.items, r) if r in (0, 1) and len(v.items) == (1 if r == 0 else len(v.items)) else None
            if op == "Concat":
                items: list[Item] = []
                for i in range(len(ins)):
                    v = arg(i)
                    if v is None or v.rank != 1:
                        return None
                    items += v.items
                return Value(items, 1)
            if op == "ConstantOfShape":
                n = arg(0)
                if n is None or len(n.items) != 1 or not isinstance(n.items[0], Expr) or not n.items[0].is_const:
                    return None
                fill = node.attrs.get("value")
                fill = np.zeros(1, np.float32) if fill is None else np.asarray(fill.values).reshape(-1)
                if fill.dtype.kind not in "iub" or n.items[0].const > SMALL:
                    return None
                x = bool(fill[0]) if fill.dtype == np.bool_ else Expr.of(int(fill[0]))
                return Value([x] * n.items[0].const, 1)
            if op in ("Add", "Sub", "Mul", "Equal", "Where", "Slice"):
                return self._elementwise(node, [arg(i) for i in range(len(ins))])
        except (KeyError, IndexError, TypeError, ValueError):
            return None
        return None

    def _elementwise(self, node: gs.Node, args: list[Optional[Value]]) -> Optional[Value]:
        if node.op == "Slice":
            v = args[0]
            bounds = [const_value(i) if i.name else None for i in node.inputs[1:]]
            if v is None or v.rank != 1 or any(b is None for b in bounds[:2]):
                return None
            axes = bounds[2] if len(bounds) > 2 and bounds[2] is not None else [0]
            steps = bounds[3] if len(bounds) > 3 and bounds[3] is not None else [1]
            if [int(a) for a in np.asarray(axes).reshape(-1)] not in ([0], [-1]):
                return None
            s, e, st = (int(np.asarray(b).reshape(-1)[0]) for b in (bounds[0], bounds[1], steps))
            return Value(v.items[slice(s, e, st)], 1)
        if any(a is None for a in args):
            return None
        n = max(len(a.items) for a in args)
        if any(len(a.items) not in (1, n) for a in args):
            return None
        rank = max(a.rank for a in args)

        def at(a: Value, i: int) -> Item:
            return a.items[0] if len(a.items) == 1 else a.items[i]

        out: list[Item] = []
        for i in range(n):
            xs = [at(a, i) for a in args]
            out.append(_apply(node.op, xs))
        return Value(out, rank)


def _apply(op: str, xs: list[Item]) -> Item:
    if op == "Where":
        cond, a, b = xs
        return None if not isinstance(cond, bool) else (a if cond else b)
    a, b = xs
    if not (isinstance(a, Expr) and isinstance(b, Expr)):
        return None
    if op == "Add":
        return a + b
    if op == "Sub":
        return a - b
    if op == "Mul":
        if a.is_const:
            return b.scaled(a.const)
        if b.is_const:
            return a.scaled(b.const)
        return None
    if op == "Equal":
        diff = a - b
        if diff.is_const:
            return diff.const == 0
        # A sum of dimensions with a non-negative constant never equals a negative constant (torch's -1).
        if (a.nonnegative() and b.is_const and b.const < 0) or (b.nonnegative() and a.is_const and a.const < 0):
            return False
        return None
    return None


def _truth(x: Item) -> Optional[bool]:
    if isinstance(x, bool):
        return x
    if isinstance(x, Expr) and x.is_const:
        return x.const != 0
    return None


def axes_of(node: gs.Node) -> Optional[list[int]]:
    """Unsqueeze's / Squeeze's axes (attribute before opset 13, input after)."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = const_value(node.inputs[1])
        return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    return None


def is_int_cast(node: Optional[gs.Node]) -> bool:
    """A Cast to an integer type (positions and lengths go through int64 Casts)."""
    if not is_op(node, "Cast"):
        return False
    try:
        return np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])), np.integer)
    except (KeyError, ValueError, TypeError):
        return False
