// AVX-512 (F/BW/DQ/VL) kernels: the algorithms of kernels_scalar.cc on 16
// floats per register. This file is compiled with AVX-512 flags and runs only
// after dispatch chose its table, so nothing here may execute at static
// initialisation: constants are plain floats broadcast inside the kernels.
//
// Differences from the scalar definition (elementwise below 1e-6 relative):
//  * f = t - floor(t) comes from VREDUCEPS, whose subtraction rounds toward
//    -inf; the scalar subtraction rounds to nearest. They differ by at most
//    one ulp of f, only for t in (-1, 0).
//  * t = fl(z log2e), without the other tables' kExpTBias (constants.h), so
//    for z in (-2^-110.5, 0) this core gives p(1) / 2 where the scalar
//    gives p(0), both within the order's error of 1 (t differs only for
//    |z| below about 2^-84, results only there). With the bias, on Zen 4,
//    this table's Exp and Sigmoid on subnormal inputs ran 1.17x / 1.79x
//    faster but its Silu and GELU 0.70-0.86x slower (a Silu then at ORT's
//    QuickGelu speed), and its Exp in L1 1-2 % slower on normal inputs
//    (benchmarks/library_ab.py; BENCHMARKS.md "Zen 4 running the AVX2 table").
//  * Softmax sums run in 64 lanes over blocks of 1024, then across blocks;
//    the scalar sums in double. Both stay within ~1e-6 of the exact sum.
// Tails use masked loads and stores, so the tail runs the same arithmetic as
// the body and nothing past n is read or written. The elementwise kernels are
// elementwise.h's over this file's Lanes.
#include "kernels.h"

#if defined(__x86_64__)

// GCC 12's AVX-512 headers self-initialise their _mm512_undefined_* values,
// which -W(maybe-)uninitialized reports at masked and rounding intrinsics.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "constants.h"
#include "elementwise.h"
#include "exaq_scalar.h"
#include "simd_exaq.h"
#include "simd_order_table.h"
#include "simd_rows.h"
#include "softmax_long.h"
#include "softmax_rows.h"

namespace quake {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

inline __mmask16 tail_mask(size_t rem) { return static_cast<__mmask16>((1u << rem) - 1u); }

// 2^t * (the mantissa polynomial), t = z * log2(e) already computed: the
// core of orders 2 and 3 for -126 <= t < 128; lanes outside `keep` are +0.
template <int Order>
inline __m512 exp2_poly_maskz(__mmask16 keep, __m512 t) {
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);  // t - floor(t)
  __m512 p;
  if (Order == 2) {
    p = _mm512_fmadd_ps(_mm512_set1_ps(kExpPoly2[2]), f, _mm512_set1_ps(kExpPoly2[1]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExpPoly2[0]));
  } else {
    p = _mm512_fmadd_ps(_mm512_set1_ps(kExpPoly3[3]), f, _mm512_set1_ps(kExpPoly3[2]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExpPoly3[1]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExpPoly3[0]));
    p = _mm512_max_ps(_mm512_set1_ps(kExpPoly3Floor), p);  // kExpPoly3Floor: see constants.h
  }
  // p in [1, 2) and 2^floor(t) normal in range, so p * 2^floor(t) is exactly
  // the scalar's exponent-field addition.
  return _mm512_maskz_scalef_ps(keep, p, t);
}

// Schraudolph's bits from a = 2^23 (t + 127 - shift): cvtps rounds to
// nearest even like the scalar nearbyint; at least FLT_MIN's bits
// (constants.h); a NaN a stays NaN (max returns its second operand).
inline __m512 schraudolph_maskz(__mmask16 keep, __m512 a) {
  return _mm512_castsi512_ps(_mm512_maskz_cvtps_epi32(keep, _mm512_max_ps(_mm512_set1_ps(kSchraudolphMinBits), a)));
}

// e^z for z in the core's range (kExpUnderflow, kExpOverflow); lanes outside
// `keep` come out as +0. Out-of-range lanes inside `keep` hold garbage the
// caller overwrites. NegZ computes e^-z instead (negated constants are exact,
// so this equals this core applied to -z bit for bit).
template <int Order, bool NegZ = false>
inline __m512 exp_core_maskz(__mmask16 keep, __m512 z) {
  if (Order == 1) {
    const __m512 scale = _mm512_set1_ps(NegZ ? -kSchraudolphScale : kSchraudolphScale);
    return schraudolph_maskz(keep, _mm512_fmadd_ps(z, scale, _mm512_set1_ps(kSchraudolphOffset)));
  }
  return exp2_poly_maskz<Order>(keep, _mm512_mul_ps(z, _mm512_set1_ps(NegZ ? -kLog2e : kLog2e)));
}

// 2^t with the order's mantissa for -126 <= t < 128 (softmax_long.h's base-2
// terms); lanes outside `keep` are +0.
template <int Order>
inline __m512 exp2_core_maskz(__mmask16 keep, __m512 t) {
  if (Order == 1)
    return schraudolph_maskz(keep, _mm512_fmadd_ps(t, _mm512_set1_ps(0x1p23f), _mm512_set1_ps(kSchraudolphOffset)));
  return exp2_poly_maskz<Order>(keep, t);
}

