// Scalar kernels: the readable definition every ISA file matches, and the
// fallback on CPUs without a SIMD table. Valid ranges, errors and special
// values are those of kernels.h; the SIMD files may differ by an ulp (fused
// multiply-adds, reciprocal refinement) and in the order of summation inside
// softmax rows.
#include <cmath>
#include <limits>

#include "exaq_scalar.h"
#include "exp_core_scalar.h"
#include "f16_scalar.h"
#include "kernels.h"
#include "softmax_long.h"
#include "softmax_rows.h"

namespace quake {
namespace {

using scalar::clamp_keep_nan;
using scalar::exp_core;
using scalar::exp_quake;
using scalar::inv_one_plus_exp;

template <int Order>
void exp_quake_scalar(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = exp_quake<Order>(x[i]);
}

template <int Order>
void sigmoid_quake_scalar(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = inv_one_plus_exp<Order>(-x[i]);
}

// The gates of Silu, Gelu and Glu: act(a) = v / (1 + e^-z), one division:
//   silu: v = max(a, -88.72283 / alpha), z = alpha v
//   gelu: v = max(a, -12), z = v (K1 + K3 v^2)   (the tanh form)

// 1 + e^z with z clamped into the core's range; NaN is returned before the
// core, whose order-1 integer conversion of NaN is undefined behaviour.
template <int Order>
inline float one_plus_exp(float z) {
  if (std::isnan(z)) return z;
  return 1.0f + exp_core<Order>(clamp_keep_nan(z, kExpMinArg, kExpMaxArg));
}

template <int Order>
inline float silu_gate(float a, float alpha, float lo) {
  const float v = a < lo ? lo : a;  // below lo the gate is ~0; -inf would give -inf * 0
  return v / one_plus_exp<Order>(-alpha * v);
}

template <int Order>
inline float gelu_gate(float a) {
  const float u = a < kGeluLow ? kGeluLow : a;  // keeps u^3 finite
  return u / one_plus_exp<Order>(-u * std::fma(kGeluK3, u * u, kGeluK1));
}

// Silu = x sigmoid(alpha x) = x / (1 + e^(-alpha x)), in one division
// (silu_gate); below -88.72 / alpha the result is 0 to float precision.
template <int Order>
void silu_quake_scalar(const float* x, float* y, size_t n, float alpha) {
  const float lo = -kExpMaxArg / alpha;
  for (size_t i = 0; i < n; ++i) y[i] = silu_gate<Order>(x[i], alpha, lo);
}

// Gelu (tanh form) of x + bias = u / (1 + e^(-u (K1 + K3 u^2))), in one
// division (gelu_gate).
template <int Order>
void gelu_quake_scalar(const float* x, const float* bias, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = gelu_gate<Order>(bias ? x[i] + bias[i] : x[i]);
}

// ---------------------------------------------------------------------------
// Glu: y = act(a) * b in one pass, act(a) the Silu or Gelu gate above.
// act(a) is formed before the product, so a large |b| cannot overflow an
// a * b whose result is finite. Valid for any input.
// Error: act(a) keeps the Silu / Gelu kernels' absolute bound (order 1/2/3,
// measured in custom_ops/tests/test_kernels.cc, docs/ops.md), so
// |y - act_exact(a) b| <= that bound times |b|, plus two roundings of y.
// Special values: NaN in a or b -> NaN; a = +inf -> +inf * b (NaN for b = 0);
// a = -inf, and any a below the clamp, -> the gate's tiny limit
// (-2.6e-37 / alpha for silu, -3.5e-38 for gelu) times b: ~-0 for finite b,
// -inf * sign(b) for infinite b (exact math has NaN there only at a = -inf).
// In place: y may be a or b (each element is read before it is written).
template <int Order>
void glu_quake_scalar(const float* a, const float* b, float* y, size_t n, GluActivation act, float alpha) {
  if (act == GluActivation::kSilu) {
    const float lo = -kExpMaxArg / alpha;
    for (size_t i = 0; i < n; ++i) y[i] = silu_gate<Order>(a[i], alpha, lo) * b[i];
  } else {
    for (size_t i = 0; i < n; ++i) y[i] = gelu_gate<Order>(a[i]) * b[i];
  }
}

// Returns the row max, or NaN if the row holds a NaN or +inf (then the row
// result is NaN everywhere).
inline float row_max(const float* x, size_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) return x[i];
    m = x[i] > m ? x[i] : m;
  }
  return m == std::numeric_limits<float>::infinity() ? std::numeric_limits<float>::quiet_NaN() : m;
}

