"""Where `check` gets the inputs of a model: an .npz file, the model-zoo data
sets beside the model, or values generated from the model's input specs."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..modelio import ModelFileError

# Integer inputs that feed no Gather we can read get ids below this.
DEFAULT_ID_BOUND = 32
# Height and width of an image-like input whose spatial dimensions have no size or name.
DEFAULT_IMAGE_SIZE = 224


class InputError(ModelFileError):
    """Inputs that do not fit the model or cannot be read: exit 2."""


@dataclass
class InputSet:
    """Feeds for one run, and the outputs recorded with them (model zoo)."""

    feeds: dict[str, np.ndarray]
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "generated"


@dataclass
class Inputs:
    source: str  # "npz", "test_data_set" or "generated"
    sets: list[InputSet]
    warnings: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    notes: list[str] = field(default_factory=list)  # what was chosen or changed by itself (image sizes, casts)
    dims: dict[str, int] = field(default_factory=dict)  # the --dim keys generation used, with their sizes


_ONNX_TO_NP = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT32: np.uint32,
    onnx.TensorProto.UINT64: np.uint64,
    onnx.TensorProto.BOOL: np.bool_,
}


@dataclass
class InputSpec:
    name: str
    dtype: Optional[type]  # None: a type check cannot generate (string, sequence...)
    dims: list  # int, str (symbolic) or None (unknown)


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed: graph inputs that are not initializers
    (before IR 4 every initializer was listed as an input too)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for info in model.graph.input:
        if info.name in inits:
            continue
        t = info.type.tensor_type
        dtype = _ONNX_TO_NP.get(t.elem_type) if info.type.HasField("tensor_type") else None
        dims = []
        if t.HasField("shape"):
            for d in t.shape.dim:
                dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        specs.append(InputSpec(info.name, dtype, dims))
    return specs


def parse_dims(values: Sequence[str]) -> dict[str, int]:
    """`--dim batch=1 --dim seq=128` as {"batch": 1, "seq": 128}. A size
    may be 0: a decoder's first step reads an empty KV cache (`--dim past=0`)."""
    dims = {}
    for value in values:
        name, eq, size = value.partition("=")
        name = name.strip()
        if not eq or not name or not size.strip().isdigit():
            raise InputError(f"{value!r} is not NAME=SIZE with an integer size of 0 or more, e.g. seq=128")
        dims[name] = int(size)
    return dims


def load_inputs(
    model: onnx.ModelProto,
    model_path: Path,
    *,
    npz: Optional[Path] = None,
    dims: Mapping[str, int] = {},
    vocab: Optional[int] = None,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    ranges: Mapping[str, tuple[float, float]] = {},
    model_name: Optional[str] = None,
    warn_unused_dims: bool = True,
    ranges_named: Optional[Collection[str]] = None,
    npz_named: str = "--inputs",
) -> Inputs:
    """--inputs first, then test_data_set_* beside the model, then generated."""
    specs = graph_inputs(model)
    notes: list[str] = []
    if npz is not None:
        return Inputs("npz", [InputSet(_read_npz(npz, specs, notes, npz_named), name=npz.name)], notes=notes)
    sets = sorted(model_path.parent.glob("test_data_set_*"), key=_natural)
    sets = [s for s in sets if s.is_dir()]
    if sets:
        return Inputs("test_data_set", [_read_data_set(s, model, specs, notes) for s in sets], notes=notes)
    inputs = Inputs("generated", [], seed=seed)
    feeds = generate(
        model,
        specs,
        dims=dims,
        vocab=vocab,
        seed=seed,
        warnings=inputs.warnings,
        image_size=image_size,
        ranges=ranges,
        model_name=model_name,
        notes=inputs.notes,
        used=inputs.dims,
        warn_unused_dims=warn_unused_dims,
        ranges_named=ranges_named,
    )
    inputs.sets.append(InputSet(feeds))
    return inputs


