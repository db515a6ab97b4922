"""The `quake-onnx` command line.

Every failure, typer's own usage errors included, ends as one `error: ...`
line on stderr and a non-zero exit (2 for bad input or options), never a
traceback: scripts and CI logs read the message, people read one line."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from typer.core import TyperGroup

import quake_onnx


class OneLineErrors(TyperGroup):
    """A typer command group whose every failure is one `error: ...` line on
    stderr and an exit status (2: a usage error), never a box or a
    traceback; `quake-onnx` and `python -m quake_onnx.bench` use it."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        argv = kwargs.get("args", args[0] if args else None)
        empty = _empty_path(self, list(sys.argv[1:] if argv is None else argv))
        if empty:
            typer.echo(f"error: {empty}", err=True)
            sys.exit(2)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as e:  # click's ClickException and UsageError
            if type(e).__name__ == "NoArgsIsHelpError":
                typer.echo(e.format_message(), err=True)
            else:
                hint = ""
                ctx = getattr(e, "ctx", None)
                if ctx is not None and type(e).__name__ != "ClickException":
                    hint = f" (see '{ctx.command_path} --help')"
                typer.echo(f"error: {_one_line(e.format_message())}{hint}", err=True)
            sys.exit(getattr(e, "exit_code", 2))
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        except Terminated:
            typer.echo("error: terminated", err=True)
            sys.exit(128 + signal.SIGTERM)
        except Exception as e:  # a bug: still one line, with what to report
            if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:  # a path the user chose, any argument
                typer.echo(f"error: file name too long: {e.filename or e}", err=True)
                sys.exit(2)
            typer.echo(f"error: internal error ({type(e).__name__}: {_one_line(str(e))}); please report it", err=True)
            sys.exit(1)
        if rv == 130:  # typer turns Ctrl-C into Exit(130), which comes back here as a return value
            typer.echo("error: interrupted", err=True)
        sys.exit(rv if isinstance(rv, int) else 0)


def _empty_path(group: TyperGroup, args: List[str]) -> Optional[str]:
    """The error for a path parameter given '' (as IN, OUT, --inputs '' or
    --custom-ops-library=), or None. Typer reads an empty path as '.', the
    working folder: `zoo ""` walked it and `optimize "" OUT` said the folder
    was no model. Other parameters keep their empty values (--skip-nodes ''
    names the unnamed nodes); a command line click cannot parse is left to
    click's own error."""
    import typing

    try:  # resilient: no callback runs, nothing is converted or checked yet
        _, command, rest = group.resolve_command(group.context_class(group, resilient_parsing=True), list(args))
        parser = command.make_parser(command.context_class(command, resilient_parsing=True))
        values, _, _ = parser.parse_args(args=list(rest))
    except Exception:  # no command, an unknown option, a missing value: click's own message follows
        return None
    hints = typing.get_type_hints(getattr(command.callback, "__wrapped__", command.callback))
    for param in command.params:
        given = values.get(param.name)
        if "Path" not in str(hints.get(param.name, "")) or given is None:
            continue
        if "" in (list(given) if isinstance(given, (list, tuple)) else [given]):
            where = param.opts[0] if param.opts[0].startswith("-") else (param.metavar or param.name.upper())
            return f"{where} was given an empty path"
    return None


class _QuakeCommands(OneLineErrors):
    def resolve_command(self, ctx: Any, args: List[str]) -> Any:
        # `quake-onnx zoo merge ...` is a command of its own (zoo's first argument is otherwise a folder).
        if len(args) >= 2 and args[0] == "zoo" and args[1] == "merge":
            return "zoo merge", self.get_command(ctx, "zoo-merge"), args[2:]
        return super().resolve_command(ctx, args)


def _one_inputs_file(inputs: Optional[List[Path]]) -> Optional[Path]:
    """check's and tune's --inputs: one file. Given twice it silently took
    the last; calibrate takes several (one run each), so a repeat reads as
    meaning that."""
    if inputs and len(inputs) > 1:
        raise typer.BadParameter(
            "takes one file here (several sample sets: test_data_set_* folders beside the model)",
            param_hint="'--inputs'",
        )
    return inputs[0] if inputs else None


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Terminated(BaseException):
    """SIGTERM (what `timeout`, CI runners and `kill` send), raised where
    the interpreter is: like Ctrl-C's KeyboardInterrupt it unwinds through
    every `finally` and context manager, so temporary files and folders go.
    A BaseException, so no `except Exception` swallows it."""


def _terminate(signum: int, frame: Any) -> None:
    # A second SIGTERM must not cut short the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def _output_file(text: str) -> Path:
    """OUT as typed: a path naming a file. A trailing separator, or a last
    part '.' or '..', names a folder (pathlib would drop it and write a file
    of the folder's name); '-' is stdout, which takes reports, not models."""
    if text == "-":
        raise typer.BadParameter("'-' (stdout) takes reports, not models: give a file path")
    if os.path.basename(text) in ("", ".", ".."):
        raise typer.BadParameter(f"{text!r} names a folder; give a file path")
    return Path(text)


