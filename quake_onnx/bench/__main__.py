"""`python -m quake_onnx.bench ops|exaq|attention ...`: the benchmark command line.

As with `quake-onnx`, a bad option is one `error: ...` line and exit 2,
found before anything is timed; a --markdown file is written whole (through
a temporary) or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli import _output_file, one_line_app
from ..modelio import ModelFileError
from ..writes import check_output_path, write_report

app = one_line_app("quake-onnx benchmarks (not tests).")


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{name} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{name} values must be positive integers, got {text!r}")
    return values


def _shapes(specs: list[str]) -> list[tuple[int, ...]]:
    shapes = []
    for spec in specs:
        try:
            shapes.append(_ints(spec.lower().replace("x", ","), "--shape"))
        except typer.BadParameter:
            raise typer.BadParameter(f"--shape takes positive sizes like 12x128x128, got {spec!r}") from None
    return shapes


def _markdown_file(text: str) -> Path:
    """--markdown FILE: a file path that can be written (writes.check_output_path:
    not a folder or device, its folder there and writable, its name not too
    long), checked before minutes of timing rather than when the table is written."""
    if text == "-":
        raise typer.BadParameter("the table goes to standard output anyway; give a file path")
    path = _output_file(text)
    try:
        check_output_path(path, "file")
    except ModelFileError as e:
        raise typer.BadParameter(str(e)) from None
    return path


def _write_markdown(text: str, path: Optional[Path]) -> None:
    if path is None:
        return
    try:
        write_report(text, path)
    except (OSError, ModelFileError) as e:  # the path changed during the run
        typer.echo(f"error: cannot write {path}: {getattr(e, 'strerror', None) or e}", err=True)
        raise typer.Exit(1) from None


MARKDOWN_HELP = "also write the table as Markdown to this file"


@app.callback()
def main() -> None:
    """quake-onnx benchmarks."""


def _check_kernel_table() -> None:
    """Every benchmark names the kernel table it timed: a refused QUAKE_ISA is one
    line, exit 2, before any timing. Called by each command, not by the group, so
    that `--help` still answers under a bad QUAKE_ISA."""
    import quake_onnx

    try:
        quake_onnx.selected_isa()
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def ops(
    threads: str = typer.Option("1,2", help="intra_op_num_threads values, comma-separated"),
    orders: str = typer.Option("1,2,3", help="com.quake orders to time"),
    shape: Optional[list[str]] = typer.Option(
        None, help="shapes like 12x128x128 (repeatable); default: the standard four"
    ),
    op: Optional[list[str]] = typer.Option(None, help="only baselines whose name starts with this (repeatable)"),
    min_time: float = typer.Option(0.6, help="seconds of timed runs per configuration, split over the rounds"),
    rounds: int = typer.Option(3, min=1, help="interleaved rounds per configuration; the fastest median is kept"),
    markdown: Optional[Path] = typer.Option(None, metavar="FILE", parser=_markdown_file, help=MARKDOWN_HELP),
    denormal: bool = typer.Option(
        True, "--denormal/--no-denormal", help="also time denormal inputs (128x3072, 1 thread, order 2), reported apart"
    ),
    dtype: str = typer.Option("float32", help="tensor type of both sides: float32 or float16 (no denormal rows)"),
) -> None:
    """Time every com.quake op against ONNX Runtime's own op, same process and thread count,
    with the rate of a plain copy of each tensor (the memory roofline) beside them."""
    import numpy as np

    from . import ops as bench_ops

    _check_kernel_table()
    if dtype not in ("float32", "float16"):
        raise typer.BadParameter(f"--dtype takes float32 or float16, got {dtype!r}")

    order_list = _ints(orders, "--orders")
    if any(o not in (1, 2, 3) for o in order_list):
        raise typer.BadParameter(f"--orders takes values from 1, 2, 3, got {orders!r}")
    baselines = [b for b in bench_ops.BASELINES if not op or any(b.name.lower().startswith(p.lower()) for p in op)]
    if not baselines:
        raise typer.BadParameter(f"--op {op} matches none of: {', '.join(b.name for b in bench_ops.BASELINES)}")
    shapes = _shapes(shape) if shape else bench_ops.SHAPES
    thread_list = _ints(threads, "--threads")
    header = bench_ops.markdown([], order_list)
    machine = bench_ops.machine_line()
    if dtype == "float16":
        from .._library import float16_engine

        machine += f"; float16 Exp, Sigmoid, Silu, Gelu on: {float16_engine()}"
    typer.echo(machine)
    typer.echo(header)
    rows = bench_ops.run(
        shapes=shapes,
        threads=thread_list,
        orders=order_list,
        baselines=baselines,
        min_time=min_time,
        rounds=rounds,
        progress=typer.echo,
        dtype=np.dtype(dtype),
    )
    text = machine + f"; {dtype} tensors\n\n" + bench_ops.markdown(rows, order_list) + "\n"
    if denormal and dtype == "float32":
        typer.echo("\ndenormal inputs (|x| < 1.2e-38), reported apart:")
        typer.echo(bench_ops.markdown([], (2,)))
        dn = bench_ops.denormal_rows(baselines=baselines, min_time=min_time, rounds=rounds, progress=typer.echo)
        text += "\nDenormal inputs (|x| < 1.2e-38):\n\n" + bench_ops.markdown(dn, (2,)) + "\n"
    _write_markdown(text, markdown)


@app.command()
def exaq(
    threads: str = typer.Option("1,2", help="intra_op_num_threads values, comma-separated"),
    shape: Optional[list[str]] = typer.Option(
        None, help="shapes like 12x128x128 (repeatable); default: the three of the EXAQ section"
    ),
    min_time: float = typer.Option(0.6, help="seconds of timed runs per configuration, split over the rounds"),
    rounds: int = typer.Option(3, min=1, help="interleaved rounds per configuration; the fastest median is kept"),
    markdown: Optional[Path] = typer.Option(None, metavar="FILE", parser=_markdown_file, help=MARKDOWN_HELP),
) -> None:
    """Time the exaq Softmax against the quake method and ONNX Runtime's Softmax."""
    _check_kernel_table()
    from . import exaq as bench_exaq
    from . import ops as bench_ops

    shapes = _shapes(shape) if shape else bench_exaq.SHAPES
    thread_list = _ints(threads, "--threads")
    typer.echo(bench_ops.machine_line())
    typer.echo(bench_exaq.HEADER)
    rows = bench_exaq.run(
        shapes=shapes,
        threads=thread_list,
        min_time=min_time,
        rounds=rounds,
        progress=typer.echo,
    )
    _write_markdown(bench_ops.machine_line() + "\n\n" + bench_exaq.markdown(rows) + "\n", markdown)


