// AVX2 + FMA + F16C kernels: the algorithms of kernels_scalar.cc on 8 floats
// per register. Compiled with those flags only for this file and called only
// through the table after dispatch checked the CPU, so nothing here runs at
// static initialisation (constants are broadcast inside the kernels).
//
// The exponential core is the scalar one operation for operation (floor,
// subtract, FMA Horner, integer add into the exponent field), so Exp matches
// the scalar table bit for bit, and the divisions are true divisions
// (Lanes::div), so Sigmoid, Silu, Gelu and Glu match too: they are
// elementwise.h's kernels over this file's Lanes. Differences:
//  * Softmax sums run in 32 lanes over blocks of 512, then across blocks;
//    the scalar sums in double. Both stay within ~1e-6 of the exact sum.
// Tails use vmaskmov loads/stores with the body's arithmetic; nothing past n
// is written (masked-off lanes do not fault either).
#include "kernels.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include <cmath>
#include <cstring>
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

// All-ones in the first rem (1..7) lanes.
inline __m256i tail_mask(size_t rem) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 2^t * (the mantissa polynomial), t = z * log2(e) already computed: the
// core of orders 2 and 3 for -126 <= t < 128, no range handling.
template <int Order>
inline __m256 exp2_poly(__m256 t) {
  const __m256 fi = _mm256_round_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, fi);
  __m256 p;
  if (Order == 2) {
    p = _mm256_fmadd_ps(_mm256_set1_ps(kExpPoly2[2]), f, _mm256_set1_ps(kExpPoly2[1]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExpPoly2[0]));
  } else {
    p = _mm256_fmadd_ps(_mm256_set1_ps(kExpPoly3[3]), f, _mm256_set1_ps(kExpPoly3[2]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExpPoly3[1]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExpPoly3[0]));
    p = _mm256_max_ps(_mm256_set1_ps(kExpPoly3Floor), p);  // kExpPoly3Floor: see constants.h
  }
  // Adding floor(t) to the exponent field multiplies by 2^floor(t).
  const __m256i shifted = _mm256_slli_epi32(_mm256_cvttps_epi32(fi), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), shifted));
}

// Schraudolph's bits from a = 2^23 (t + 127 - shift): cvtps rounds to
// nearest even like the scalar nearbyint; at least FLT_MIN's bits
// (constants.h); a NaN a stays NaN (max returns its second operand).
inline __m256 schraudolph(__m256 a) {
  return _mm256_castsi256_ps(_mm256_cvtps_epi32(_mm256_max_ps(_mm256_set1_ps(kSchraudolphMinBits), a)));
}

// e^z for z in the core's range (kExpUnderflow, kExpOverflow), no range
// handling (out-of-range lanes are garbage the caller replaces). NegZ
// computes e^-z; negated constants are exact, so it is the scalar core of -z.
template <int Order, bool NegZ = false>
inline __m256 exp_core(__m256 z) {
  if (Order == 1) {
    const __m256 scale = _mm256_set1_ps(NegZ ? -kSchraudolphScale : kSchraudolphScale);
    return schraudolph(_mm256_fmadd_ps(z, scale, _mm256_set1_ps(kSchraudolphOffset)));
  }
  return exp2_poly<Order>(_mm256_fmadd_ps(z, _mm256_set1_ps(NegZ ? -kLog2e : kLog2e), _mm256_set1_ps(kExpTBias)));
}

// 2^t with the order's mantissa for -126 <= t < 128 (softmax_long.h's
// base-2 terms), no range handling.
template <int Order>
inline __m256 exp2_core(__m256 t) {
  if (Order == 1) return schraudolph(_mm256_fmadd_ps(t, _mm256_set1_ps(0x1p23f), _mm256_set1_ps(kSchraudolphOffset)));
  return exp2_poly<Order>(t);
}

