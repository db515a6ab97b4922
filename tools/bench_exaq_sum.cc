// Micro-benchmark behind the EXAQ kernels' choice of sum (BENCHMARKS.md,
// "EXAQ"): pass 2 of a row (codes, table lookup, store) with the row sum
// taken either as the sum of the looked-up entries in float lanes (what the
// kernels do) or from per-level counts (popcount of a compare per level,
// then counts times the table), the way the EXAQ paper describes the sum.
// AVX-512 only:
//   g++ -O2 -std=c++17 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma \
//       -mpopcnt tools/bench_exaq_sum.cc -o /tmp/bench_exaq_sum && /tmp/bench_exaq_sum
#include <immintrin.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

struct Setup {
  __m512 table, va, vtop, vm, under, zero;
};

inline __m512i codes(const Setup& s, __m512 x, __mmask16* live) {
  const __m512 z = _mm512_sub_ps(x, s.vm);
  *live = _mm512_cmp_ps_mask(z, s.under, _CMP_GT_OQ);
  return _mm512_cvtps_epi32(_mm512_max_ps(_mm512_fmadd_ps(z, s.va, s.vtop), s.zero));
}

// Sum of the entries, 4 accumulators.
float row_sum_entries(const Setup& s, const float* x, float* y, size_t n) {
  __m512 a0 = s.zero, a1 = s.zero, a2 = s.zero, a3 = s.zero;
  for (size_t i = 0; i < n; i += 64) {
    __m512 e[4];
    for (int k = 0; k < 4; ++k) {
      __mmask16 live;
      const __m512i c = codes(s, _mm512_loadu_ps(x + i + 16 * k), &live);
      e[k] = _mm512_maskz_permutexvar_ps(live, c, s.table);
      _mm512_storeu_ps(y + i + 16 * k, e[k]);
    }
    a0 = _mm512_add_ps(a0, e[0]);
    a1 = _mm512_add_ps(a1, e[1]);
    a2 = _mm512_add_ps(a2, e[2]);
    a3 = _mm512_add_ps(a3, e[3]);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// Counts per level: one compare and one popcount per level and vector.
template <int Levels>
float row_sum_counts(const Setup& s, const float* table, const float* x, float* y, size_t n) {
  uint32_t count[Levels] = {};
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 live;
    const __m512i c = codes(s, _mm512_loadu_ps(x + i), &live);
    _mm512_storeu_ps(y + i, _mm512_maskz_permutexvar_ps(live, c, s.table));
    for (int k = 0; k < Levels; ++k) {
      count[k] += static_cast<uint32_t>(_mm_popcnt_u32(_mm512_mask_cmpeq_epi32_mask(live, c, _mm512_set1_epi32(k))));
    }
  }
  double sum = 0;
  for (int k = 0; k < Levels; ++k) sum += count[k] * static_cast<double>(table[k]);
  return static_cast<float>(sum);
}

template <typename F>
double ns_per_element(F f, size_t elements) {
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double, std::nano>(t1 - t0).count() / elements);
  }
  return best;
}

template <int Levels>
void run(size_t n, const std::vector<float>& x, std::vector<float>& y) {
  alignas(64) float table[16] = {};
  const float lo = -4.0f;
  for (int k = 0; k < Levels; ++k) table[k] = std::exp(lo * (Levels - 1 - k) / (Levels - 1));
  Setup s{_mm512_load_ps(table),         _mm512_set1_ps((Levels - 1) / -lo),
          _mm512_set1_ps(Levels - 1.0f), _mm512_set1_ps(3.0f),
          _mm512_set1_ps(-87.3f),        _mm512_setzero_ps()};
  const size_t rows = x.size() / n;
  volatile float sink = 0;
  const double a = ns_per_element(
      [&] {
        for (size_t r = 0; r < rows; ++r) sink = sink + row_sum_entries(s, x.data() + r * n, y.data() + r * n, n);
      },
      x.size());
  const double b = ns_per_element(
      [&] {
        for (size_t r = 0; r < rows; ++r)
          sink = sink + row_sum_counts<Levels>(s, table, x.data() + r * n, y.data() + r * n, n);
      },
      x.size());
  std::printf("| %d | %zu | %.3f | %.3f | %.2fx |\n", Levels, n, a, b, b / a);
}

}  // namespace

int main() {
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::printf("| levels | row | sum of entries ns/elem | counts ns/elem | counts / entries |\n|---|---|---|---|---|\n");
  for (size_t n : {128, 512, 4096}) {
    std::vector<float> x(12 * 128 * 128 * (n >= 512 ? 4 : 1)), y(x.size());
    for (float& v : x) v = d(rng);
    run<4>(n, x, y);
    run<8>(n, x, y);
    run<16>(n, x, y);
  }
}
