"""The `quake-onnx` command line."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

import quake_onnx

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fast approximate exponentials for ONNX Runtime.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"quake-onnx {quake_onnx.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version."),
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
    models: Path = typer.Option(Path(__file__).resolve().parent.parent / "sample_models", help="folder of the sample models"),
) -> None:
    """Run the bundled encoder block with ORT's own ops and with com.quake kernels; compare outputs and latency."""
    from .demo import run_demo

    try:
        code = run_demo(models, threads=threads, runs=runs)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