// Full range contract: z <= kExpUnderflow (and -inf) -> +0; z >= kExpOverflow,
// +inf -> +inf; NaN -> NaN (z + inf keeps the NaN).
template <int Order>
inline __m256 exp_quake_vec(__m256 z) {
  const __m256 keep = _mm256_cmp_ps(z, _mm256_set1_ps(kExpUnderflow), _CMP_NLE_UQ);
  const __m256 big = _mm256_cmp_ps(z, _mm256_set1_ps(kExpOverflow), _CMP_NLT_UQ);
  const __m256 e = _mm256_and_ps(exp_core<Order>(z), keep);
  return _mm256_blendv_ps(e, _mm256_add_ps(z, _mm256_set1_ps(kInf)), big);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The vector layer elementwise.h is written over: 8 floats per register.
struct Lanes {
  using Vec = __m256;
  using Mask = __m256;
  static constexpr size_t kLanes = 8;
  // float, or float16 converted in the register (F16C: exact in, round to
  // nearest even out, as f32_to_f16), so a float16 kernel is its float
  // kernel's arithmetic with one rounding at the end. Tails of rem (1..7)
  // elements: lanes past rem load 0 and are not stored; float16 tails go
  // through a small buffer (AVX2 has no 16-bit masked load).
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static Vec load(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static Vec load_tail(const float* p, size_t rem) { return _mm256_maskload_ps(p, tail_mask(rem)); }
  static Vec load_tail(const uint16_t* p, size_t rem) {
    uint16_t hb[8] = {0};
    std::memcpy(hb, p, rem * sizeof(uint16_t));
    return load(hb);
  }
  static void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static void store(uint16_t* p, Vec v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static void store_tail(float* p, size_t rem, Vec v) { _mm256_maskstore_ps(p, tail_mask(rem), v); }
  static void store_tail(uint16_t* p, size_t rem, Vec v) {
    uint16_t hb[8];
    store(hb, v);
    std::memcpy(p, hb, rem * sizeof(uint16_t));
  }
  static Vec set(float v) { return _mm256_set1_ps(v); }
  static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Vec sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  static Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  // A true division: RCPPS + one Newton step leaves 1 / 1 at 1 - 2^-24 on
  // AMD, which turns Silu(x) into x - 1 ulp for large x; two steps cost as
  // much as the division.
  static Vec div(Vec a, Vec b) { return _mm256_div_ps(a, b); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec min(Vec a, Vec b) { return _mm256_min_ps(a, b); }
  static Vec max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
  static Mask ge(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static Mask gt(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static Mask is_nan(Vec v) { return _mm256_cmp_ps(v, v, _CMP_UNORD_Q); }
  static Vec select(Mask m, Vec a, Vec b) { return _mm256_blendv_ps(b, a, m); }
  // MINPS returns its second operand when either is NaN: NaN stays NaN.
  static Vec at_most_zero(Vec r) { return _mm256_min_ps(_mm256_setzero_ps(), r); }
  // The core adds floor(t) to the exponent bits, which wrap out of range.
  template <int Order>
  static constexpr bool kSaturatingCore = false;
  template <int Order>
  static Vec exp(Vec z) {
    return exp_quake_vec<Order>(z);
  }
  template <int Order>
  static Vec exp_neg_core(Vec v) {
    return exp_core<Order, true>(v);
  }
  static Vec load_tail_or(const float* p, size_t rem, float fill) {
    const __m256i k = tail_mask(rem);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, k), _mm256_castsi256_ps(k));
  }
  static Vec fms(Vec a, Vec b, Vec c) { return _mm256_fmsub_ps(a, b, c); }
  static Mask first(size_t rem) { return _mm256_castsi256_ps(tail_mask(rem)); }
  static Mask mask_and(Mask a, Mask b) { return _mm256_and_ps(a, b); }
  static Mask mask_or(Mask a, Mask b) { return _mm256_or_ps(a, b); }
  static bool any(Mask m) { return _mm256_movemask_ps(m) != 0; }
  static Mask ge_or_nan(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_NLT_UQ); }
  static float reduce_add(Vec v) { return hsum(v); }
  static float reduce_max(Vec v) { return hmax(v); }
  static constexpr bool kMaxKeepsNaN = false;
  template <int Order>
  static Vec exp_term(Vec z) {
    return _mm256_and_ps(exp_core<Order>(z), _mm256_cmp_ps(z, _mm256_set1_ps(kExpUnderflow), _CMP_NLE_UQ));
  }
  template <int Order>
  static Vec exp2_term(Vec t) {
    return _mm256_and_ps(exp2_core<Order>(t), _mm256_cmp_ps(t, _mm256_set1_ps(-126.0f), _CMP_NLT_UQ));
  }
};

// ----------------------------------------------------------------------------
// EXAQ softmax (simd_exaq.h). Lookups are VPERMPS over 8 entries: 8 levels (bits 2, 3)
// one permute; 16 (bits 4) two permutes and a blend on bit 3 of the code;
// more (bits 5..8) the P/Q factoring of exaq::Levels: a 16-entry lookup of P
// by j / 16 and of Q by j % 16, multiplied.
inline __m256 lookup16(__m256 low, __m256 high, __m256i index) {
  const __m256 a = _mm256_permutevar8x32_ps(low, index), b = _mm256_permutevar8x32_ps(high, index);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(index, 28)));  // bit 3 to the sign
}

template <int Levels>  // 8, 16, or 0 for P/Q
struct ExaqLookup {
  __m256 t0, t1, p0, p1, q0, q1;
  __m256i top;
  explicit ExaqLookup(const exaq::Levels& lv)
      : t0(_mm256_load_ps(lv.table)),
        t1(_mm256_load_ps(lv.table + 8)),
        p0(_mm256_load_ps(lv.p)),
        p1(_mm256_load_ps(lv.p + 8)),
        q0(_mm256_load_ps(lv.q)),
        q1(_mm256_load_ps(lv.q + 8)),
        top(_mm256_set1_epi32(lv.levels - 1)) {}
  // Entries of the live lanes for codes u rounded to nearest even (VCVTPS2DQ); the others +0.
  inline __m256 operator()(__m256 live, __m256 u) const { return _mm256_and_ps(entries(_mm256_cvtps_epi32(u)), live); }
  inline __m256 entries(__m256i code) const {
    if (Levels == 8) return _mm256_permutevar8x32_ps(t0, code);
    if (Levels == 16) return lookup16(t0, t1, code);
    const __m256i j = _mm256_sub_epi32(top, code);
    return _mm256_mul_ps(lookup16(p0, p1, _mm256_srli_epi32(j, 4)), lookup16(q0, q1, j));
  }
};

// lo of a derived-C row from its live z, statistics in double: non-live
// lanes are zeroed, which adds nothing to the sums and keeps zmin (from 0).
inline float exaq_derived_lo(const float* x, size_t n, float m, int bits) {
  const __m256 vm = _mm256_set1_ps(m), under = _mm256_set1_ps(kExpUnderflow);
  __m256d s_lo = _mm256_setzero_pd(), s_hi = s_lo, q_lo = s_lo, q_hi = s_lo;
  __m256 zmin = _mm256_setzero_ps();
  uint64_t count = 0;
  auto add = [&](__m256 z, __m256 live) {
    const __m256 zl = _mm256_and_ps(z, live);
    zmin = _mm256_min_ps(zmin, zl);
    const __m256d d_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(zl)),
                  d_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(zl, 1));
    s_lo = _mm256_add_pd(s_lo, d_lo);
    s_hi = _mm256_add_pd(s_hi, d_hi);
    q_lo = _mm256_fmadd_pd(d_lo, d_lo, q_lo);
    q_hi = _mm256_fmadd_pd(d_hi, d_hi, q_hi);
    count += static_cast<uint64_t>(__builtin_popcount(_mm256_movemask_ps(live)));
  };
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 z = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
    add(z, _mm256_cmp_ps(z, under, _CMP_GT_OQ));
  }
  if (i < n) {
    const __m256i k = tail_mask(n - i);
    const __m256 z = _mm256_sub_ps(_mm256_maskload_ps(x + i, k), vm);
    add(z, _mm256_and_ps(_mm256_cmp_ps(z, under, _CMP_GT_OQ), _mm256_castsi256_ps(k)));
  }
  __m256d s = _mm256_add_pd(s_lo, s_hi), q = _mm256_add_pd(q_lo, q_hi);
  alignas(32) double sv[4], qv[4];
  _mm256_store_pd(sv, s);
  _mm256_store_pd(qv, q);
  __m128 mn = _mm_min_ps(_mm256_castps256_ps128(zmin), _mm256_extractf128_ps(zmin, 1));
  mn = _mm_min_ps(mn, _mm_movehl_ps(mn, mn));
  mn = _mm_min_ss(mn, _mm_movehdup_ps(mn));
  return exaq::derived_lo(bits, static_cast<double>(count), (sv[0] + sv[1]) + (sv[2] + sv[3]),
                          (qv[0] + qv[1]) + (qv[2] + qv[3]), _mm_cvtss_f32(mn));
}

