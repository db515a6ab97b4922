// The tile products of com.quake Attention at its tile shapes, one thread:
// Eigen's float32 GEMM (what the float32 block runs, built with the AVX-512
// flags as attention_avx512.cc) against the own AVX512-BF16 micro-kernel
// (custom_ops/kernels/attention_bf16_avx512.h) with and without its operand
// conversion, for both products of a key tile:
//   S = Q K^T   [bq x bk] over D     (bf16: K packed per tile, Q once per task)
//   O += P V    [bq x Dv] over bk    (bf16: P converted and V packed per tile)
// GFLOP/s = 2 m n k / time, the best of 7 interleaved rounds of ~0.05 s each. Built by the
// CMake target bench_attention_gemm (QUAKE_BUILD_TESTS=ON, x86-64); prints
// nothing useful on a CPU without AVX512-BF16. Results: BENCHMARKS.md,
// "Zen 4: bf16 attention GEMM choice".
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#define EIGEN_DONT_PARALLELIZE
#define EIGEN_MPL2_ONLY
#define EIGEN_STACK_ALLOCATION_LIMIT (512 * 1024)
#include <Eigen/Core>

#include "attention_bf16_avx512.h"

namespace {

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Seconds per call of each function: calls repeated for ~0.05 s per round,
// the rounds interleaved across the functions (so a disturbance of the shared
// machine hits all of them alike), the best of kRounds kept.
constexpr int kRounds = 7;

template <typename F>
size_t calibrate(F& f) {
  using Clock = std::chrono::steady_clock;
  for (size_t reps = 1;; reps *= 4) {
    const auto t0 = Clock::now();
    for (size_t i = 0; i < reps; ++i) f();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s > 0.01) return std::max<size_t>(1, static_cast<size_t>(reps * 0.05 / s));
  }
}

std::vector<double> best_seconds(std::vector<std::function<void()>>& fs) {
  using Clock = std::chrono::steady_clock;
  std::vector<size_t> reps;
  for (auto& f : fs) reps.push_back(calibrate(f));
  std::vector<double> best(fs.size(), 1e30);
  for (int round = 0; round < kRounds; ++round) {
    for (size_t i = 0; i < fs.size(); ++i) {
      const auto t0 = Clock::now();
      for (size_t r = 0; r < reps[i]; ++r) fs[i]();
      best[i] = std::min(best[i], std::chrono::duration<double>(Clock::now() - t0).count() / reps[i]);
    }
  }
  return best;
}

bool has_avx512_bf16() { return __builtin_cpu_supports("avx512bf16"); }

volatile float g_sink;

void shape(size_t bq, size_t bk, size_t d) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto filled = [&](size_t n) {
    std::vector<float> x(n);
    for (float& f : x) f = nd(rng);
    return x;
  };
  const size_t dv = d;
  std::vector<float> q = filled(bq * d), k = filled(bk * d), v = filled(bk * dv), p = filled(bq * bk);
  std::vector<float> s(bq * bk), o(bq * dv, 0.0f);
  Eigen::Map<const RowMajor> Q(q.data(), bq, d), K(k.data(), bk, d), V(v.data(), bk, dv), P(p.data(), bq, bk);
  Eigen::Map<RowMajor> S(s.data(), bq, bk), O(o.data(), bq, dv);
  const double flops = 2.0 * bq * bk * d;  // each product

  const size_t dp = (d + 1) / 2, kp = (bk + 1) / 2;
  std::vector<uint32_t> qa(bq * dp), kb(dp * quake::bf16_npad(bk)), pa(bq * kp), vb(kp * quake::bf16_npad(dv)),
      row(quake::bf16_pack_cols_words(d));
  quake::bf16_pack_a(q.data(), bq, d, d, qa.data(), dp);
  quake::bf16_pack_b_cols(k.data(), bk, d, d, kb.data(), row.data());
  quake::bf16_pack_a(p.data(), bq, bk, bk, pa.data(), kp);
  quake::bf16_pack_b_rows(v.data(), bk, dv, dv, vb.data());
  std::vector<std::function<void()>> fs = {
      [&] {  // Eigen S
        S.noalias() = Q * K.transpose();
        g_sink = s[0];
      },
      [&] {  // bf16 S
        quake::bf16_gemm<false>(qa.data(), dp, kb.data(), dp, s.data(), bk, bq, bk);
        g_sink = s[0];
      },
      [&] {  // bf16 S with K's packing
        quake::bf16_pack_b_cols(k.data(), bk, d, d, kb.data(), row.data());
        quake::bf16_gemm<false>(qa.data(), dp, kb.data(), dp, s.data(), bk, bq, bk);
        g_sink = s[0];
      },
      [&] {  // Eigen PV
        O.noalias() += P * V;
        g_sink = o[0];
      },
      [&] {  // bf16 PV
        quake::bf16_gemm<true>(pa.data(), kp, vb.data(), kp, o.data(), dv, bq, dv);
        g_sink = o[0];
      },
      [&] {  // bf16 PV with P's conversion and V's packing
        quake::bf16_pack_a(p.data(), bq, bk, bk, pa.data(), kp);
        quake::bf16_pack_b_rows(v.data(), bk, dv, dv, vb.data());
        quake::bf16_gemm<true>(pa.data(), kp, vb.data(), kp, o.data(), dv, bq, dv);
        g_sink = o[0];
      },
  };
  const std::vector<double> t = best_seconds(fs);
  const double eig_s = t[0], bf_s = t[1], bf_s_pack = t[2], eig_pv = t[3], bf_pv = t[4], bf_pv_pack = t[5];
  const auto gf = [&](double t) { return flops / t * 1e-9; };
  std::printf("| %zu x %zu x %zu | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", bq, bk, d, gf(eig_s), gf(bf_s),
              gf(bf_s_pack), gf(eig_pv), gf(bf_pv), gf(bf_pv_pack));
}

}  // namespace

int main() {
  if (!has_avx512_bf16()) {
    std::printf("this CPU has no AVX512-BF16: nothing to measure\n");
    return 0;
  }
  std::printf(
      "GFLOP/s, 1 thread (best of 7 interleaved rounds). S = Q K^T is bq x bk over D; O += P V is bq x Dv over bk (Dv "
      "= D).\n"
      "bf16 = the micro-kernel on packed operands; +pack = with the per-tile conversion (K; P and V).\n\n");
  std::printf("| bq x bk x D | S: Eigen f32 | S: bf16 | S: bf16 +pack | PV: Eigen f32 | PV: bf16 | PV: bf16 +pack |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  shape(64, 64, 64);
  shape(128, 208, 64);  // the tiles chosen on a 1 MiB L2 at D = 64
  shape(64, 208, 64);
  shape(128, 96, 128);  // D = 128
  shape(16, 208, 64);   // a short query block
  return 0;
}