template <int Order, bool NegZ = false>
inline __m512 exp_core(__m512 z) {
  return exp_core_maskz<Order, NegZ>(static_cast<__mmask16>(0xffff), z);
}

// Full range contract: z <= kExpUnderflow (and -inf) -> +0; z >= kExpOverflow,
// +inf -> +inf; NaN -> NaN (z + inf keeps the NaN).
template <int Order>
inline __m512 exp_quake_vec(__m512 z) {
  const __mmask16 keep = _mm512_cmp_ps_mask(z, _mm512_set1_ps(kExpUnderflow), _CMP_NLE_UQ);
  const __mmask16 big = _mm512_cmp_ps_mask(z, _mm512_set1_ps(kExpOverflow), _CMP_NLT_UQ);
  const __m512 e = exp_core_maskz<Order>(keep, z);
  return _mm512_mask_add_ps(e, big, z, _mm512_set1_ps(kInf));
}

// The vector layer elementwise.h is written over: 16 floats per register.
struct Lanes {
  using Vec = __m512;
  using Mask = __mmask16;
  static constexpr size_t kLanes = 16;
  // float, or float16 converted in the register (VCVTPH2PS exact; VCVTPS2PH
  // rounds to nearest even, as f32_to_f16), so a float16 kernel is its float
  // kernel's arithmetic with one rounding at the end.
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static Vec load(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static Vec load_tail(const float* p, size_t rem) { return _mm512_maskz_loadu_ps(tail_mask(rem), p); }
  static Vec load_tail(const uint16_t* p, size_t rem) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask(rem), p));
  }
  static void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static void store(uint16_t* p, Vec v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_half(v)); }
  static void store_tail(float* p, size_t rem, Vec v) { _mm512_mask_storeu_ps(p, tail_mask(rem), v); }
  static void store_tail(uint16_t* p, size_t rem, Vec v) { _mm256_mask_storeu_epi16(p, tail_mask(rem), to_half(v)); }
  static __m256i to_half(Vec v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static Vec set(float v) { return _mm512_set1_ps(v); }
  static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static Vec sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  static Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  // A true division: on Zen 5 VDIVPS zmm is faster inside these kernels
  // than VRCP14PS + a Newton step (measured 15-20 % on Sigmoid/Silu/Gelu; on
  // Zen 4 11-15 % in L2) and it is exact. On Intel cores, where VDIVPS zmm
  // issues once per ~10 cycles, the reciprocal may be the faster choice.
  static Vec div(Vec a, Vec b) { return _mm512_div_ps(a, b); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec min(Vec a, Vec b) { return _mm512_min_ps(a, b); }
  static Vec max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
  static Mask ge(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static Mask gt(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static Mask is_nan(Vec v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q); }
  static Vec select(Mask m, Vec a, Vec b) { return _mm512_mask_mov_ps(b, m, a); }
  // Results above 0 become 0, NaN stays. On Zen 4 a compare and masked move
  // cost 3-5 % of a LogSoftmax call, VMINPS 18-22 %.
  static Vec at_most_zero(Vec r) {
    return _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(r, _mm512_setzero_ps(), _CMP_GT_OQ), _mm512_setzero_ps());
  }
  // Orders 2 and 3 scale by VSCALEFPS, which saturates (2^t is +inf for
  // t >= 128 and +0 for t <= -150, VREDUCEPS(+-inf) = 0): e^-v needs no
  // clamp, v = -inf -> +inf, +inf -> 0, NaN -> NaN. Versus the scalar
  // definition (which clamps) results differ only where they are below
  // 1.6e-38. Order 1's integer conversion does not saturate.
  template <int Order>
  static constexpr bool kSaturatingCore = Order >= 2;
  template <int Order>
  static Vec exp(Vec z) {
    return exp_quake_vec<Order>(z);
  }
  template <int Order>
  static Vec exp_neg_core(Vec v) {
    return exp_core<Order, true>(v);
  }
  static Vec load_tail_or(const float* p, size_t rem, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(rem), p);
  }
  static Vec fms(Vec a, Vec b, Vec c) { return _mm512_fmsub_ps(a, b, c); }
  static Mask first(size_t rem) { return tail_mask(rem); }
  static Mask mask_and(Mask a, Mask b) { return a & b; }
  static Mask mask_or(Mask a, Mask b) { return a | b; }
  static bool any(Mask m) { return m != 0; }
  static Mask ge_or_nan(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_NLT_UQ); }
  static float reduce_add(Vec v) { return _mm512_reduce_add_ps(v); }
  static float reduce_max(Vec v) { return _mm512_reduce_max_ps(v); }
  static constexpr bool kMaxKeepsNaN = false;
  template <int Order>
  static Vec exp_term(Vec z) {
    return exp_core_maskz<Order>(_mm512_cmp_ps_mask(z, _mm512_set1_ps(kExpUnderflow), _CMP_NLE_UQ), z);
  }
  template <int Order>
  static Vec exp2_term(Vec t) {
    return exp2_core_maskz<Order>(_mm512_cmp_ps_mask(t, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ), t);
  }
};

