// One order's kernels of a SIMD table (kernels.h's OrderKernels), from the
// ISA file's vector layer (elementwise.h's V), its row layer (softmax_long.h's
// R) and its online-softmax step: every SIMD table lists the same kernels,
// so the list is written once here, as are the row layer's elementwise
// members (SimdRowMaps).
#pragma once

#include <cstdint>

#include "elementwise.h"
#include "kernels.h"
#include "softmax_long.h"
#include "softmax_rows.h"

namespace quake {
namespace {

// The members of a row layer R that are maps over V, and its saturation
// rule: V's exponential core saturates exactly where R's base-2 terms do
// (VSCALEFPS on AVX-512, orders 2 and 3).
template <class V>
struct SimdRowMaps {
  template <int Order>
  static constexpr bool kSaturatingTerms = V::template kSaturatingCore<Order>;
  // y = min(0, (x - a) - b), NaN kept: LogSoftmax's results.
  static void log_prob(const float* x, float* y, size_t n, float a, float b) {
    const typename V::Vec va = V::set(a), vb = V::set(b);
    elementwise::map<V>(x, y, n, [=](typename V::Vec v) { return V::at_most_zero(V::sub(V::sub(v, va), vb)); });
  }
  static void scale(float* y, size_t n, float c) { scale_to(y, y, n, c); }
  static void scale_to(const float* x, float* y, size_t n, float c) {  // y = x c
    const typename V::Vec vc = V::set(c);
    elementwise::map<V>(x, y, n, [vc](typename V::Vec v) { return V::mul(v, vc); });
  }
};

template <class V, class R, int Order>
constexpr OrderKernels simd_order_table(OnlineSoftmaxFn online_softmax) {
  using namespace elementwise;
  return {exp_quake<V, Order, float>,
          sigmoid_quake<V, Order, float>,
          silu_quake<V, Order, float>,
          gelu_quake<V, Order, float>,
          rows::softmax<R, Order, false>,
          rows::softmax<R, Order, true>,
          longrow::stats<R, Order>,
          longrow::softmax_finish<R, Order>,
          longrow::logsoftmax_finish<R>,
          online_softmax,
          longrow::partial<R, Order>,
          longrow::scale<R>,
          longrow::shift<R>,
          glu_quake<V, Order, float>,
          {exp_quake<V, Order, uint16_t>, sigmoid_quake<V, Order, uint16_t>, silu_quake<V, Order, uint16_t>,
           gelu_quake<V, Order, uint16_t>, glu_quake<V, Order, uint16_t>}};
}

}  // namespace
}  // namespace quake