def _natural(path: Path):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def _conform(name: str, value: np.ndarray, spec: InputSpec, where: str, notes: list[str]) -> np.ndarray:
    if spec.dtype is not None and value.dtype != spec.dtype:
        if not np.can_cast(value.dtype, spec.dtype, casting="same_kind"):
            raise InputError(f"{where}: input {name} is {value.dtype}, the model takes {np.dtype(spec.dtype).name}")
        with np.errstate(over="ignore"):  # counted in the note below, not warned about
            cast = value.astype(spec.dtype)
        if np.dtype(spec.dtype).itemsize < value.dtype.itemsize:  # narrowed (a float16 model, float32 data)
            note = f"input {name}: {value.dtype} data cast to {np.dtype(spec.dtype).name}, the model's type"
            if value.dtype.kind == "f":
                overflowed = int(np.count_nonzero(np.isfinite(value) & ~np.isfinite(cast)))
                note += f" ({overflowed} finite values became inf)" if overflowed else ""
            if note not in notes:
                notes.append(note)
        value = cast
    if spec.dims and len(spec.dims) != value.ndim:
        raise InputError(f"{where}: input {name} has rank {value.ndim}, the model takes rank {len(spec.dims)}")
    for axis, (want, got) in enumerate(zip(spec.dims, value.shape)):
        if isinstance(want, int) and want > 0 and want != got:
            raise InputError(
                f"{where}: input {name} has shape {list(value.shape)}, the model takes "
                f"{[d if d is not None else '?' for d in spec.dims]} (axis {axis})"
            )
    return value


