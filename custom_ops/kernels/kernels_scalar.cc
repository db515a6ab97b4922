// Scalar kernels: the readable definition every ISA file matches, and the
// fallback on CPUs without a SIMD table. Valid ranges, errors and special
// values are those of kernels.h; the SIMD files may differ by an ulp (fused
// multiply-adds, reciprocal refinement) and in the order of summation inside
// softmax rows.
#include <cmath>
#include <limits>

#include "exp_core_scalar.h"
#include "f16_scalar.h"
#include "kernels.h"

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

template <int Order>
void silu_quake_scalar(const float* x, float* y, size_t n, float alpha) {
  // Below lo the result is 0 to float precision; clamping x there keeps
  // -inf * sigmoid(-inf) from becoming NaN.
  const float lo = -kSigmoidClamp / alpha;
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i] < lo ? lo : x[i];
    y[i] = v * inv_one_plus_exp<Order>(-alpha * v);
  }
}

template <int Order>
void gelu_quake_scalar(const float* x, const float* bias, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    float u = bias ? x[i] + bias[i] : x[i];
    u = u < kGeluLow ? kGeluLow : u;
    const float v = u * std::fma(kGeluK3, u * u, kGeluK1);
    y[i] = u * inv_one_plus_exp<Order>(-v);
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

template <int Order>
void softmax_quake_scalar(const float* x, float* y, size_t n) {
  const float m = row_max(x, n);
  if (std::isnan(m)) return fill(y, n, m);
  if (m == -std::numeric_limits<float>::infinity()) return fill(y, n, 0.0f);
  // A double sum keeps rows of 10^5 equal logits summing to 1 within 1e-6;
  // a float running sum drifts by ~1e-3 there.
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const float z = x[i] - m;  // in [-inf, 0]
    const float e = z <= kExpUnderflow ? 0.0f : exp_core<Order>(z);
    y[i] = e;
    sum += e;
  }
  const float inv = static_cast<float>(1.0 / sum);  // sum >= 1: the max element contributes e^0
  for (size_t i = 0; i < n; ++i) y[i] *= inv;
}

template <int Order>
void logsoftmax_quake_scalar(const float* x, float* y, size_t n) {
  const float m = row_max(x, n);
  if (std::isnan(m)) return fill(y, n, m);
  if (m == -std::numeric_limits<float>::infinity()) return fill(y, n, m);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const float z = x[i] - m;
    sum += z <= kExpUnderflow ? 0.0f : exp_core<Order>(z);
  }
  const float log_sum = static_cast<float>(std::log(sum));
  for (size_t i = 0; i < n; ++i) y[i] = (x[i] - m) - log_sum;
}

void f16_to_f32_scalar(const uint16_t* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = scalar::half_to_float(x[i]);
}
void f32_to_f16_scalar(const float* x, uint16_t* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = scalar::float_to_half(x[i]);
}

template <int Order>
constexpr OrderKernels order_table() {
  return {exp_quake_scalar<Order>,    sigmoid_quake_scalar<Order>,  silu_quake_scalar<Order>,
          gelu_quake_scalar<Order>,   each_row<softmax_quake_scalar<Order>>, each_row<logsoftmax_quake_scalar<Order>>};
}

}  // namespace

const KernelTable* scalar_kernels() {
  static const KernelTable table = {Isa::kScalar, "scalar", {order_table<1>(), order_table<2>(), order_table<3>()},
                                    f16_to_f32_scalar, f32_to_f16_scalar};
  return &table;
}

}  // namespace quake