@app.command()
def attention(
    threads: str = typer.Option("1,2", help="intra_op_num_threads values, comma-separated"),
    shape: Optional[list[str]] = typer.Option(
        None, help="only shapes whose name starts with this (repeatable), e.g. 'H12 S2048'; default: all seven"
    ),
    rounds: int = typer.Option(5, min=1, help="paired, interleaved rounds per shape and thread count"),
    min_time: float = typer.Option(1.0, help="seconds of timed runs per variant, split over the rounds"),
    order: int = typer.Option(2, min=1, max=3, help="com.quake order"),
    bf16: bool = typer.Option(
        False, "--bf16", help='also time the quake node with precision="bfloat16" (paired with the float32 one)'
    ),
    rss: bool = typer.Option(True, help="also measure the peak RSS of one H12 S4096 block per variant"),
    markdown: Optional[Path] = typer.Option(
        None, metavar="FILE", parser=_markdown_file, help="also write the tables as Markdown to this file"
    ),
) -> None:
    """Time com.quake Attention against the unfused ORT block and com.microsoft.MultiHeadAttention."""
    _check_kernel_table()
    from . import attention as bench_attention
    from . import ops as bench_ops

    shapes = [s for s in bench_attention.SHAPES if not shape or any(s.name.startswith(p) for p in shape)]
    if not shapes:
        names = ", ".join(s.name for s in bench_attention.SHAPES)
        raise typer.BadParameter(f"--shape {shape} matches none of: {names}")
    thread_list = _ints(threads, "--threads")
    typer.echo(bench_ops.machine_line())
    if bf16:
        from .._library import attention_bf16_engine

        typer.echo(f'precision="bfloat16" runs on: {attention_bf16_engine()}')
    typer.echo(bench_attention.header(bf16))
    rows = bench_attention.run(
        shapes=shapes,
        threads=thread_list,
        rounds=rounds,
        min_time=min_time,
        order=order,
        progress=typer.echo,
        bf16=bf16,
    )
    text = bench_ops.machine_line() + "\n\n" + bench_attention.markdown(rows) + "\n"
    if rss:
        big = bench_attention.SHAPES[4]
        table = bench_attention.rss_markdown(big, bench_attention.peak_rss(big))
        typer.echo("\n" + table)
        text += "\n" + table + "\n"
    _write_markdown(text, markdown)


if __name__ == "__main__":
    app()