inline void fill(float* y, size_t n, float v) {
  for (size_t i = 0; i < n; ++i) y[i] = v;
}

// Sum of e^(x - m) over x[0, n), each term stored to y when Store; a NaN
// element makes the sum NaN. A double sum keeps rows of 10^5 equal logits
// summing to 1 within 1e-6; a float running sum drifts by ~1e-3 there.
template <int Order, bool Store>
double sum_exp_shifted(const float* x, float* y, size_t n, float m) {
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const float z = x[i] - m;  // in [-inf, 0] or NaN; the core never sees NaN (order 1 converts to int)
    const float e = z > kExpUnderflow ? exp_core<Order>(z) : (std::isnan(z) ? z : 0.0f);
    if (Store) y[i] = e;
    sum += e;
  }
  return sum;
}

// EXAQ softmax rows: the definition every ISA matches. Valid for any input.
// Per row, m = max, z = x - m; live elements (z > kExpUnderflow = -87.336555)
// get e^level(code(z)) from the table, the others (-inf, float-lowest and
// other additive masks) exactly 0; the row is divided by the sum of its
// live terms. Error: a live z >= lo moves by at most step / 2 = -lo / (2 (L - 1))
// in the exponent, z < lo is raised to lo; measured max abs errors against
// the exact softmax are in docs/ops.md (e.g. 3 bits, Gaussian logits sigma 1:
// ~0.04). All -inf row -> 0; a NaN or +inf in the row -> NaN row. The sum is
// the dot product of the level counts with the table (exact counts, double):
// it equals the sum of the stored terms, so rows sum to 1 within rounding.
void softmax_exaq_scalar(const float* x, float* y, size_t rows, size_t n, const ExaqParams& p) {
  const bool derived = p.clip == 0.0f;
  exaq::Levels fixed, row_levels;
  if (!derived) exaq::make_levels(p.bits, exaq::fixed_lo(p.clip), &fixed);
  uint32_t counts[exaq::kMaxLevels];
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    const float m = row_max(xr, n);
    if (std::isnan(m)) {
      fill(yr, n, m);
      continue;
    }
    if (m == -std::numeric_limits<float>::infinity()) {
      fill(yr, n, 0.0f);
      continue;
    }
    const exaq::Levels* lv = &fixed;
    if (derived) {
      double count = 0.0, sum = 0.0, sum_sq = 0.0;
      float zmin = 0.0f;
      for (size_t i = 0; i < n; ++i) {
        const float z = xr[i] - m;
        if (z > kExpUnderflow) {
          count += 1.0;
          sum += z;
          sum_sq += static_cast<double>(z) * z;
          zmin = z < zmin ? z : zmin;
        }
      }
      exaq::make_levels(p.bits, exaq::derived_lo(p.bits, count, sum, sum_sq, zmin), &row_levels);
      lv = &row_levels;
    }
    float table[exaq::kMaxLevels];
    for (int32_t k = 0; k < lv->levels; ++k) {
      counts[k] = 0;
      table[k] = exaq::entry(*lv, k);
    }
    for (size_t i = 0; i < n; ++i) {
      const float z = xr[i] - m;
      if (z > kExpUnderflow) {
        const int32_t k = exaq::code(z, *lv);
        ++counts[k];
        yr[i] = table[k];
      } else {
        yr[i] = 0.0f;
      }
    }
    double sum = 0.0;  // >= 1: the max element has code L - 1, e^0
    for (int32_t k = 0; k < lv->levels; ++k) sum += counts[k] * static_cast<double>(table[k]);
    const float inv = static_cast<float>(1.0 / sum);
    for (size_t i = 0; i < n; ++i) yr[i] *= inv;
  }
}

