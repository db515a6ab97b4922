"""Model, not measure: cycles per float16 element of the float16 lanes
(kernels_avx512fp16.cc) against the float32 lanes converted in registers
(kernels_avx512.cc) on a CPU model of llvm-mca (LLVM's static throughput
simulator; Debian package llvm-19), for the BENCHMARKS.md note on
QUAKE_F16=auto. Usage:

    python tools/mca_half_lanes.py BUILD_DIR [--cpu sapphirerapids]

BUILD_DIR is a CMake build of this repository (the object files of its
quake_kernels target). For each op and order the main loop of each kernel
(the largest loop without a branch inside) is cut from `objdump -d` and
simulated for 300 iterations; elements per iteration are counted from its
stores (a zmm store 32 halves, a ymm store or VCVTPS2PH 16). A model: LLVM
19's Sapphire Rapids model runs 512-bit FMAs on port 0 only, for both paths,
so its absolute cycles are not the CPU's; the ratio is a guess that a
measurement on the CPU replaces (QUAKE_F16=auto measures it at run time).
Exits 2 with one line when llvm-mca-19 or the object files are missing."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OBJECTS = "CMakeFiles/quake_kernels.dir/custom_ops/kernels"
FLOAT32_LANES = r"{op}_quake<quake::\(anonymous namespace\)::Lanes, {order}, unsigned short>"
FLOAT16_LANES = r"{op}_fp16<{order}>"
ITERATIONS = 300


def main_loop(objdump: str, function: str) -> list[str]:
    """The instructions of the largest branch-free loop of the first function
    whose name matches `function`, without its closing jump."""
    for block in re.split(r"\n(?=[0-9a-f]+ <)", objdump):
        if not re.search(function, block.split("\n", 1)[0]):
            continue
        code = []
        for line in block.split("\n")[1:]:
            m = re.match(r"\s*([0-9a-f]+):\s+(\S.*)$", line)
            if m:
                code.append((int(m.group(1), 16), re.sub(r"<.*|#.*", "", m.group(2)).strip()))
        loops = []
        for address, text in code:
            jump = re.match(r"j\w+\s+([0-9a-f]+)$", text)
            if jump and int(jump.group(1), 16) < address:
                body = [t for a, t in code if int(jump.group(1), 16) <= a < address]
                if not any(t.startswith("j") for t in body):
                    loops.append(body)
        if loops:
            return max(loops, key=len)
    raise SystemExit(f"error: no loop found in a function matching {function}")


def elements(body: list[str]) -> int:
    """Halves stored per iteration: a zmm of halves holds 32; a ymm of halves,
    or VCVTPS2PH from a zmm of floats, 16."""
    count = 0
    for text in body:
        store = re.match(r"(v\w+) .*%([xyz]mm)\d+,-?(0x[0-9a-f]+)?\(%", text)
        if store and store.group(1).startswith(("vmov", "vcvtps2ph")):
            count += 32 if store.group(2) == "zmm" and store.group(1) != "vcvtps2ph" else 16
    return count


def cycles_per_element(body: list[str], cpu: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".s") as f:
        f.write("\n".join(re.sub(r"\s+", " ", t) for t in body) + "\n")
        f.flush()
        out = subprocess.run(
            ["llvm-mca-19", f"-mcpu={cpu}", f"-iterations={ITERATIONS}", f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    cycles = int(re.search(r"Total Cycles:\s+(\d+)", out).group(1)) / ITERATIONS
    return cycles / elements(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("--cpu", default="sapphirerapids")
    args = parser.parse_args()
    if shutil.which("llvm-mca-19") is None:
        print("error: llvm-mca-19 not found (Debian: apt-get install llvm-19)", file=sys.stderr)
        return 2
    objects = {name: args.build_dir / OBJECTS / f"{name}.cc.o" for name in ("kernels_avx512", "kernels_avx512fp16")}
    for path in objects.values():
        if not path.is_file():
            print(f"error: {path} not found: build BUILD_DIR first", file=sys.stderr)
            return 2
    dis = {
        name: subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", "-C", str(path)], capture_output=True, text=True, check=True
        ).stdout
        for name, path in objects.items()
    }
    print(f"llvm-mca-19 -mcpu={args.cpu}, cycles per float16 element of the main loop (a model, not a measurement)")
    print("| op | order | float32 lanes | float16 lanes | float32 / float16 |")
    print("|---|---|---|---|---|")
    for op in ("exp", "sigmoid", "silu", "gelu"):
        for order in (1, 2):
            f32 = cycles_per_element(
                main_loop(dis["kernels_avx512"], FLOAT32_LANES.format(op=op, order=order)), args.cpu
            )
            f16 = cycles_per_element(
                main_loop(dis["kernels_avx512fp16"], FLOAT16_LANES.format(op=op, order=order)), args.cpu
            )
            print(f"| {op.capitalize()} | {order} | {f32:.3f} | {f16:.3f} | {f32 / f16:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
