"""Which graph every node lives in, and which values a graph can see.

onnx-graphsurgeon shares an outer tensor with every subgraph that reads it, so
a rule that follows a tensor's readers can step into an If branch or a Loop /
Scan body, and one that follows producers can step out of one. The engine
asks this index where a match's nodes live before it changes any graph.
Built once per rewrite; the engine tells it about the nodes it adds and takes
out (no pass adds or removes a graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import onnx_graphsurgeon as gs

from .match import producer

# Bodies that run once per iteration (If branches run at most once).
LOOP_OPS = frozenset({"Loop", "Scan"})


@dataclass(eq=False)
class Scope:
    """One graph of the model, with the graph and node holding it."""

    graph: gs.Graph
    path: str  # "main" or "main/If_3.then_branch", as reports name it
    parent: Optional["Scope"] = None
    holder: Optional[gs.Node] = None  # the If / Loop / Scan node whose attribute this graph is

    def chain(self) -> Iterator["Scope"]:
        """This scope, then the ones it is nested in, outwards."""
        scope: Optional[Scope] = self
        while scope is not None:
            yield scope
            scope = scope.parent

    def inside(self, outer: "Scope") -> bool:
        """Whether this graph is `outer` or nested in it, at any depth."""
        return any(s is outer for s in self.chain())

    def loop_below(self, outer: "Scope") -> Optional["Scope"]:
        """The outermost Loop / Scan body between `outer` (excluded) and this graph, or None."""
        found = None
        for scope in self.chain():
            if scope is outer:
                break
            if scope.holder is not None and scope.holder.op in LOOP_OPS:
                found = scope
        return found


def subgraphs(node: gs.Node, path: str) -> Iterator[tuple[gs.Graph, str]]:
    """The graphs in `node`'s attributes with their report paths."""
    for attr, value in node.attrs.items():
        for index, sub in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(sub, gs.Graph):
                suffix = f"[{index}]" if isinstance(value, list) else ""
                yield sub, f"{path}/{node.name or node.op}.{attr}{suffix}"


class Scopes:
    """Every graph of a model, outermost first, and the graph of every node."""

    def __init__(self, graph: gs.Graph, path: str = "main"):
        self.all: list[Scope] = []  # a graph before those nested in it, as the engine visits them
        self._of_node: dict[int, Scope] = {}
        self._of_input: dict[int, Scope] = {}
        self._outputs: dict[str, list[Scope]] = {}  # tensor name -> the graphs returning it
        self._add(Scope(graph, path))

    def _add(self, scope: Scope) -> None:
        self.all.append(scope)
        self.place(scope.graph.nodes, scope)
        # A Loop body's loop-carried and a Scan body's per-iteration inputs belong to the body.
        self._of_input.update((id(t), scope) for t in scope.graph.inputs)
        # By name: gs gives a subgraph output its own tensor even where the name is an outer value's.
        for tensor in scope.graph.outputs:
            self._outputs.setdefault(tensor.name, []).append(scope)
        for node in scope.graph.nodes:
            for sub, path in subgraphs(node, scope.path):
                self._add(Scope(sub, path, scope, node))

    @property
    def main(self) -> Scope:
        return self.all[0]

    def of(self, node: gs.Node) -> Optional[Scope]:
        """The graph `node` lives in; None once it has been taken out."""
        return self._of_node.get(id(node))

    def place(self, nodes: Iterable[gs.Node], scope: Scope) -> None:
        for node in nodes:
            self._of_node[id(node)] = scope

    def forget(self, nodes: Iterable[gs.Node]) -> None:
        for node in nodes:
            self._of_node.pop(id(node), None)

    def is_output(self, tensor: gs.Tensor) -> bool:
        """Whether `tensor` is an output of its own graph or of one nested in it, at any depth
        (readers other than nodes). Sibling branches may reuse a name for values of their own."""
        returning = self._outputs.get(tensor.name, []) if tensor.name else []
        home = self.home(tensor)
        return any(home is None or scope.inside(home) for scope in returning)

    def home(self, tensor: gs.Tensor) -> Optional[Scope]:
        """The graph defining `tensor` (its producer's, or the graph it is an input of); None
        for constants, which gs writes into every graph that reads them, and for unknowns."""
        node = producer(tensor)
        return self.of(node) if node is not None else self._of_input.get(id(tensor))

    def visible(self, tensor: gs.Tensor, scope: Scope) -> bool:
        """Whether nodes of `scope` may read `tensor`: a constant, or a value of scope's
        graph or of a graph it is nested in (outer values are visible in nested graphs)."""
        if isinstance(tensor, gs.Constant):
            return True
        home = self.home(tensor)
        return home is not None and scope.inside(home)