def _report_file(text: str) -> Path:
    """A report's FILE as typed: '-' (stdout) or a path naming a file (_output_file)."""
    return Path(text) if text == "-" else _output_file(text)


def one_line_app(help_text: str, cls: type = OneLineErrors) -> typer.Typer:
    """A typer app of commands whose every failure is one line (OneLineErrors):
    no shell-completion options, no rich tracebacks; no arguments prints help."""
    return typer.Typer(
        cls=cls, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=help_text
    )


app = one_line_app("Fast approximate exponentials for ONNX Runtime.", _QuakeCommands)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"quake-onnx {quake_onnx.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """quake-onnx: com.quake kernels for ONNX Runtime."""


@app.command("lib-path")
def lib_path() -> None:
    """Print the path of the custom-op library (for register_custom_ops_library)."""
    try:
        typer.echo(quake_onnx.get_library_path())
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def demo(
    threads: int = typer.Option(1, min=1, help="intra_op_num_threads for both sessions"),
    runs: int = typer.Option(50, min=1, help="timed runs per model"),
    models: Optional[Path] = typer.Option(
        None, help="folder holding encoder_block.onnx (default: the copy installed with the package)"
    ),
    optimized: Optional[Path] = typer.Option(
        None, help="an already optimized encoder_block (default: optimize it now)"
    ),
) -> None:
    """Optimize the bundled encoder block, run it with ORT's own ops and with com.quake kernels, compare."""
    from .demo import run_demo
    from .modelio import ModelFileError

    try:
        code = run_demo(models, threads=threads, runs=runs, optimized=optimized)
    except (FileNotFoundError, ValueError, ModelFileError) as e:  # ModelFileError: a library that does not load
        typer.echo(f"error: {_one_line(str(e))}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _parse_ops(value: Optional[str]) -> Optional[frozenset]:
    if value is None:
        return None
    from .optimize import OptimizeError, parse_ops

    try:
        return parse_ops(value)
    except OptimizeError as e:
        raise typer.BadParameter(str(e)) from None


_ORDER = typer.Option(2, "--order", min=1, max=3, help="1 fastest (~3% exp error), 2 default (~0.2%), 3 most accurate")
_OPS = typer.Option(
    None,
    "--ops",
    metavar="OP,OP",
    callback=_parse_ops,
    help="comma-separated: attention,glu,softmax,logsoftmax,gelu,silu,sigmoid,exp (default: all)",
)
_SKIP = typer.Option(None, "--skip-nodes", metavar="NAME", help="node name to leave alone; repeat for several")
_FUSIONS = typer.Option(
    True,
    "--ort-fusions/--no-ort-fusions",
    help="let ONNX Runtime fuse (Attention, SkipLayerNorm, BiasGelu...) offline before rewriting",
)


def _one_of(value: str, choices) -> str:
    """value as a choice (case and surrounding blanks ignored), or BadParameter naming them."""
    choice = value.strip().lower()
    if choice not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
    return choice


def _parse_level(value: str) -> str:
    from .ort_fusions import LEVELS

    return _one_of(value, LEVELS)


_LEVEL = typer.Option(
    "extended",
    "--ort-level",
    metavar="extended|all",
    callback=_parse_level,
    help="how far ONNX Runtime optimises first: 'extended' (default, portable; keeps conv activations "
    "ORT runs in its NCHWc layout) or 'all' (also lays out convs in NCHWc for THIS machine's CPU, "
    "then replaces their SiLU/Sigmoid: faster CNNs, model tied to this CPU and ORT)",
)


_MIN_ELEMENTS = typer.Option(
    None,
    "--min-elements",
    min=0,
    metavar="N",
    help="leave nodes whose input has a fully static shape of fewer than N elements to ONNX Runtime, and "
    "attention blocks of fewer than N score elements (B*H*Sq*Skv) unfused (default: the measured break-evens, "
    "2048 elements, Exp 8192, attention see docs/optimize.md; 0 replaces and fuses any size)",
)


def _parse_method(value: str) -> str:
    return _one_of(value, ("quake", "exaq"))


_SOFTMAX_METHOD = typer.Option(
    "quake",
    "--softmax-method",
    metavar="quake|exaq",
    callback=_parse_method,
    help="method of the com.quake Softmax nodes: 'quake' (default, polynomial exponential) or 'exaq' "
    "(exponent quantized to --bits bits, table lookup; fix its clip with `quake-onnx calibrate`)",
)
_BITS = typer.Option(
    None, "--bits", min=2, max=8, help="exaq quantization bits, 2..8 (with --softmax-method exaq; default 3)"
)


def _exaq_bits(bits: Optional[int], softmax_method: str) -> int:
    """--bits, which only EXAQ reads: refused without it rather than ignored."""
    if bits is not None and softmax_method != "exaq":
        typer.echo("error: --bits applies to --softmax-method exaq only", err=True)
        raise typer.Exit(2)
    return 3 if bits is None else bits


_LIBRARIES = typer.Option(
    None,
    "--custom-ops-library",
    metavar="PATH",
    help="a custom-op library the model's other nodes need, registered on every ONNX Runtime session the "
    "command opens; repeat for several (onnxruntime-extensions' is registered by itself for ai.onnx.contrib)",
)


def _parse_precision(value: str) -> str:
    return _one_of(value, ("float32", "bfloat16"))


def _parse_tune_precision(value: str) -> str:  # tune's, with "auto"
    from .tuning.space import ATTENTION_PRECISIONS

    return _one_of(value, ATTENTION_PRECISIONS)


_ATTENTION_PRECISION = typer.Option(
    "float32",
    "--attention-precision",
    metavar="float32|bfloat16",
    callback=_parse_precision,
    help="precision of the fused com.quake Attention nodes: 'float32' (default) or 'bfloat16' (Q K^T and P V "
    "tiles in bf16 with float32 accumulation where the CPU has a bf16 engine, float32 elsewhere; --explain "
    "names the engine of this machine)",
)


def _method_title(order: int, softmax_method: str, bits: int, attention_precision: str = "float32") -> str:
    return (
        f"com.quake order {order}"
        + (f", softmax exaq {bits} bits" if softmax_method == "exaq" else "")
        + (f", attention {attention_precision}" if attention_precision != "float32" else "")
    )


def _run_optimize(*args: Any, **kwargs: Any):
    from .modelio import ModelFileError as OptimizeError
    from .optimize import optimize

    try:
        return optimize(*args, **kwargs)
    except OptimizeError as e:  # every input, option and write failure
        typer.echo(f"error: {_one_line(str(e))}", err=True)
        raise typer.Exit(e.exit_code) from None


def _consoles(stdout_taken: bool = False):
    """The console for results and the one for warnings; with `stdout_taken`
    (a report written to '-') both print to stderr."""
    from ._cli_output import make_console

    return make_console(stdout_taken), make_console(True)


def _is_stdout(path: Optional[Path]) -> bool:
    from .writes import is_stdout

    return is_stdout(path)


def _write_report(path: Optional[Path], text: Callable[[], str], written: Path, what: str = "report") -> None:
    """Writes a report after OUT was written: to stdout for '-'. A failure
    exits 1 saying that OUT was written all the same."""
    from . import writes

    if path is None:
        return
    try:
        writes.write_report(text(), path)
    except OSError as e:
        typer.echo(f"error: wrote {written} but not the {what} {path}: {e.strerror or e}", err=True)
        raise typer.Exit(1) from None


@app.command("optimize")
def optimize_cmd(
    src: Path = typer.Argument(..., metavar="IN", help="ONNX model to optimise"),
    dest: Optional[Path] = typer.Argument(
        None, metavar="OUT", parser=_output_file, help="where to write the result (omit with --in-place)"
    ),
    order: int = _ORDER,
    ops: Optional[str] = _OPS,
    skip_nodes: Optional[List[str]] = _SKIP,
    ort_fusions: bool = _FUSIONS,
    ort_level: str = _LEVEL,
    min_elements: Optional[int] = _MIN_ELEMENTS,
    softmax_method: str = _SOFTMAX_METHOD,
    bits: Optional[int] = _BITS,
    attention_precision: str = _ATTENTION_PRECISION,
    custom_ops_library: Optional[List[Path]] = _LIBRARIES,
    explain: bool = typer.Option(
        False, "--explain", help="print every candidate node and why it was or wasn't replaced"
    ),
    report: Optional[Path] = typer.Option(
        None, "--report", metavar="FILE", parser=_report_file, help="write the full report as JSON ('-': stdout)"
    ),
    in_place: bool = typer.Option(False, "--in-place", help="allow OUT to be IN (or omit OUT) and overwrite it"),
) -> None:
    """Fuse attention blocks and replace Softmax, GELU, SiLU/Sigmoid, Exp... with com.quake ops; write OUT."""
    from . import _cli_output
    from .modelio import shown

    bits = _exaq_bits(bits, softmax_method)

    if dest is None and not in_place:
        typer.echo("error: missing OUT (or pass --in-place to overwrite IN)", err=True)
        raise typer.Exit(2)
    out = dest if dest is not None else src
    _, result = _run_optimize(
        src,
        out,
        order=order,
        ops=ops,
        skip_nodes=skip_nodes or (),
        ort_fusions=ort_fusions,
        ort_level=ort_level,
        in_place=in_place,
        min_elements=min_elements,
        softmax_method=softmax_method,
        bits=bits,
        custom_ops_libraries=custom_ops_library or (),
        also_written=[("report", report)] if report is not None and not _is_stdout(report) else (),
        attention_precision=attention_precision,
    )
    _write_report(report, result.to_json, out)
    console, err = _consoles(stdout_taken=_is_stdout(report))
    _cli_output.show(
        console,
        err,
        result,
        title=f"{src}: {_method_title(order, softmax_method, bits, attention_precision)}",
        explain_nodes=explain,
        written=shown(out),
    )
    if report is not None and not _is_stdout(report):
        console.print(f"report {report}", soft_wrap=True, highlight=False)


@app.command("inspect")
def inspect_cmd(
    src: Path = typer.Argument(..., metavar="IN", help="ONNX model to look at"),
    order: int = _ORDER,
    ops: Optional[str] = _OPS,
    skip_nodes: Optional[List[str]] = _SKIP,
    ort_fusions: bool = _FUSIONS,
    ort_level: str = _LEVEL,
    min_elements: Optional[int] = _MIN_ELEMENTS,
    softmax_method: str = _SOFTMAX_METHOD,
    bits: Optional[int] = _BITS,
    attention_precision: str = _ATTENTION_PRECISION,
    custom_ops_library: Optional[List[Path]] = _LIBRARIES,
) -> None:
    """Show what `optimize` would replace and why, writing nothing."""
    from . import _cli_output

    bits = _exaq_bits(bits, softmax_method)

    _, result = _run_optimize(
        src,
        None,
        order=order,
        ops=ops,
        skip_nodes=skip_nodes or (),
        ort_fusions=ort_fusions,
        ort_level=ort_level,
        min_elements=min_elements,
        softmax_method=softmax_method,
        bits=bits,
        custom_ops_libraries=custom_ops_library or (),
        attention_precision=attention_precision,
    )
    console, err = _consoles()
    _cli_output.show(
        console,
        err,
        result,
        title=f"{src}: {_method_title(order, softmax_method, bits, attention_precision)} (nothing written)",
        explain_nodes=True,
        dry_run=True,
    )


def _parse_dims(values: Optional[List[str]]) -> Optional[List[str]]:
    from .check.inputs import InputError, parse_dims

    try:
        parse_dims(values or [])
    except InputError as e:
        raise typer.BadParameter(str(e)) from None
    return values


_DIMS = typer.Option(
    None,
    "--dim",
    metavar="NAME=SIZE",
    callback=_parse_dims,
    help="size of a symbolic input dimension of generated inputs; repeat (--dim batch=1 --dim seq=128)",
)
_VOCAB = typer.Option(
    None,
    "--vocab",
    min=1,
    help="generated integer ids are below this (default: the rows of the table they index, else 32)",
)
_SEED = typer.Option(0, "--seed", min=0, help="seed of generated inputs")
_THREADS = typer.Option(1, "--threads", min=1, help="intra_op_num_threads of both sessions")
_RUNS = typer.Option(20, "--runs", min=1, help="timed runs of each model; the median is reported")
_WARMUP = typer.Option(3, "--warmup", min=0, help="untimed runs of each model first (0 still runs one)")
_TOP_K = typer.Option(5, "--top-k", min=1, help="k of the top-k agreement of class-score outputs")
_MAX_ABS = typer.Option(
    None, "--max-abs-error", min=0.0, metavar="T", help="fail above this max abs error (any output)"
)
_MIN_COS = typer.Option(0.999, "--min-cosine", max=1.0, help="fail below this cosine similarity (any output)")
_MIN_TOP1 = typer.Option(
    None,
    "--min-top1-agreement",
    min=0.0,
    max=1.0,
    help="fail below this share of rows with the same argmax (class-score outputs)",
)
_MIN_SPEEDUP = typer.Option(
    None, "--min-speedup", min=0.0, help="fail below this speedup (original / optimized median)"
)
_IMAGE_SIZE = typer.Option(
    224,
    "--image-size",
    min=1,
    metavar="PIXELS",
    help="height and width of generated image-like inputs ([N,C,H,W] / [N,H,W,C], C <= 4) "
    "whose spatial dimensions have no size or name (their batch gets 1)",
)


_TUNE = typer.Option(
    False, "--tune", help="tune each model (`quake-onnx tune`, to these thresholds) instead of optimizing it"
)


def _tune_budget(value: float) -> float:
    if not value > 0 or value == float("inf"):
        raise typer.BadParameter(f"{value:g} is not a number of seconds > 0")
    return value


def _timeout(value: Optional[float]) -> Optional[float]:
    # 0 read as "no limit" while the report recorded a timeout of 0.0: leave the option out for that.
    if value is not None and not (0 < value < float("inf")):
        raise typer.BadParameter(f"{value:g} is not a number of seconds > 0 (leave --timeout out for no limit)")
    return value


def _tune_options_need_tune(ctx: typer.Context, tune: bool) -> None:
    """--tune-budget and --tune-attention-precision without --tune were ignored in silence."""
    for name, option in (("tune_budget", "--tune-budget"), ("tune_attention_precision", "--tune-attention-precision")):
        source = ctx.get_parameter_source(name)  # typer's own click's ParameterSource: compared by name
        if not tune and source is not None and source.name == "COMMANDLINE":
            raise typer.BadParameter("applies only with --tune", param_hint=f"'{option}'")


_TUNE_BUDGET = typer.Option(
    120.0, "--tune-budget", callback=_tune_budget, metavar="SECONDS", help="with --tune: seconds per model"
)


_TUNE_PRECISION = typer.Option(
    "auto",
    "--tune-attention-precision",
    metavar="auto|float32|bfloat16",
    callback=_parse_tune_precision,
    help="with --tune: tune's --attention-precision (auto, float32 or bfloat16)",
)


def _explicit(ctx: typer.Context) -> frozenset:
    """The parameters passed on the command line, not left at typer's defaults
    (by the enum's name: typer vendors click in some versions and imports it in others)."""
    return frozenset(
        name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    )


def _check_options(
    dim,
    vocab,
    seed,
    threads,
    runs,
    warmup,
    top_k,
    order,
    ops,
    ort_level,
    max_abs_error,
    min_cosine,
    min_top1_agreement,
    min_speedup,
    custom_ops_library=None,
    **extra: Any,
):
    from .check import CheckOptions, Thresholds
    from .check.inputs import parse_dims
    from .sessions import LibraryError, options, quake_library, user_libraries

    try:
        libraries = user_libraries(custom_ops_library)
    except LibraryError as e:
        raise typer.BadParameter(str(e), param_hint="'--custom-ops-library'") from None
    try:
        # QUAKE_ONNX_LIBRARY naming no library, or a QUAKE_ISA it refuses: once, not per model of a zoo.
        quake = quake_library()
        options([quake] if quake else [])
    except LibraryError as e:
        typer.echo(f"error: {_one_line(str(e))}", err=True)
        raise typer.Exit(2) from None
    return CheckOptions(
        custom_ops_libraries=libraries,
        order=order,
        ops=ops,
        ort_level=ort_level,
        dims=parse_dims(dim or []),
        vocab=vocab,
        seed=seed,
        threads=threads,
        runs=runs,
        warmup=warmup,
        top_k=top_k,
        thresholds=Thresholds(max_abs_error, min_cosine, min_top1_agreement, min_speedup),
        **extra,
    )


@app.command("check")
def check_cmd(
    ctx: typer.Context,
    model: Path = typer.Argument(..., metavar="MODEL", help="ONNX model, or a model-zoo folder holding model.onnx"),
    optimized: Optional[Path] = typer.Option(
        None, "--optimized", metavar="OTHER.onnx", help="compare this optimized model instead of optimizing MODEL now"
    ),
    inputs: Optional[List[Path]] = typer.Option(
        None,
        "--inputs",
        metavar="DATA.npz",
        help="inputs by name, one file (default: test_data_set_* beside MODEL, else generated)",
    ),
    dim: Optional[List[str]] = _DIMS,
    vocab: Optional[int] = _VOCAB,
    seed: int = _SEED,
    order: int = _ORDER,
    ops: Optional[str] = _OPS,
    ort_level: str = _LEVEL,
    min_elements: Optional[int] = _MIN_ELEMENTS,
    threads: int = _THREADS,
    runs: int = _RUNS,
    warmup: int = _WARMUP,
    top_k: int = _TOP_K,
    max_abs_error: Optional[float] = _MAX_ABS,
    min_cosine: Optional[float] = _MIN_COS,
    min_top1_agreement: Optional[float] = _MIN_TOP1,
    min_speedup: Optional[float] = _MIN_SPEEDUP,
    image_size: int = _IMAGE_SIZE,
    tune: bool = _TUNE,
    tune_budget: float = _TUNE_BUDGET,
    tune_attention_precision: str = _TUNE_PRECISION,
    custom_ops_library: Optional[List[Path]] = _LIBRARIES,
    json_out: Optional[Path] = typer.Option(
        None, "--json", metavar="FILE", parser=_report_file, help="write the result as JSON ('-': stdout)"
    ),
) -> None:
    """Run MODEL with ONNX Runtime's ops and optimized with com.quake: output agreement, latency, thresholds."""
    from .check.commands import check_command

    _tune_options_need_tune(ctx, tune)
    inputs = _one_inputs_file(inputs)
    options = _check_options(
        dim,
        vocab,
        seed,
        threads,
        runs,
        warmup,
        top_k,
        order,
        ops,
        ort_level,
        max_abs_error,
        min_cosine,
        min_top1_agreement,
        min_speedup,
        custom_ops_library,
        optimized=optimized,
        inputs=inputs,
        min_elements=min_elements,
        image_size=image_size,
        tune=tune,
        tune_budget=tune_budget,
        tune_attention_precision=tune_attention_precision,
    )
    if tune and optimized is not None:
        raise typer.BadParameter("--tune tunes MODEL now; it cannot go with --optimized", param_hint="'--tune'")
    raise typer.Exit(check_command(model, options, json_out))


_REPORTS = {
    "json": typer.Option(
        None, "--json", metavar="FILE", parser=_report_file, help="write the report as JSON ('-': stdout)"
    ),
    "markdown": typer.Option(
        None,
        "--markdown",
        metavar="FILE",
        parser=_report_file,
        help="write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY; '-': stdout)",
    ),
    "junit": typer.Option(
        None,
        "--junit",
        metavar="FILE",
        parser=_report_file,
        help="write JUnit XML, one testcase per model ('-': stdout)",
    ),
}


@app.command("zoo")
def zoo_cmd(
    ctx: typer.Context,
    root: Path = typer.Argument(..., metavar="DIR", help="folder of models (*.onnx, model-zoo layout)"),
    json_out: Optional[Path] = _REPORTS["json"],
    markdown: Optional[Path] = _REPORTS["markdown"],
    junit: Optional[Path] = _REPORTS["junit"],
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="models checked at once, each in its own process"),
    shard: str = typer.Option(
        "1/1", "--shard", metavar="i/n", help="check the i-th of n deterministic slices (1-based)"
    ),
    timeout: Optional[float] = typer.Option(
        None, "--timeout", callback=_timeout, metavar="SECONDS", help="a model taking longer fails (default: no limit)"
    ),
    list_only: bool = typer.Option(False, "--list", help="print the models this shard would check, run nothing"),
    penalty: float = typer.Option(
        0.1, "--penalty", min=1e-6, max=1.0, help="speedup a model outside tolerance counts as in S(t) (<= 1)"
    ),
    min_score: Optional[float] = typer.Option(None, "--min-score", min=0.0, help="fail when S(t) is below this"),
    dim: Optional[List[str]] = _DIMS,
    vocab: Optional[int] = _VOCAB,
    seed: int = _SEED,
    order: int = _ORDER,
    ops: Optional[str] = _OPS,
    ort_level: str = _LEVEL,
    min_elements: Optional[int] = _MIN_ELEMENTS,
    threads: int = _THREADS,
    runs: int = _RUNS,
    warmup: int = _WARMUP,
    top_k: int = _TOP_K,
    max_abs_error: Optional[float] = _MAX_ABS,
    min_cosine: Optional[float] = _MIN_COS,
    min_top1_agreement: Optional[float] = _MIN_TOP1,
    min_speedup: Optional[float] = _MIN_SPEEDUP,
    image_size: int = _IMAGE_SIZE,
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        metavar="FILE",
        help="the zoo manifest (default: DIR/quake-zoo.toml when it exists): "
        "per-model dims, inputs, ranges, thresholds, skip",
    ),
    tune: bool = _TUNE,
    tune_budget: float = _TUNE_BUDGET,
    tune_attention_precision: str = _TUNE_PRECISION,
    custom_ops_library: Optional[List[Path]] = _LIBRARIES,
) -> None:
    """Check every model under DIR: summary table, S(t) score, JSON / Markdown / JUnit reports.

    Per-model settings come from DIR/quake-zoo.toml (or --config); options passed on the command line beat it.

    Shard reports combine with `quake-onnx zoo merge shard-*.json --json all.json` (docs/zoo.md)."""
    from .check.commands import zoo_command

    _tune_options_need_tune(ctx, tune)
    options = _check_options(
        dim,
        vocab,
        seed,
        threads,
        runs,
        warmup,
        top_k,
        order,
        ops,
        ort_level,
        max_abs_error,
        min_cosine,
        min_top1_agreement,
        min_speedup,
        custom_ops_library,
        min_elements=min_elements,
        image_size=image_size,
        tune=tune,
        tune_budget=tune_budget,
        tune_attention_precision=tune_attention_precision,
    )
    raise typer.Exit(
        zoo_command(
            root,
            options,
            jobs=jobs,
            shard=shard,
            timeout=timeout,
            json_out=json_out,
            markdown=markdown,
            junit=junit,
            list_only=list_only,
            penalty=penalty,
            min_score=min_score,
            config=config,
            explicit=_explicit(ctx),
        )
    )


