// AArch64 ASIMD kernels: the algorithms of kernels_scalar.cc on 4 floats per
// register. ASIMD is mandatory on AArch64, so this table is always usable
// there; constants are still broadcast inside the kernels.
//
// The exponential core is the scalar one operation for operation (FRINTM
// floor, subtract, FMA Horner, integer add into the exponent field), and
// 1 / (1 + e) is a true division, so elementwise results match the scalar
// table bit for bit. Difference:
//  * Softmax sums run in 16 lanes over blocks of 256, then across blocks;
//    the scalar sums in double. Both stay within ~1e-6 of the exact sum.
// FMAX/FMIN propagate NaN, so clamps and the row max keep NaNs without help.
// Tails go through a 4-float buffer so they run the body's arithmetic and
// nothing past n is read or written.
// The elementwise kernels are elementwise.h's over this file's Lanes.
#include "kernels.h"

#if defined(__aarch64__)

#include <arm_neon.h>

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

inline float32x4_t and_mask(float32x4_t v, uint32x4_t m) {
  return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), m));
}

// 2^t * (the mantissa polynomial), t = z * log2(e) already computed: the
// core of orders 2 and 3 for -126 <= t < 128, no range handling.
template <int Order>
inline float32x4_t exp2_poly(float32x4_t t) {
  const float32x4_t fi = vrndmq_f32(t);
  const float32x4_t f = vsubq_f32(t, fi);
  float32x4_t p;
  if (Order == 2) {
    p = vfmaq_f32(vdupq_n_f32(kExpPoly2[1]), vdupq_n_f32(kExpPoly2[2]), f);
    p = vfmaq_f32(vdupq_n_f32(kExpPoly2[0]), p, f);
  } else {
    p = vfmaq_f32(vdupq_n_f32(kExpPoly3[2]), vdupq_n_f32(kExpPoly3[3]), f);
    p = vfmaq_f32(vdupq_n_f32(kExpPoly3[1]), p, f);
    p = vfmaq_f32(vdupq_n_f32(kExpPoly3[0]), p, f);
    p = vmaxq_f32(p, vdupq_n_f32(kExpPoly3Floor));  // see constants.h
  }
  // Adding floor(t) to the exponent field multiplies by 2^floor(t).
  const int32x4_t shifted = vshlq_n_s32(vcvtq_s32_f32(fi), 23);
  return vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(p), shifted));
}

// Schraudolph's bits from a = 2^23 (t + 127 - shift): FCVTNS rounds to
// nearest even like the scalar nearbyint; at least FLT_MIN's bits
// (constants.h); FMAX keeps a NaN a NaN.
inline float32x4_t schraudolph(float32x4_t a) {
  return vreinterpretq_f32_s32(vcvtnq_s32_f32(vmaxq_f32(a, vdupq_n_f32(kSchraudolphMinBits))));
}

// e^z for z in the core's range (kExpUnderflow, kExpOverflow), no range
// handling (out-of-range lanes are garbage the caller replaces). NegZ
// computes e^-z; negated constants are exact, so it is the scalar core of -z.
template <int Order, bool NegZ = false>
inline float32x4_t exp_core(float32x4_t z) {
  if (Order == 1) {
    const float32x4_t scale = vdupq_n_f32(NegZ ? -kSchraudolphScale : kSchraudolphScale);
    return schraudolph(vfmaq_f32(vdupq_n_f32(kSchraudolphOffset), z, scale));
  }
  return exp2_poly<Order>(vfmaq_f32(vdupq_n_f32(kExpTBias), z, vdupq_n_f32(NegZ ? -kLog2e : kLog2e)));
}

// 2^t with the order's mantissa for -126 <= t < 128 (softmax_long.h's
// base-2 terms), no range handling.
template <int Order>
inline float32x4_t exp2_core(float32x4_t t) {
  if (Order == 1) return schraudolph(vfmaq_f32(vdupq_n_f32(kSchraudolphOffset), t, vdupq_n_f32(0x1p23f)));
  return exp2_poly<Order>(t);
}

// Full range contract: z <= kExpUnderflow (and -inf) -> +0; z >= kExpOverflow,
// +inf -> +inf; NaN -> NaN (z + inf keeps the NaN).
template <int Order>
inline float32x4_t exp_quake_vec(float32x4_t z) {
  const uint32x4_t keep = vmvnq_u32(vcleq_f32(z, vdupq_n_f32(kExpUnderflow)));
  const uint32x4_t big = vmvnq_u32(vcltq_f32(z, vdupq_n_f32(kExpOverflow)));  // z >= kExpOverflow or NaN
  const float32x4_t e = and_mask(exp_core<Order>(z), keep);
  return vbslq_f32(big, vaddq_f32(z, vdupq_n_f32(kInf)), e);
}

