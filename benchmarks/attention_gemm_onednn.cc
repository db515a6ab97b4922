// The alternative measured for BENCHMARKS.md, "Zen 4: bf16 attention GEMM
// choice": oneDNN's matmul primitive (PyPI onednn / onednn-devel) at the tile
// shapes of benchmarks/attention_gemm_bf16.cc, bf16 x bf16 -> f32 and f32 x
// f32 -> f32, one call per tile product as the attention block would make it
// (primitive created once, executed per tile). Not part of the CMake build:
// it needs the onednn wheels' headers and runtime (see BENCHMARKS.md for the
// command). GFLOP/s = 2 m n k / time, the best of 7 runs of ~0.1 s each.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"

namespace {

template <typename F>
double seconds_per_call(F&& f) {
  using Clock = std::chrono::steady_clock;
  size_t reps = 1;
  for (;;) {
    const auto t0 = Clock::now();
    for (size_t i = 0; i < reps; ++i) f();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s > 0.02) {
      reps = std::max<size_t>(1, static_cast<size_t>(reps * 0.1 / s));
      break;
    }
    reps *= 4;
  }
  std::vector<double> runs;
  for (int k = 0; k < 7; ++k) {
    const auto t0 = Clock::now();
    for (size_t i = 0; i < reps; ++i) f();
    runs.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / reps);
  }
  return *std::min_element(runs.begin(), runs.end());
}

double matmul_gflops(dnnl::engine& eng, dnnl::stream& s, dnnl::memory::data_type in, dnnl::memory::dim m,
                     dnnl::memory::dim n, dnnl::memory::dim k) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  dnnl::memory::desc a_md({m, k}, in, tag::ab), b_md({k, n}, in, tag::ab), c_md({m, n}, dt::f32, tag::ab);
  dnnl::matmul::primitive_desc pd(eng, a_md, b_md, c_md);
  dnnl::matmul mm(pd);
  dnnl::memory a(a_md, eng), b(b_md, eng), c(c_md, eng);
  const double t = seconds_per_call([&] {
    mm.execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    s.wait();
  });
  std::printf("    %s impl: %s\n", in == dt::bf16 ? "bf16" : "f32 ", pd.impl_info_str());
  return 2.0 * m * n * k / t * 1e-9;
}

}  // namespace

int main() {
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  const long shapes[][3] = {{64, 64, 64}, {128, 208, 64}, {64, 208, 64}, {128, 96, 128}, {16, 208, 64}};
  std::printf(
      "| bq x bk x D | S: oneDNN f32 | S: oneDNN bf16 | PV: oneDNN f32 | PV: oneDNN bf16 |\n|---|---|---|---|---|\n");
  for (const auto& sh : shapes) {
    const long bq = sh[0], bk = sh[1], d = sh[2];
    using dt = dnnl::memory::data_type;
    const double s32 = matmul_gflops(eng, s, dt::f32, bq, bk, d), s16 = matmul_gflops(eng, s, dt::bf16, bq, bk, d);
    const double p32 = matmul_gflops(eng, s, dt::f32, bq, d, bk), p16 = matmul_gflops(eng, s, dt::bf16, bq, d, bk);
    std::printf("| %ld x %ld x %ld | %.1f | %.1f | %.1f | %.1f |\n", bq, bk, d, s32, s16, p32, p16);
  }
  return 0;
}