@app.command("zoo-merge", hidden=True)
def zoo_merge_cmd(
    reports: List[Path] = typer.Argument(..., metavar="SHARD.json", help="the --json reports of every shard"),
    json_out: Optional[Path] = _REPORTS["json"],
    markdown: Optional[Path] = _REPORTS["markdown"],
    junit: Optional[Path] = _REPORTS["junit"],
) -> None:
    """Merge the --json reports of `quake-onnx zoo --shard i/n` into the report of one unsharded run.

    Every shard of the run is needed, once; reports of other settings or tool versions are refused.

    Example: quake-onnx zoo merge shard-*.json --json all.json --markdown all.md --junit all.xml"""
    from .check.commands import merge_command

    raise typer.Exit(merge_command(list(reports), json_out=json_out, markdown=markdown, junit=junit))


def _positive_seconds(value: float) -> float:
    if not value > 0 or value == float("inf"):
        raise typer.BadParameter(f"{value:g} is not a number of seconds > 0")
    return value


class _TuneProgress:
    """tune's estimate on stdout; a progress bar on stderr when it is a terminal."""

    def __init__(self, console, err):
        self.console, self.err = console, err
        self.bar = None

    def start(self, estimate: float, budget: float, plan: str) -> None:
        self.console.print(
            f"estimate: ~{estimate:.0f} s for {plan} (budget {budget:g} s"
            + ("; the search stops at the budget with the best measured so far)" if estimate > budget else ")"),
            soft_wrap=True,
            highlight=False,
        )
        if self.err.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=self.err, transient=True
            )
            self.bar.start()
            self.task = self.bar.add_task("tuning", total=max(1.0, min(estimate, budget)))

    def step(self, text: str, elapsed: float) -> None:
        if self.bar is not None:
            from rich.markup import escape

            self.bar.update(self.task, completed=elapsed, description=escape(text))

    def done(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@app.command("tune")
def tune_cmd(
    src: Path = typer.Argument(..., metavar="IN", help="ONNX model to tune"),
    dest: Path = typer.Argument(..., metavar="OUT", parser=_output_file, help="where to write the result"),
    inputs: Optional[List[Path]] = typer.Option(
        None,
        "--inputs",
        metavar="DATA.npz",
        help="inputs by name, one file (default: test_data_set_* beside IN, else generated)",
    ),
    dim: Optional[List[str]] = _DIMS,
    vocab: Optional[int] = _VOCAB,
    seed: int = _SEED,
    image_size: int = _IMAGE_SIZE,
    min_cosine: Optional[float] = typer.Option(
        0.9999, "--min-cosine", min=-1.0, max=1.0, help="every output's cosine with the original at least this"
    ),
    max_abs_error: Optional[float] = typer.Option(
        None, "--max-abs-error", min=0.0, metavar="T", help="every output's max abs error at most this"
    ),
    min_top1_agreement: Optional[float] = typer.Option(
        None, "--min-top1-agreement", min=0.0, max=1.0, help="class-score outputs' top-1 agreement at least this"
    ),
    threads: int = _THREADS,
    budget: float = typer.Option(
        120.0, "--budget", callback=_positive_seconds, metavar="SECONDS", help="time allowed for the whole search"
    ),
    allow_exaq: bool = typer.Option(False, "--allow-exaq", help="let Softmax groups use EXAQ (2-4 bits, calibrated)"),
    attention_precision: str = typer.Option(
        "auto",
        "--attention-precision",
        metavar="auto|float32|bfloat16",
        callback=_parse_tune_precision,
        help="precision of fused com.quake Attention: 'auto' (default: float32, and bfloat16 too where this CPU "
        "has a bf16 engine), 'float32' (never bfloat16) or 'bfloat16' (fused attention only in bfloat16; "
        "the tolerance still holds)",
    ),
    require_speedup: Optional[float] = typer.Option(
        None, "--require-speedup", min=0.0, metavar="S", help="exit 1 when the result's speedup is below S"
    ),
    custom_ops_library: Optional[List[Path]] = _LIBRARIES,
    report: Optional[Path] = typer.Option(
        None, "--report", metavar="FILE.json", parser=_report_file, help="write the report as JSON ('-': stdout)"
    ),
    markdown: Optional[Path] = typer.Option(
        None, "--markdown", metavar="FILE", parser=_report_file, help="write the report as Markdown ('-': stdout)"
    ),
) -> None:
    """Measure on this machine and these inputs what to replace, at which order, with which ORT level and fusions;
    write the fastest model within tolerance to OUT (the original when nothing is faster beyond the noise)."""
    from rich.markup import escape

    from . import writes
    from ._cli_output import make_console
    from .check.inputs import parse_dims
    from .modelio import ModelFileError, shown
    from .tuning import report as tune_report
    from .tuning import tune

    inputs = _one_inputs_file(inputs)
    stdout_taken = _is_stdout(report) or _is_stdout(markdown)
    console, err = make_console(stdout_taken, wide=True), make_console(True)
    also = [(w, p) for w, p in (("report", report), ("markdown", markdown)) if p is not None and not _is_stdout(p)]
    if report is not None and markdown is not None and writes.same_path(report, markdown):
        same = "are both '-' (stdout)" if _is_stdout(report) else f"name the same file {report}"
        typer.echo(f"error: --report and --markdown {same}", err=True)
        raise typer.Exit(2)
    try:
        model, result = tune(
            src,
            dest,
            inputs=inputs,
            dims=parse_dims(dim or []),
            vocab=vocab,
            seed=seed,
            image_size=image_size,
            min_cosine=min_cosine,
            max_abs_error=max_abs_error,
            min_top1_agreement=min_top1_agreement,
            threads=threads,
            budget=budget,
            allow_exaq=allow_exaq,
            attention_precision=attention_precision,
            custom_ops_libraries=custom_ops_library or (),
            also_written=also,
            progress=_TuneProgress(console, err),
        )
    except ModelFileError as e:  # every input, option and write failure
        typer.echo(f"error: {_one_line(str(e))}", err=True)
        raise typer.Exit(e.exit_code) from None
    _write_report(report, lambda: tune_report.to_json(result), dest)
    _write_report(markdown, lambda: tune_report.to_markdown(result), dest, "markdown")
    console.print(tune_report.groups_table(result))
    for note in result["notes"]:
        console.print(f"note: {escape(note)}", soft_wrap=True, highlight=False)
    console.print(tune_report.headline(result), soft_wrap=True, highlight=False, markup=False)
    if result["budget"]["not_tried"]:
        console.print(
            "not tried within the budget: " + "; ".join(result["budget"]["not_tried"]),
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
    for w in result["warnings"]:
        err.print(f"warning: {escape(w)}", soft_wrap=True, highlight=False)
    console.print(
        f"wrote {escape(shown(dest))}" + (" (the original)" if result["result"] == "original" else ""),
        soft_wrap=True,
        highlight=False,
    )
    for path in (report, markdown):
        if path is not None and not _is_stdout(path):
            console.print(f"report {escape(str(path))}", soft_wrap=True, highlight=False)
    if require_speedup is not None:
        final = result["final"]["speedup"]
        speedup = final["median"] if result["result"] == "tuned" and final else 1.0
        if speedup < require_speedup:
            typer.echo(f"FAIL: speedup {speedup:.3f}x < --require-speedup {require_speedup:g}x", err=True)
            raise typer.Exit(1)


@app.command("calibrate")
def calibrate_cmd(
    src: Path = typer.Argument(
        ..., metavar="MODEL", help="a model with exaq Softmax nodes (optimize --softmax-method exaq)"
    ),
    dest: Path = typer.Argument(..., metavar="OUT", parser=_output_file, help="where to write the calibrated model"),
    inputs: Optional[List[Path]] = typer.Option(
        None,
        "--inputs",
        metavar="DATA.npz",
        help="sample inputs by name, one run per file; repeat "
        "(default: test_data_set_* beside MODEL, else --samples generated)",
    ),
    samples: int = typer.Option(4, "--samples", min=1, help="generated runs when no --inputs and no test data sets"),
    dim: Optional[List[str]] = _DIMS,
    vocab: Optional[int] = _VOCAB,
    seed: int = _SEED,
    recalibrate: bool = typer.Option(False, "--recalibrate", help="also recompute nodes whose clip is already fixed"),
    custom_ops_library: Optional[List[Path]] = _LIBRARIES,
) -> None:
    """Fix the clip of every exaq Softmax from sample inputs: C = slope * sigma + offset, sigma measured per node."""
    from rich.markup import escape

    from .calibrate import CalibrateError, calibrate, check_destination, exaq_nodes
    from .check.inputs import load_inputs, parse_dims
    from .modelio import ModelFileError, load_graph, shown
    from .sessions import user_libraries

    console, err = _consoles()
    try:
        libraries = user_libraries(custom_ops_library)
        graph = load_graph(src)
        if not exaq_nodes(graph):
            raise CalibrateError(
                'no com.quake Softmax node with method "exaq" in the main graph '
                "(make them with `quake-onnx optimize --softmax-method exaq`)"
            )
        check_destination(graph, src, dest, inputs or ())
        feeds = []
        if inputs:
            for path in inputs:
                feeds += [s.feeds for s in load_inputs(graph, src, npz=path).sets]
        else:
            for i in range(samples):
                loaded = load_inputs(graph, src, dims=parse_dims(dim or []), vocab=vocab, seed=seed + i)
                feeds += [s.feeds for s in loaded.sets]
                for w in loaded.warnings:
                    err.print(f"warning: {w}", soft_wrap=True, highlight=False)
                if loaded.source != "generated":
                    break  # the data sets beside the model, once
                if i == 0:
                    err.print(
                        "warning: calibrating on generated inputs; real samples (--inputs) give the clip the "
                        "model needs",
                        soft_wrap=True,
                        highlight=False,
                    )
        _, results = calibrate(
            src, feeds, dest, recalibrate=recalibrate, custom_ops_libraries=libraries, protect=inputs or ()
        )
    except ModelFileError as e:
        typer.echo(f"error: {_one_line(str(e))}", err=True)
        raise typer.Exit(e.exit_code) from None
    console.print(f"{src}: {len(feeds)} runs", soft_wrap=True, highlight=False)
    for r in results:
        what = (
            f"sigma {r.sigma:.4g} over {r.rows} rows -> clip {r.clip:.4g}"
            if r.written
            else f"kept clip {r.old_clip:.4g}" + (" (no live rows)" if r.rows == 0 and r.old_clip == 0 else "")
        )
        console.print(f"  {r.node}: {r.bits} bits, {what}", soft_wrap=True, highlight=False)
    console.print(f"wrote {escape(shown(dest))}", soft_wrap=True, highlight=False)


def run() -> None:
    """The `quake-onnx` command: the process's own, so SIGTERM is taken as
    Terminated here (an in-process caller of `app` keeps its handlers)."""
    main = threading.current_thread() is threading.main_thread()
    if main:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    finally:
        if main:  # the command is over, its status decided: a signal now would only kill the exit silently
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    run()