// The vector layer elementwise.h is written over: 4 floats per register,
// float16 converted in the register (FCVTL exact; FCVTN rounds to nearest
// even, as f32_to_f16). Tails go through a 4-element buffer padded with 0.
struct Lanes {
  using Vec = float32x4_t;
  using Mask = uint32x4_t;
  static constexpr size_t kLanes = 4;
  static Vec load(const float* p) { return vld1q_f32(p); }
  static Vec load(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  static void store(float* p, Vec v) { vst1q_f32(p, v); }
  static void store(uint16_t* p, Vec v) { vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(v))); }
  template <typename T>
  static Vec load_tail(const T* p, size_t rem) {
    T buf[4] = {0, 0, 0, 0};
    std::memcpy(buf, p, rem * sizeof(T));
    return load(buf);
  }
  template <typename T>
  static void store_tail(T* p, size_t rem, Vec v) {
    T buf[4];
    store(buf, v);
    std::memcpy(p, buf, rem * sizeof(T));
  }
  static Vec set(float v) { return vdupq_n_f32(v); }
  static Vec add(Vec a, Vec b) { return vaddq_f32(a, b); }
  static Vec sub(Vec a, Vec b) { return vsubq_f32(a, b); }
  static Vec mul(Vec a, Vec b) { return vmulq_f32(a, b); }
  static Vec div(Vec a, Vec b) { return vdivq_f32(a, b); }
  static Vec fma(Vec a, Vec b, Vec c) { return vfmaq_f32(c, a, b); }
  static Vec min(Vec a, Vec b) { return vminq_f32(a, b); }  // FMIN, FMAX: NaN if either is
  static Vec max(Vec a, Vec b) { return vmaxq_f32(a, b); }
  static Mask ge(Vec a, Vec b) { return vcgeq_f32(a, b); }
  static Mask gt(Vec a, Vec b) { return vcgtq_f32(a, b); }
  static Mask is_nan(Vec v) { return vmvnq_u32(vceqq_f32(v, v)); }
  static Vec select(Mask m, Vec a, Vec b) { return vbslq_f32(m, a, b); }
  static Vec at_most_zero(Vec r) { return vminq_f32(vdupq_n_f32(0.0f), r); }  // FMIN keeps NaN
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
    float buf[4] = {fill, fill, fill, fill};
    std::memcpy(buf, p, rem * sizeof(float));
    return vld1q_f32(buf);
  }
  static Vec fms(Vec a, Vec b, Vec c) { return vfmaq_f32(vnegq_f32(c), a, b); }
  static Mask first(size_t rem) {
    static const uint32_t kIota[4] = {0, 1, 2, 3};
    return vcltq_u32(vld1q_u32(kIota), vdupq_n_u32(static_cast<uint32_t>(rem)));
  }
  static Mask mask_and(Mask a, Mask b) { return vandq_u32(a, b); }
  static Mask mask_or(Mask a, Mask b) { return vorrq_u32(a, b); }
  static bool any(Mask m) { return vmaxvq_u32(m) != 0; }
  static Mask ge_or_nan(Vec a, Vec b) { return vmvnq_u32(vcltq_f32(a, b)); }
  static float reduce_add(Vec v) { return vaddvq_f32(v); }
  static float reduce_max(Vec v) { return vmaxvq_f32(v); }
  static constexpr bool kMaxKeepsNaN = true;  // FMAX
  template <int Order>
  static Vec exp_term(Vec z) {
    return and_mask(exp_core<Order>(z), vcgtq_f32(z, vdupq_n_f32(kExpUnderflow)));
  }
  template <int Order>
  static Vec exp2_term(Vec t) {
    return and_mask(exp2_core<Order>(t), vcgeq_f32(t, vdupq_n_f32(-126.0f)));
  }
};

// ----------------------------------------------------------------------------
// EXAQ softmax (simd_exaq.h). A 16-float table is 64 bytes, four registers: TBL with byte
// indices 4 k + {0, 1, 2, 3} reads entry k in every lane. Up to 16 levels
// (bits 2..4) one lookup of the table; bits 5..8 the P/Q factoring of
// exaq::Levels (P by j / 16, Q by j % 16, multiplied).
struct Table16 {
  uint8x16x4_t bytes;
  explicit Table16(const float* t) {
    bytes.val[0] = vreinterpretq_u8_f32(vld1q_f32(t));
    bytes.val[1] = vreinterpretq_u8_f32(vld1q_f32(t + 4));
    bytes.val[2] = vreinterpretq_u8_f32(vld1q_f32(t + 8));
    bytes.val[3] = vreinterpretq_u8_f32(vld1q_f32(t + 12));
  }
  // index in 0..15 per lane.
  inline float32x4_t operator()(uint32x4_t index) const {
    const uint32x4_t b = vmlaq_u32(vdupq_n_u32(0x03020100u), index, vdupq_n_u32(0x04040404u));
    return vreinterpretq_f32_u8(vqtbl4q_u8(bytes, vreinterpretq_u8_u32(b)));
  }
};