def _read_npz(path: Path, specs: list[InputSpec], notes: list[str], named: str = "--inputs") -> dict[str, np.ndarray]:
    """The arrays of an .npz, one per input; `named` is how messages call the
    file (--inputs, or the manifest's inputs key)."""
    if not path.is_file():
        raise InputError(f"{named} {path} does not exist" if not path.exists() else f"{named} {path} is not a file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as e:  # zipfile, pickle refusal, truncated array
        raise InputError(f"{named} {path} is not a readable .npz file ({type(e).__name__}: {e})") from None
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise InputError(
            f"{named} {path} has no array for input {', '.join(missing)} (it has {', '.join(sorted(arrays)) or 'none'})"
        )
    extra = sorted(set(arrays) - {s.name for s in specs})
    if extra:
        raise InputError(
            f"{named} {path}: {', '.join(extra)} is not an input of the model "
            f"(inputs: {', '.join(s.name for s in specs)})"
        )
    return {s.name: _conform(s.name, arrays[s.name], s, str(path), notes) for s in specs}


def _read_tensor(path: Path) -> onnx.TensorProto:
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
        numpy_helper.to_array(tensor)
    except Exception as e:
        raise InputError(f"{path} is not a serialized ONNX tensor ({type(e).__name__})") from None
    return tensor


def _read_data_set(folder: Path, model: onnx.ModelProto, specs: list[InputSpec], notes: list[str]) -> InputSet:
    """input_<i>.pb / output_<i>.pb; tensors are matched by their stored name
    when every name is a model input (output), by position otherwise, as the
    model zoo's own test runner does."""
    ins = [_read_tensor(p) for p in sorted(folder.glob("input_*.pb"), key=_natural)]
    outs = [_read_tensor(p) for p in sorted(folder.glob("output_*.pb"), key=_natural)]
    where = str(folder)
    if len(ins) != len(specs):
        raise InputError(f"{where} has {len(ins)} input_*.pb, the model takes {len(specs)} inputs")
    by_name = {s.name: s for s in specs}
    if all(t.name in by_name for t in ins) and len({t.name for t in ins}) == len(ins):
        pairs = [(by_name[t.name], t) for t in ins]
    else:
        pairs = list(zip(specs, ins))
    feeds = {s.name: _conform(s.name, numpy_helper.to_array(t), s, where, notes) for s, t in pairs}
    out_names = [o.name for o in model.graph.output]
    expected = {}
    if outs:
        if len(outs) > len(out_names):
            raise InputError(f"{where} has {len(outs)} output_*.pb, the model has {len(out_names)} outputs")
        if all(t.name in out_names for t in outs):
            expected = {t.name: numpy_helper.to_array(t) for t in outs}
        else:
            expected = {n: numpy_helper.to_array(t) for n, t in zip(out_names, outs)}
    return InputSet(feeds, expected, name=folder.name)


def _gather_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """For inputs used as Gather indices into an initializer: its size along
    the gathered axis, the exclusive bound of a valid id."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes holding tables
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    shapes[node.output[0]] = list(a.t.dims)
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[0] not in shapes:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = shapes[node.input[0]]
        if table and -len(table) <= axis < len(table):
            size = table[axis]
            bounds[node.input[1]] = min(bounds.get(node.input[1], size), size)
    return bounds


def _unnamed(d) -> bool:
    """No size and no name: a missing dim, a negative size, or the name "?" some exporters write."""
    return d is None or d == "?" or (isinstance(d, int) and d < 0)


def image_axes(spec: InputSpec) -> Optional[tuple[int, tuple[int, int]]]:
    """(channel axis, (height axis, width axis)) of an image-like input: rank 4,
    float or uint8, not a mask, and [N, C, H, W] or [N, H, W, C] with a static
    C in 1..4 (NCHW when both could be)."""
    if len(spec.dims) != 4 or spec.dtype is None or "mask" in spec.name.lower():
        return None
    if np.dtype(spec.dtype).kind not in "fu":
        return None
    for channel, spatial in ((1, (2, 3)), (3, (1, 2))):
        d = spec.dims[channel]
        if isinstance(d, int) and 1 <= d <= 4:
            return channel, spatial
    return None


def _shape(
    spec: InputSpec, dims: Mapping[str, int], image_size: int, used: dict, notes: list[str], model_name: Optional[str]
) -> tuple[int, ...]:
    """The generated shape: a static size, else "INPUT:AXIS" from dims, else
    the dimension's name from dims, else a batch name's 1, else an image-like input's defaults
    (batch 1, height and width `image_size`), else an input error."""
    image = image_axes(spec)
    whose = f"input {spec.name}" + (f" of model {model_name}" if model_name else "")
    shape, defaulted = [], []
    for axis, d in enumerate(spec.dims):
        key = f"{spec.name}:{axis}"
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif key in dims:
            used[key] = dims[key]
            shape.append(dims[key])
        elif isinstance(d, str) and d in dims:
            used[d] = dims[d]
            shape.append(dims[d])
        elif isinstance(d, str) and d != "?" and ("batch" in d.lower() or d in ("N", "B")):
            shape.append(1)  # batch 1 is what latency checks mean when they say nothing
        elif image is not None and (_unnamed(d) or d == 0) and axis != image[0]:
            # Static 0 on an image's batch or spatial axis is an exporter's "unknown" (an empty image
            # runs nothing); elsewhere a static 0 is kept (an empty past, say).
            size = 1 if axis == 0 else image_size
            defaulted.append((axis, size))
            shape.append(size)
        elif isinstance(d, str) and d != "?":
            raise InputError(
                f"{whose} has symbolic dimension {d!r} (axis {axis}); "
                f"set it with --dim {d}=SIZE (in a zoo also dims in {_MANIFEST})"
            )
        elif isinstance(d, int) and d == 0:
            shape.append(0)
        else:
            raise InputError(
                f"{whose} axis {axis} has no size or name; "
                f"set it with --dim {key}=SIZE (in a zoo also dims in {_MANIFEST})"
            )
    if defaulted:
        layout = "[N, C, H, W]" if image[0] == 1 else "[N, H, W, C]"
        parts = [f"axis {a} {'(batch) = 1' if a == 0 else f'= {s} (--image-size)'}" for a, s in defaulted]
        notes.append(
            f"input {spec.name} looks like an image {layout}; its dimensions without a size took "
            f"defaults: {', '.join(parts)}"
        )
    return tuple(shape)


_MANIFEST = "quake-zoo.toml"


def generate(
    model: onnx.ModelProto,
    specs: list[InputSpec],
    *,
    dims: Mapping[str, int] = {},
    vocab: Optional[int] = None,
    seed: int = 0,
    warnings: Optional[list[str]] = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    ranges: Mapping[str, tuple[float, float]] = {},
    model_name: Optional[str] = None,
    notes: Optional[list[str]] = None,
    used: Optional[dict] = None,
    warn_unused_dims: bool = True,
    ranges_named: Optional[Collection[str]] = None,
) -> dict[str, np.ndarray]:
    """Inputs from the specs, reproducible from `seed`.

    `ranges` (input name -> (low, high)) comes first: integers uniform in
    low..high inclusive, floats uniform in [low, high). Otherwise names decide
    the integer ones, as transformer exports name them: masks are ones
    (nothing padded), token_type / segment ids zeros, position ids 0..n-1
    along the last axis, other integers uniform in [0, bound) with bound =
    --vocab, else the row count of the embedding table they index, else
    DEFAULT_ID_BOUND. Float masks are zeros (exports use them as additive
    biases); other floats are standard normal.

    `used` receives the `dims` keys that sized something, `notes` what was
    chosen without being asked (image sizes); a `dims` key nothing used is a
    warning when `warn_unused_dims` (a zoo reports those once for the run), and
    so is a name of `ranges_named` (default: every `ranges` key) that no
    input has (a zoo names those of the model's own manifest entry, not the
    [defaults] that every model inherits)."""
    warnings = warnings if warnings is not None else []
    notes = notes if notes is not None else []
    used = used if used is not None else {}
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"the seed of generated inputs must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(seed)
    bounds = _gather_bounds(model)
    feeds = {}
    # Image-like inputs first: a name they share with another input is then
    # already sized when that input's turn comes.
    order = sorted(specs, key=lambda s: image_axes(s) is None)
    shapes = {}
    for spec in order:
        if spec.dtype is None:
            raise InputError(
                f"input {spec.name}"
                + (f" of model {model_name}" if model_name else "")
                + " is not a numeric tensor; pass --inputs data.npz"
            )
        shapes[spec.name] = _shape(spec, dims, image_size, used, notes, model_name)
    if warn_unused_dims:
        unused = sorted(set(dims) - set(used))
        if unused:
            warnings.append(f"--dim {', '.join(unused)}: no input has such a dimension")
    named = set(ranges) if ranges_named is None else set(ranges_named)
    unknown = sorted(named - {spec.name for spec in specs})
    if unknown:  # a misspelt name in a manifest's ranges was ignored in silence
        warnings.append(f"ranges {', '.join(unknown)}: the model has no input of that name")
    for spec in specs:
        try:
            feeds[spec.name] = _generated(spec, shapes[spec.name], rng, bounds, vocab, ranges, warnings)
        except (MemoryError, ValueError) as e:  # a size from --dim or --image-size numpy cannot allocate
            raise InputError(f"cannot make input {spec.name} of shape {list(shapes[spec.name])}: {e}") from None
    return feeds


def _generated(spec: InputSpec, shape, rng, bounds, vocab, ranges, warnings: list[str]) -> np.ndarray:
    """One generated input (see generate)."""
    name = spec.name.lower()
    kind = np.dtype(spec.dtype).kind
    if spec.name in ranges:
        low, high = ranges[spec.name]
        if kind in "iub":
            info = np.iinfo(spec.dtype) if kind != "b" else None
            lo, hi = int(math.ceil(low)), int(math.floor(high))
            if info is not None:
                lo, hi = max(lo, int(info.min)), min(hi, int(info.max))
            if lo > hi:
                raise InputError(
                    f"range [{low:g}, {high:g}] of input {spec.name} holds no {np.dtype(spec.dtype).name} value"
                )
            value = rng.integers(lo, hi, shape, endpoint=True, dtype=_draw_type(spec.dtype)).astype(spec.dtype)
        elif high > low:
            value = _uniform(rng, low, high, shape, spec.dtype)
        else:
            value = np.full(shape, low, spec.dtype)
    elif "mask" in name:
        value = np.zeros(shape, spec.dtype) if kind == "f" else np.ones(shape, spec.dtype)
    elif kind == "b":
        value = rng.integers(0, 2, shape, dtype=bool)
    elif kind in "iu":
        if "token_type" in name or "segment" in name:
            value = np.zeros(shape, spec.dtype)
        elif "position" in name and shape:
            value = np.broadcast_to(np.arange(shape[-1]), shape).astype(spec.dtype)
        else:
            bound = vocab or bounds.get(spec.name) or DEFAULT_ID_BOUND
            if vocab and spec.name in bounds and vocab > bounds[spec.name]:
                warnings.append(f"--vocab {vocab} is above input {spec.name}'s table of {bounds[spec.name]} rows")
            high = min(bound, np.iinfo(spec.dtype).max)
            value = rng.integers(0, high, shape, dtype=spec.dtype)
    else:
        value = rng.standard_normal(shape, dtype=_float_draw_type(spec.dtype)).astype(spec.dtype, copy=False)
    return np.asarray(value, order="C")  # ascontiguousarray would make a scalar 1-D


# Drawn in the input's own width where numpy's generator can (float32 and
# float64; integers of every width), so a large input takes its own bytes, not
# twice them in float64 or int64 first.
def _float_draw_type(dtype) -> type:
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _draw_type(dtype) -> type:
    return np.dtype(dtype).type if np.dtype(dtype).kind in "iu" else np.int64


def _uniform(rng, low: float, high: float, shape, dtype) -> np.ndarray:
    """Uniform in [low, high] in dtype, drawn at float32 unless dtype is
    float64 or an end is beyond float32. u high + (1 - u) low, not low +
    u (high - low): the width of [-1e308, 1e308] overflows, the terms do not."""
    limit = float(np.finfo(np.float32).max)
    draw = _float_draw_type(dtype) if max(abs(low), abs(high)) <= limit else np.float64
    u = rng.random(shape, dtype=draw)
    value = u * draw(high)
    np.subtract(draw(1), u, out=u)
    u *= draw(low)
    value += u
    return value.astype(dtype, copy=False)
