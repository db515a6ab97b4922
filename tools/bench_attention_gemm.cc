// Single-threaded GFLOP/s of the attention kernel's tile products, for the
// choice of GEMM library (BENCHMARKS.md, "Attention: GEMM library choice"):
// Eigen (compiled into this file with the flags it is built with, as the
// per-ISA attention files are) and OpenBLAS (a cblas_sgemm loaded with dlopen,
// e.g. the one of PyPI's scipy-openblas32). Built and driven by
// tools/bench_attention_gemm.py, which times ONNX Runtime's MatMul in the same
// process; not part of the library.
#define EIGEN_DONT_PARALLELIZE
#include <dlfcn.h>

#include <Eigen/Core>
#include <chrono>
#include <cstdio>
#include <vector>

namespace {

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMajor, Eigen::Unaligned, Eigen::OuterStride<>>;
using Map = Eigen::Map<RowMajor, Eigen::Unaligned, Eigen::OuterStride<>>;

// C[m x n] (+)= A[m x k] * B, B given as [k x n] or, transposed, as [n x k]; row-major.
template <typename Product>
double time_gflops(int m, int n, int k, double seconds, Product product) {
  product();
  long calls = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    for (int i = 0; i < 16; ++i) product();
    calls += 16;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < seconds);
  return 2.0 * m * n * k * calls / elapsed * 1e-9;
}

struct Buffers {
  std::vector<float> a, b, c;
  Buffers(int m, int n, int k)
      : a(static_cast<size_t>(m) * k, 0.01f), b(static_cast<size_t>(k) * n, 0.02f), c(static_cast<size_t>(m) * n) {}
};

enum { CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112 };
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);

}  // namespace

extern "C" {

double eigen_gflops(int m, int n, int k, int b_transposed, int accumulate, double seconds) {
  Buffers buf(m, n, k);
  ConstMap a(buf.a.data(), m, k, Eigen::OuterStride<>(k));
  Map c(buf.c.data(), m, n, Eigen::OuterStride<>(n));
  if (b_transposed) {
    ConstMap b(buf.b.data(), n, k, Eigen::OuterStride<>(k));
    if (accumulate) return time_gflops(m, n, k, seconds, [&] { c.noalias() += a * b.transpose(); });
    return time_gflops(m, n, k, seconds, [&] { c.noalias() = a * b.transpose(); });
  }
  ConstMap b(buf.b.data(), k, n, Eigen::OuterStride<>(n));
  if (accumulate) return time_gflops(m, n, k, seconds, [&] { c.noalias() += a * b; });
  return time_gflops(m, n, k, seconds, [&] { c.noalias() = a * b; });
}

// symbol: e.g. "scipy_cblas_sgemm"; set_threads: e.g. "scipy_openblas_set_num_threads" (called with 1).
double blas_gflops(const char* library, const char* symbol, const char* set_threads, int m, int n, int k,
                   int b_transposed, int accumulate, double seconds) {
  void* handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    std::fprintf(stderr, "%s\n", dlerror());
    return -1;
  }
  auto sgemm = reinterpret_cast<Sgemm>(dlsym(handle, symbol));
  auto threads = reinterpret_cast<void (*)(int)>(dlsym(handle, set_threads));
  if (!sgemm) return -2;
  if (threads) threads(1);
  Buffers buf(m, n, k);
  const float beta = accumulate ? 1.0f : 0.0f;
  return time_gflops(m, n, k, seconds, [&] {
    sgemm(CblasRowMajor, CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans, m, n, k, 1.0f, buf.a.data(), k,
          buf.b.data(), b_transposed ? k : n, beta, buf.c.data(), n);
  });
}

}  // extern "C"