template <bool Small>
struct ExaqLookup {
  Table16 t, p, q;
  uint32x4_t top;
  explicit ExaqLookup(const exaq::Levels& lv)
      : t(lv.table), p(lv.p), q(lv.q), top(vdupq_n_u32(static_cast<uint32_t>(lv.levels - 1))) {}
  // Entries of the live lanes for codes u rounded to nearest even (FCVTNS,
  // which sends a NaN u to 0); the others +0.
  inline float32x4_t operator()(uint32x4_t live, float32x4_t u) const {
    return and_mask(entries(vreinterpretq_u32_s32(vcvtnq_s32_f32(u))), live);
  }
  inline float32x4_t entries(uint32x4_t code) const {
    if (Small) return t(code);
    const uint32x4_t j = vsubq_u32(top, code);
    return vmulq_f32(p(vshrq_n_u32(j, 4)), q(vandq_u32(j, vdupq_n_u32(15))));
  }
};

// lo of a derived-C row, statistics of the live z in double; non-live lanes
// are zeroed (they add nothing and keep zmin, which starts at 0).
inline float exaq_derived_lo(const float* x, size_t n, float m, int bits) {
  const float32x4_t vm = vdupq_n_f32(m), under = vdupq_n_f32(kExpUnderflow);
  float64x2_t s_lo = vdupq_n_f64(0.0), s_hi = s_lo, q_lo = s_lo, q_hi = s_lo;
  float32x4_t zmin = vdupq_n_f32(0.0f);
  uint32x4_t count = vdupq_n_u32(0);
  auto add = [&](float32x4_t xv) {
    const float32x4_t z = vsubq_f32(xv, vm);
    const uint32x4_t live = vcgtq_f32(z, under);
    const float32x4_t zl = and_mask(z, live);
    zmin = vminq_f32(zmin, zl);
    const float64x2_t d_lo = vcvt_f64_f32(vget_low_f32(zl)), d_hi = vcvt_high_f64_f32(zl);
    s_lo = vaddq_f64(s_lo, d_lo);
    s_hi = vaddq_f64(s_hi, d_hi);
    q_lo = vfmaq_f64(q_lo, d_lo, d_lo);
    q_hi = vfmaq_f64(q_hi, d_hi, d_hi);
    count = vsubq_u32(count, live);  // live lanes are all ones: -1
  };
  size_t i = 0;
  for (; i + 4 <= n; i += 4) add(vld1q_f32(x + i));
  if (i < n) {
    float buf[4] = {-kInf, -kInf, -kInf, -kInf};
    std::memcpy(buf, x + i, (n - i) * sizeof(float));
    add(vld1q_f32(buf));
  }
  return exaq::derived_lo(bits, static_cast<double>(vaddvq_u32(count)), vaddvq_f64(vaddq_f64(s_lo, s_hi)),
                          vaddvq_f64(vaddq_f64(q_lo, q_hi)), vminvq_f32(zmin));
}

void softmax_exaq_neon(const float* x, float* y, size_t rows, size_t n, const ExaqParams& p) {
  if (p.bits <= 4) return simd_exaq::rows<Lanes, ExaqLookup<true>>(x, y, rows, n, p, exaq_derived_lo);
  simd_exaq::rows<Lanes, ExaqLookup<false>>(x, y, rows, n, p, exaq_derived_lo);
}

// FCVT conversions, round to nearest even (FPCR default); NaN stays NaN (a
// signalling NaN half comes back quieted), overflow -> inf.
void f16_to_f32_neon(const uint16_t* x, float* y, size_t n) {
  size_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i))));
  if (i < n) {
    uint16_t hb[4] = {0, 0, 0, 0};
    float fb[4];
    std::memcpy(hb, x + i, (n - i) * sizeof(uint16_t));
    vst1q_f32(fb, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(hb))));
    std::memcpy(y + i, fb, (n - i) * sizeof(float));
  }
}

void f32_to_f16_neon(const float* x, uint16_t* y, size_t n) {
  size_t i = 0;
  for (; i + 4 <= n; i += 4) vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
  if (i < n) {
    float fb[4] = {0, 0, 0, 0};
    uint16_t hb[4];
    std::memcpy(fb, x + i, (n - i) * sizeof(float));
    vst1_u16(hb, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(fb))));
    std::memcpy(y + i, hb, (n - i) * sizeof(uint16_t));
  }
}

}  // namespace

const KernelTable* neon_kernels() {
  static const KernelTable table = {
      Isa::kNeon,
      "neon",
      {simd_order_table<Lanes, 1>(), simd_order_table<Lanes, 2>(), simd_order_table<Lanes, 3>()},
      f16_to_f32_neon,
      f32_to_f16_neon,
      softmax_exaq_neon,
      attention_block_neon,
      attention_pack_neon};
  return &table;
}

}  // namespace quake

#else  // !__aarch64__

namespace quake {
const KernelTable* neon_kernels() { return nullptr; }
}  // namespace quake

#endif