void softmax_exaq_avx2(const float* x, float* y, size_t rows, size_t n, const ExaqParams& p) {
  if (p.bits <= 3) return simd_exaq::rows<Lanes, ExaqLookup<8>>(x, y, rows, n, p, exaq_derived_lo);
  if (p.bits == 4) return simd_exaq::rows<Lanes, ExaqLookup<16>>(x, y, rows, n, p, exaq_derived_lo);
  simd_exaq::rows<Lanes, ExaqLookup<0>>(x, y, rows, n, p, exaq_derived_lo);
}

// F16C conversions. Round to nearest even; NaN stays NaN (a signalling NaN
// half comes back quieted), overflow -> inf. The tail goes through a small
// buffer so it uses the same instruction as the body.
void f16_to_f32_avx2(const uint16_t* x, float* y, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  }
  if (i < n) {
    uint16_t hb[8] = {0};
    float fb[8];
    std::memcpy(hb, x + i, (n - i) * sizeof(uint16_t));
    _mm256_storeu_ps(fb, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hb))));
    std::memcpy(y + i, fb, (n - i) * sizeof(float));
  }
}

void f32_to_f16_avx2(const float* x, uint16_t* y, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  if (i < n) {
    const __m256i k = tail_mask(n - i);
    uint16_t hb[8];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(hb),
                     _mm256_cvtps_ph(_mm256_maskload_ps(x + i, k), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    std::memcpy(y + i, hb, (n - i) * sizeof(uint16_t));
  }
}

}  // namespace

const KernelTable* avx2_kernels() {
  static const KernelTable table = {
      Isa::kAvx2,
      "avx2",
      {simd_order_table<Lanes, 1>(), simd_order_table<Lanes, 2>(), simd_order_table<Lanes, 3>()},
      f16_to_f32_avx2,
      f32_to_f16_avx2,
      softmax_exaq_avx2,
      attention_block_avx2,
      attention_pack_avx2};
  return &table;
}

}  // namespace quake

#else  // !__x86_64__

namespace quake {
const KernelTable* avx2_kernels() { return nullptr; }
}  // namespace quake

#endif
