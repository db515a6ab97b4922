"""EXAQ clip calibration behind `quake-onnx calibrate` (docs/ops.md).

The exaq softmax clips z = x - max at C. With clip = 0 each call derives C
from each row's standard deviation, which costs a statistics pass over the
row and a level table per row. The authors instead fix C per layer after the
first calls; this does the same offline: run sample inputs, measure sigma of
every exaq Softmax node's input (the mean over all rows and calls of the
per-row sigma of the live elements, as the kernels measure it), and write
C = slope(bits) * sigma + offset(bits) into the node's clip.

Only com.quake Softmax nodes with method "exaq" in the main graph are
calibrated (nodes inside If/Loop bodies keep their clip); `optimize
--softmax-method exaq` makes them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Mapping, Optional, Union

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from . import modelio, reference, sessions, writes
from .modelio import ModelFileError

QUAKE = "com.quake"
ModelLike = Union[str, os.PathLike, onnx.ModelProto]


class CalibrateError(ModelFileError):
    """Bad model, inputs or options (exit 2), or a failed run (exit 1)."""


@dataclasses.dataclass
class NodeCalibration:
    node: str
    bits: int
    rows: int  # rows (softmax slices) measured over all calls
    sigma: float  # mean per-row sigma of the live elements; NaN if no row was live
    clip: float  # the clip written (the old one when nothing was measured)
    old_clip: float
    written: bool


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def exaq_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """com.quake Softmax nodes of the main graph with method "exaq"."""
    out = []
    for node in model.graph.node:
        method = _attr(node, "method", b"quake")
        method = method.decode() if isinstance(method, bytes) else method
        if node.domain == QUAKE and node.op_type == "Softmax" and method == "exaq":
            out.append(node)
    return out


def _probe(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of the model that also outputs `tensors` (the nodes' inputs)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}  # inputs come from the feed
    types = {}
    for vi in list(probe.graph.input) + list(probe.graph.value_info) + list(probe.graph.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for name in tensors:
        if name not in outputs:
            # The element type is the node's (float or float16); ORT checks it,
            # and states it itself for an output given without a type.
            info = (
                helper.make_tensor_value_info(name, types[name], None)
                if name in types
                else onnx.ValueInfoProto(name=name)
            )
            probe.graph.output.append(info)
            outputs.add(name)
    return probe


def _session(model: onnx.ModelProto, threads: Optional[int], libraries) -> ort.InferenceSession:
    # The probed tensors must stay what the graph computes: no fusions.
    so = sessions.options(libraries, threads=threads or 0)
    return sessions.open_session(model.SerializeToString(), so)


def _infer_types(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from .schemas import register_schemas

        register_schemas()
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        return model


def check_destination(
    graph: Optional[onnx.ModelProto],
    src: Optional[Union[str, os.PathLike]],
    output: Optional[Union[str, os.PathLike]],
    protect: Iterable[Union[str, os.PathLike]] = (),
) -> writes.InputFiles:
    """The files calibrate reads (the model at `src`, whose graph is `graph`,
    with its external data, and `protect`); raises ModelFileError (exit code
    2) when `output` is one of them or cannot be written. The command calls
    it before it generates inputs, so that a refused OUT is its only line."""
    protected = writes.InputFiles()
    for path in protect:
        protected.add(path, "an input file of this command")
    if graph is not None and src is not None:
        protected.add_model(graph, writes.absolute(src))
    if output is not None:
        writes.check_output_path(writes.absolute(output), inputs=protected, with_data=True)
        if graph is not None and modelio.has_external_data(graph):
            writes.refuse_data_beyond_link(output)
    return protected


def calibrate(
    model_or_path: ModelLike,
    inputs: Iterable[Mapping[str, np.ndarray]],
    output: Optional[Union[str, os.PathLike]] = None,
    *,
    recalibrate: bool = False,
    threads: Optional[int] = None,
    custom_ops_libraries: Iterable[Union[str, os.PathLike]] = (),
    protect: Iterable[Union[str, os.PathLike]] = (),
) -> tuple[onnx.ModelProto, list[NodeCalibration]]:
    """Fixes the clip of every exaq Softmax node from sample inputs.

    model_or_path: a model with com.quake Softmax nodes of method "exaq"
        (a path, or a ModelProto with its external data loaded).
    inputs: feeds, one dict (input name -> array) per run; the mean sigma over
        all rows of all runs is what the clip is computed from.
    output: where to write the calibrated model (None: write nothing).
    recalibrate: also recompute nodes whose clip is already fixed (non-zero);
        by default only clip = 0 nodes are calibrated.
    custom_ops_libraries: libraries the model's other nodes need
        (onnxruntime-extensions' is registered by itself for ai.onnx.contrib).
    protect: other files the caller read (input sets): `output` may be none
        of them, nor the input model or its external data.

    Raises CalibrateError (nothing written): exit_code 2 for bad input, 1
    for a failed run of the tool's own; sessions.LibraryError (exit_code 2)
    for a custom-op library, or QUAKE_ONNX_LIBRARY, that does not exist or load.

    Returns the calibrated model and one NodeCalibration per exaq node.
    """
    libraries = sessions.user_libraries(custom_ops_libraries)
    had_external = False
    if isinstance(model_or_path, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(model_or_path)
        protected = check_destination(None, None, output, protect)
    else:
        src = writes.absolute(model_or_path)
        model = modelio.load_graph(src)
        modelio.check_external_data(model, src)
        protected = check_destination(model, src, output, protect)
        had_external = modelio.has_external_data(model)
        modelio.load_external_data(model, src)
    dest = writes.absolute(output) if output is not None else None
    nodes = exaq_nodes(model)
    if not nodes:
        raise CalibrateError(
            'no com.quake Softmax node with method "exaq" in the main graph '
            "(make them with `quake-onnx optimize --softmax-method exaq`)"
        )
    chosen = [n for n in nodes if recalibrate or float(_attr(n, "clip", 0.0)) == 0.0]
    results = {
        id(n): NodeCalibration(
            n.name,
            int(_attr(n, "bits", 3)),
            0,
            float("nan"),
            float(_attr(n, "clip", 0.0)),
            float(_attr(n, "clip", 0.0)),
            False,
        )
        for n in nodes
    }
    if chosen:
        if isinstance(inputs, (Mapping, str, os.PathLike)):  # one feed, or the CLI's .npz, where a list is taken
            raise CalibrateError("inputs: give a list of feeds, each a dict of input name to array")
        sums = {id(n): 0.0 for n in chosen}
        rows = {id(n): 0 for n in chosen}
        probe = _probe(_infer_types(model), [n.input[0] for n in chosen])
        try:
            sess = _session(probe, threads, sessions.libraries_for(model, libraries))
        except sessions.LibraryError:
            raise
        except Exception as e:
            raise CalibrateError(f"the input model does not load in ONNX Runtime: {sessions.one_line(e)}") from e
        names = [o.name for o in sess.get_outputs()]
        runs = 0
        for feed in inputs:
            if not isinstance(feed, Mapping):
                raise CalibrateError(f"inputs: feed {runs + 1} is a {type(feed).__name__}, not a dict of arrays")
            try:
                values = dict(zip(names, sess.run(None, dict(feed))))
            except Exception as e:
                raise CalibrateError(f"run {runs + 1} failed: {sessions.one_line(e)}") from e
            runs += 1
            for n in chosen:
                x = values.get(n.input[0], feed.get(n.input[0]) if hasattr(feed, "get") else None)
                sigma, count = reference.exaq_row_stats(np.asarray(x), int(_attr(n, "axis", -1)))
                live = count > 0
                sums[id(n)] += float(np.sum(sigma[live]))
                rows[id(n)] += int(np.count_nonzero(live))
        if runs == 0:
            raise CalibrateError("no inputs: give at least one sample")
        for n in chosen:
            r = results[id(n)]
            r.rows = rows[id(n)]
            if r.rows:
                r.sigma = sums[id(n)] / r.rows
                # ONNX float attributes are float32; a clip that rounds to 0 would mean "derive".
                r.clip = min(float(np.float32(reference.exaq_clip(r.bits, r.sigma))), -1e-6)
                _set_attr(n, "clip", r.clip)
                r.written = True
    if dest is not None:
        external = had_external or modelio.needs_external_data(model)
        try:
            writes.save_model_atomic(model, dest, external=external, keep=protected)
        except OSError as e:
            raise CalibrateError(f"cannot write {dest}: {e.strerror or e}", exit_code=1) from None
    return model, [results[id(n)] for n in nodes]
