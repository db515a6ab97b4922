"""`python -m quake_onnx.bench ops|exaq|attention ...`: the benchmark command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="quake-onnx benchmarks (not tests).")


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{name} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{name} values must be positive integers, got {text!r}")
    return values


def _shapes(specs: list[str]) -> list[tuple[int, ...]]:
    return [tuple(_ints(s.replace("x", ","), "--shape")) for s in specs]


@app.callback()
def main() -> None:
    """quake-onnx benchmarks."""
    import quake_onnx

    try:  # every benchmark names the kernel table it timed: a refused QUAKE_ISA is one line, exit 2
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
    markdown: Optional[Path] = typer.Option(None, help="also write the table as Markdown to this file"),
    denormal: bool = typer.Option(
        True, "--denormal/--no-denormal", help="also time denormal inputs (128x3072, 1 thread, order 2), reported apart"
    ),
    dtype: str = typer.Option("float32", help="tensor type of both sides: float32 or float16 (no denormal rows)"),
) -> None:
    """Time every com.quake op against ONNX Runtime's own op, same process and thread count,
    with the rate of a plain copy of each tensor (the memory roofline) beside them."""
    import numpy as np

    from . import ops as bench_ops

    if dtype not in ("float32", "float16"):
        raise typer.BadParameter(f"--dtype takes float32 or float16, got {dtype!r}")

    order_list = _ints(orders, "--orders")
    if any(o not in (1, 2, 3) for o in order_list):
        raise typer.BadParameter(f"--orders takes values from 1, 2, 3, got {orders!r}")
    baselines = [b for b in bench_ops.BASELINES if not op or any(b.name.lower().startswith(p.lower()) for p in op)]
    if not baselines:
        raise typer.BadParameter(f"--op {op} matches none of: {', '.join(b.name for b in bench_ops.BASELINES)}")
    header = bench_ops.markdown([], order_list)
    typer.echo(bench_ops.machine_line())
    typer.echo(header)
    rows = bench_ops.run(
        shapes=_shapes(shape) if shape else bench_ops.SHAPES,
        threads=_ints(threads, "--threads"),
        orders=order_list,
        baselines=baselines,
        min_time=min_time,
        rounds=rounds,
        progress=typer.echo,
        dtype=np.dtype(dtype),
    )
    text = bench_ops.machine_line() + f"; {dtype} tensors\n\n" + bench_ops.markdown(rows, order_list) + "\n"
    if denormal and dtype == "float32":
        typer.echo("\ndenormal inputs (|x| < 1.2e-38), reported apart:")
        typer.echo(bench_ops.markdown([], (2,)))
        dn = bench_ops.denormal_rows(baselines=baselines, min_time=min_time, rounds=rounds, progress=typer.echo)
        text += "\nDenormal inputs (|x| < 1.2e-38):\n\n" + bench_ops.markdown(dn, (2,)) + "\n"
    if markdown:
        markdown.write_text(text)


@app.command()
def exaq(
    threads: str = typer.Option("1,2", help="intra_op_num_threads values, comma-separated"),
    shape: Optional[list[str]] = typer.Option(
        None, help="shapes like 12x128x128 (repeatable); default: the three of the EXAQ section"
    ),
    min_time: float = typer.Option(0.6, help="seconds of timed runs per configuration, split over the rounds"),
    rounds: int = typer.Option(3, min=1, help="interleaved rounds per configuration; the fastest median is kept"),
    markdown: Optional[Path] = typer.Option(None, help="also write the table as Markdown to this file"),
) -> None:
    """Time the exaq Softmax against the quake method and ONNX Runtime's Softmax."""
    from . import exaq as bench_exaq
    from . import ops as bench_ops

    typer.echo(bench_ops.machine_line())
    typer.echo(bench_exaq.HEADER)
    rows = bench_exaq.run(
        shapes=_shapes(shape) if shape else bench_exaq.SHAPES,
        threads=_ints(threads, "--threads"),
        min_time=min_time,
        rounds=rounds,
        progress=typer.echo,
    )
    if markdown:
        markdown.write_text(bench_ops.machine_line() + "\n\n" + bench_exaq.markdown(rows) + "\n")


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
    markdown: Optional[Path] = typer.Option(None, help="also write the tables as Markdown to this file"),
) -> None:
    """Time com.quake Attention against the unfused ORT block and com.microsoft.MultiHeadAttention."""
    from . import attention as bench_attention
    from . import ops as bench_ops

    shapes = [s for s in bench_attention.SHAPES if not shape or any(s.name.startswith(p) for p in shape)]
    if not shapes:
        names = ", ".join(s.name for s in bench_attention.SHAPES)
        raise typer.BadParameter(f"--shape {shape} matches none of: {names}")
    typer.echo(bench_ops.machine_line())
    if bf16:
        from .._library import attention_bf16_engine

        typer.echo(f'precision="bfloat16" runs on: {attention_bf16_engine()}')
    typer.echo(bench_attention.header(bf16))
    rows = bench_attention.run(
        shapes=shapes,
        threads=_ints(threads, "--threads"),
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
    if markdown:
        markdown.write_text(text)


if __name__ == "__main__":
    app()
