"""The measurement behind the attention kernel's GEMM library (BENCHMARKS.md,
"Attention: GEMM library choice"): single-threaded GFLOP/s of the tile
products Q.K^T and P.V at head dims 64 and 128, with Eigen (compiled per ISA,
as the library's attention files are) and OpenBLAS (PyPI scipy-openblas32),
against ONNX Runtime's MatMul (512x512x512, 1 thread) in the same process,
in interleaved rounds (best of the rounds kept).

    pip install scipy-openblas32
    python tools/bench_attention_gemm.py --eigen build/ctest/_eigen_headers/root/usr/include/eigen3
"""

import argparse
import ctypes
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
}


def build(eigen, isa, out_dir):
    lib = Path(out_dir) / f"bench_gemm_{isa}.so"
    subprocess.run(
        [
            "g++",
            "-O3",
            "-std=c++17",
            "-DNDEBUG",
            "-fPIC",
            "-shared",
            *ISA_FLAGS[isa],
            f"-I{eigen}",
            str(HERE / "bench_attention_gemm.cc"),
            "-o",
            str(lib),
            "-ldl",
        ],
        check=True,
    )
    dll = ctypes.CDLL(str(lib))
    dll.eigen_gflops.restype = ctypes.c_double
    dll.eigen_gflops.argtypes = [ctypes.c_int] * 5 + [ctypes.c_double]
    dll.blas_gflops.restype = ctypes.c_double
    dll.blas_gflops.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_int] * 5 + [ctypes.c_double]
    return dll


def ort_matmul_gflops(n=512, seconds=1.0):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])],
        "mm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "AB"],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    binding = sess.io_binding()
    binding.bind_cpu_input("A", a)
    binding.bind_cpu_input("B", a)
    binding.bind_output("C")
    for _ in range(3):
        sess.run_with_iobinding(binding)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / np.median(times) * 1e-9


def shapes(bq_list, bk_list, dims):
    """(label, m, n, k, b_transposed, accumulate) of every tile product."""
    out = []
    for d in dims:
        for bq in bq_list:
            for bk in bk_list:
                out.append((f"QK^T D{d} {bq}x{bk}", bq, bk, d, 1, 0))
                out.append((f"PV   D{d} {bq}x{bk}", bq, d, bk, 0, 1))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eigen", required=True, help="folder holding Eigen/Core")
    p.add_argument("--bq", default="32,64,128")
    p.add_argument("--bk", default="64,128,256,512")
    p.add_argument("--dims", default="64,128")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=0.15)
    args = p.parse_args()
    try:
        import scipy_openblas32

        blas = str(next(Path(scipy_openblas32.get_lib_dir()).glob("libscipy_openblas*.so"))).encode()
        prefix = "scipy_"  # scipy-openblas32 prefixes every symbol
    except ImportError:
        blas, prefix = None, ""
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        libs = {isa: build(args.eigen, isa, tmp) for isa in ISA_FLAGS}
        cases = shapes(ints(args.bq), ints(args.bk), ints(args.dims))
        best = {}
        ort_rate = 0.0
        for _ in range(args.rounds):
            ort_rate = max(ort_rate, ort_matmul_gflops())
            for label, m, n, k, bt, acc in cases:
                for isa, dll in libs.items():
                    key = (label, f"eigen {isa}")
                    best[key] = max(best.get(key, 0), dll.eigen_gflops(m, n, k, bt, acc, args.seconds))
                if blas:
                    key = (label, "openblas")
                    rate = libs["avx512"].blas_gflops(
                        blas,
                        f"{prefix}cblas_sgemm".encode(),
                        f"{prefix}openblas_set_num_threads".encode(),
                        m,
                        n,
                        k,
                        bt,
                        acc,
                        args.seconds,
                    )
                    best[key] = max(best.get(key, 0), rate)
        libs_cols = [f"eigen {isa}" for isa in ISA_FLAGS] + (["openblas"] if blas else [])
        print(f"ORT MatMul 512x512x512, 1 thread: {ort_rate:.1f} GFLOP/s")
        print("| product (M x N x K) | " + " | ".join(libs_cols) + " |")
        print("|---|" + "---|" * len(libs_cols))
        for label, m, n, k, _bt, _acc in cases:
            cells = [f"{best[(label, c)]:.1f} ({best[(label, c)] / ort_rate:.0%})" for c in libs_cols]
            print(f"| {label} ({m}x{n}x{k}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
