"""Everything a rule may ask about the graph it is looking at."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Optional

import onnx_graphsurgeon as gs

from .constants import scalar_value
from .match import first_other_consumer, operands
from .scopes import Scope, Scopes
from .types import Dim, TypeTable


@dataclass
class Names:
    """Node and tensor names already taken anywhere in the model, so new ones never collide."""

    nodes: set[str] = field(default_factory=set)
    tensors: set[str] = field(default_factory=set)

    @staticmethod
    def _claim(taken: set[str], base: str) -> str:
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    def node(self, base: str) -> str:
        return self._claim(self.nodes, base)

    def tensor(self, base: str) -> str:
        return self._claim(self.tensors, base)


@dataclass(frozen=True)
class Pick:
    """What `quake-onnx tune` chose for one anchor node (rewrite_model's
    `select`): the order of every com.quake node made from it, and attributes
    set on its com.quake Softmax ((name, value) pairs: the exaq method)."""

    order: int
    softmax: tuple = ()


@dataclass
class Context:
    scope: Scope  # the graph being visited
    scopes: Scopes  # every graph of the model
    opset: int  # of the default domain
    order: int
    types: TypeTable
    names: Names
    skip: frozenset[str] = frozenset()  # node names the user keeps as they are
    # False for a model ONNX Runtime has already laid out (optimize(ort_level="all")): its
    # conv activations then run blocked, and only plain elementwise replacements are valid there.
    keep_conv_layout: bool = True
    # When set, only these (rule name, anchor node name) pairs are replaced, each as its Pick says.
    select: Optional[Mapping[tuple[str, str], Pick]] = None
    softmax_attrs: tuple = ()  # (name, value) pairs every com.quake Softmax made now gets

    @property
    def graph(self) -> gs.Graph:
        return self.scope.graph

    @property
    def path(self) -> str:
        return self.scope.path

    def subgraph(self, scope: Scope) -> "Context":
        return replace(self, scope=scope)

    def local(self, node: gs.Node) -> bool:
        """Whether `node` lives in the graph being visited (a tensor's readers and producer may not)."""
        return self.scopes.of(node) is self.scope

    def first_other_consumer(self, tensors: Iterable[gs.Tensor], inside: Iterable[gs.Node]) -> Optional[gs.Tensor]:
        """The first of `tensors` read by a node outside `inside`, in any graph, or
        an output of any graph; None when only `inside` reads them."""
        return first_other_consumer(tensors, inside, self.scopes.is_output)

    def elem_type(self, tensor: gs.Tensor) -> Optional[int]:
        return self.types.elem_type(tensor)

    def shape(self, tensor: gs.Tensor) -> Optional[list[Dim]]:
        return self.types.shape(tensor)

    def rank(self, tensor: gs.Tensor) -> Optional[int]:
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def scalar_operand(self, node: gs.Node) -> Optional[tuple[float, gs.Tensor]]:
        """(constant, other operand) of a commutative binary node with a one-element
        constant operand (stored or computed, constants.py) that does not raise the other
        operand's rank (a [1,1,1] constant would)."""
        pair = operands(node, lambda t: scalar_value(t) is not None)
        if pair is None:
            return None
        const, other = pair
        value = self._within_rank(scalar_value(const), other)
        return None if value is None else (value, other)

    def scalar_divisor(self, node: gs.Node) -> Optional[float]:
        """The constant c of Div(x, c), under the same rank rule."""
        if len(node.inputs) != 2:
            return None
        value = scalar_value(node.inputs[1])
        return None if value is None else self._within_rank(value, node.inputs[0])

    def scalar_against(self, t: gs.Tensor, x: gs.Tensor) -> Optional[float]:
        """The one-element constant t as a float when combining it with x elementwise
        keeps x's rank (a [1, 1, 1, 1, 1] t would raise a rank-4 x), else None."""
        value = scalar_value(t)
        return None if value is None else self._within_rank(value, x)

    def _within_rank(self, value, x: gs.Tensor) -> Optional[float]:
        # A [1] constant raises a rank-0 x to [1]: only a 0-d one keeps it. An x
        # of unknown rank takes 0-d and [1] constants (a rank-0 activation is
        # not what exporters make).
        rank = self.rank(x)
        if value.ndim > (1 if rank is None else rank):
            return None
        return float(value.reshape(()))

    def variable(self, base: str) -> gs.Variable:
        # No dtype on purpose: gs would export value_info for it, and the model had none.
        return gs.Variable(self.names.tensor(base))