// The layer softmax_long.h is written over; sums in double, as the one-row kernels.
struct LongRowLayer {
  // The definition keeps the three passes (softmax_long.h, head_of).
  template <int Order>
  static constexpr bool kSaturatingTerms = false;
  static float max_skip_nan(const float* x, size_t n) {
    float m = -std::numeric_limits<float>::infinity();
    for (size_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;  // NaN compares false: skipped
    return m;
  }
  static bool has_nan(const float* x, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      if (std::isnan(x[i])) return true;
    }
    return false;
  }
  template <int Order, bool Store, bool Scaled>
  static float sum_exp2(const float* x, float* y, size_t n, float k, float scale) {
    double sum = 0.0;
    for (size_t i = 0; i < n; ++i) {
      const float t = std::fma(x[i], kLog2e, -k);
      const float e = t >= -126.0f ? scalar::exp2_core<Order>(t) : (std::isnan(t) ? t : 0.0f);
      if (Store) y[i] = Scaled ? e * scale : e;
      sum += e;
    }
    return static_cast<float>(sum);
  }
  static void log_prob(const float* x, float* y, size_t n, float a, float b) {
    for (size_t i = 0; i < n; ++i) {
      const float v = (x[i] - a) - b;
      y[i] = v > 0.0f ? 0.0f : v;  // NaN stays NaN
    }
  }
  static void fill(float* y, size_t n, float value) { quake::fill(y, n, value); }
  template <int Order, bool Store>
  static float sum_exp(const float* x, float* y, size_t n, float m) {
    return static_cast<float>(sum_exp_shifted<Order, Store>(x, y, n, m));
  }
  static void scale(float* y, size_t n, float c) { scale_to(y, y, n, c); }
  static void scale_to(const float* x, float* y, size_t n, float c) {  // y = x c
    for (size_t i = 0; i < n; ++i) y[i] = x[i] * c;
  }
};
// One online-softmax step of com.quake Attention (attention.h): the
// definition every ISA matches. Valid for any input; per element the quake
// core's relative error (order 1/2/3: 2.99e-2 / 1.73e-3 / 7.5e-5); the
// rescale factor is std::exp, so the accumulated output's error does not grow
// with the number of tiles. The row sum is taken in double.
template <int Order>
void online_softmax_scalar(float* s, size_t ld_s, size_t rows, size_t cols, ptrdiff_t diag, float scale,
                           const float* mask, size_t ld_mask, float* m, float* l, float* rescale) {
  for (size_t r = 0; r < rows; ++r) {
    float* sr = s + r * ld_s;
    const size_t live = live_columns(r, cols, diag);
    float tile_max = -std::numeric_limits<float>::infinity();
    bool poisoned = std::isnan(m[r]);
    for (size_t j = 0; j < live; ++j) {
      const float v = mask ? std::fma(scale, sr[j], mask[r * ld_mask + j]) : scale * sr[j];
      sr[j] = v;
      poisoned |= std::isnan(v) || v == std::numeric_limits<float>::infinity();
      tile_max = v > tile_max ? v : tile_max;
    }
    const float m_new = m[r] > tile_max ? m[r] : tile_max;
    rescale[r] = 1.0f;
    if (poisoned) {
      m[r] = l[r] = std::numeric_limits<float>::quiet_NaN();
      fill(sr, cols, 0.0f);
      continue;
    }
    if (m_new == -std::numeric_limits<float>::infinity()) {  // nothing live yet
      fill(sr, cols, 0.0f);
      continue;
    }
    double sum = 0.0;
    for (size_t j = 0; j < live; ++j) {
      const float z = sr[j] - m_new;  // in [-inf, 0]
      const float e = z <= kExpUnderflow ? 0.0f : exp_core<Order>(z);
      sr[j] = e;
      sum += e;
    }
    fill(sr + live, cols - live, 0.0f);
    if (m_new > m[r]) rescale[r] = std::exp(m[r] - m_new);  // m = -inf: 0
    l[r] = static_cast<float>(static_cast<double>(l[r]) * rescale[r] + sum);
    m[r] = m_new;
  }
}

void f16_to_f32_scalar(const uint16_t* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = scalar::half_to_float(x[i]);
}
void f32_to_f16_scalar(const float* x, uint16_t* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = scalar::float_to_half(x[i]);
}

template <int Order>
constexpr OrderKernels order_table() {
  return {exp_quake_scalar<Order>,
          sigmoid_quake_scalar<Order>,
          silu_quake_scalar<Order>,
          gelu_quake_scalar<Order>,
          rows::softmax<LongRowLayer, Order, false>,
          rows::softmax<LongRowLayer, Order, true>,
          longrow::stats<LongRowLayer, Order>,
          longrow::softmax_finish<LongRowLayer, Order>,
          longrow::logsoftmax_finish<LongRowLayer>,
          online_softmax_scalar<Order>,
          longrow::partial<LongRowLayer, Order>,
          longrow::scale<LongRowLayer>,
          longrow::shift<LongRowLayer>,
          glu_quake_scalar<Order>,
          HalfKernels{}};  // none: the op layer converts float16 through float blocks
}

}  // namespace

const KernelTable* scalar_kernels() {
  static const KernelTable table = {Isa::kScalar,
                                    "scalar",
                                    {order_table<1>(), order_table<2>(), order_table<3>()},
                                    f16_to_f32_scalar,
                                    f32_to_f16_scalar,
                                    softmax_exaq_scalar,
                                    attention_block_scalar,
                                    attention_pack_scalar};
  return &table;
}

}  // namespace quake