// ----------------------------------------------------------------------------
// EXAQ softmax (simd_exaq.h). The table lookup is a register permute: up to 16 levels
// (bits 2..4) one VPERMPS of the table; more levels (bits 5..8) VPERMPS of
// P by j / 16 and of Q by j % 16 (VPERMPS reads the low 4 bits of the
// index), multiplied: 3 instructions where a 256-entry gather was measured
// 2.5x slower on Zen 5.
template <bool Small>
struct ExaqLookup {
  __m512 t, p, q;
  __m512i top;
  explicit ExaqLookup(const exaq::Levels& lv)
      : t(_mm512_load_ps(lv.table)),
        p(_mm512_load_ps(lv.p)),
        q(_mm512_load_ps(lv.q)),
        top(_mm512_set1_epi32(lv.levels - 1)) {}
  // Entries of the live lanes for codes u rounded to nearest even (VCVTPS2DQ); the others +0.
  inline __m512 operator()(__mmask16 live, __m512 u) const {
    const __m512i code = _mm512_cvtps_epi32(u);
    if (Small) return _mm512_maskz_permutexvar_ps(live, code, t);
    const __m512i j = _mm512_sub_epi32(top, code);
    return _mm512_maskz_mul_ps(live, _mm512_permutexvar_ps(_mm512_srli_epi32(j, 4), p), _mm512_permutexvar_ps(j, q));
  }
};

// lo of a derived-C row: statistics of the live z in double (so every ISA
// gets the same lo up to the last bits of a double sum), then exaq::derived_lo.
inline float exaq_derived_lo(const float* x, size_t n, float m, int bits) {
  const __m512 vm = _mm512_set1_ps(m), under = _mm512_set1_ps(kExpUnderflow);
  __m512d s_lo = _mm512_setzero_pd(), s_hi = s_lo, q_lo = s_lo, q_hi = s_lo;
  __m512 zmin = _mm512_setzero_ps();
  uint64_t count = 0;
  auto add = [&](__mmask16 active, __m512 xv) {
    const __m512 z = _mm512_sub_ps(xv, vm);
    const __mmask16 live = _mm512_mask_cmp_ps_mask(active, z, under, _CMP_GT_OQ);
    zmin = _mm512_mask_min_ps(zmin, live, zmin, z);
    const __mmask8 k_lo = static_cast<__mmask8>(live), k_hi = static_cast<__mmask8>(live >> 8);
    const __m512d d_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(z));
    const __m512d d_hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)));
    s_lo = _mm512_mask_add_pd(s_lo, k_lo, s_lo, d_lo);
    s_hi = _mm512_mask_add_pd(s_hi, k_hi, s_hi, d_hi);
    q_lo = _mm512_mask3_fmadd_pd(d_lo, d_lo, q_lo, k_lo);
    q_hi = _mm512_mask3_fmadd_pd(d_hi, d_hi, q_hi, k_hi);
    count += static_cast<uint64_t>(__builtin_popcount(live));
  };
  size_t i = 0;
  for (; i + 16 <= n; i += 16) add(0xffff, _mm512_loadu_ps(x + i));
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    add(k, _mm512_maskz_loadu_ps(k, x + i));
  }
  const double sum = _mm512_reduce_add_pd(_mm512_add_pd(s_lo, s_hi));
  const double sum_sq = _mm512_reduce_add_pd(_mm512_add_pd(q_lo, q_hi));
  return exaq::derived_lo(bits, static_cast<double>(count), sum, sum_sq, _mm512_reduce_min_ps(zmin));
}

void softmax_exaq_avx512(const float* x, float* y, size_t rows, size_t n, const ExaqParams& p) {
  if (p.bits <= 4) return simd_exaq::rows<Lanes, ExaqLookup<true>>(x, y, rows, n, p, exaq_derived_lo);
  simd_exaq::rows<Lanes, ExaqLookup<false>>(x, y, rows, n, p, exaq_derived_lo);
}

// F16C conversions, masked tails. Round to nearest even; NaN stays NaN
// (a signalling NaN half comes back quieted), overflow -> inf.
void f16_to_f32_avx512(const uint16_t* x, float* y, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i))));
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, x + i)));
  }
}

void f32_to_f16_avx512(const float* x, uint16_t* y, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    _mm256_mask_storeu_epi16(
        y + i, k, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(k, x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

}  // namespace

const KernelTable* avx512_kernels() {
  static const KernelTable table = {
      Isa::kAvx512,
      "avx512",
      {simd_order_table<Lanes, 1>(), simd_order_table<Lanes, 2>(), simd_order_table<Lanes, 3>()},
      f16_to_f32_avx512,
      f32_to_f16_avx512,
      softmax_exaq_avx512,
      attention_block_avx512,
      attention_pack_avx512};
  return &table;
}

}  // namespace quake

#else  // !__x86_64__

namespace quake {
const KernelTable* avx512_kernels() { return nullptr; }
}  // namespace quake

#endif
