// One order's kernels of a SIMD table (kernels.h's OrderKernels), from the
// ISA file's vector layer (elementwise.h's and simd_rows.h's V): every SIMD
// table lists the same kernels, so the list is written once here.
#pragma once

#include <cstdint>

#include "elementwise.h"
#include "kernels.h"
#include "simd_rows.h"
#include "softmax_long.h"
#include "softmax_rows.h"

namespace quake {
namespace {

template <class V, int Order>
constexpr OrderKernels simd_order_table() {
  using namespace elementwise;
  using R = simd_rows::SimdRowLayer<V>;
  return {exp_quake<V, Order, float>,
          sigmoid_quake<V, Order, float>,
          silu_quake<V, Order, float>,
          gelu_quake<V, Order, float>,
          rows::softmax<R, Order, false>,
          rows::softmax<R, Order, true>,
          longrow::stats<R, Order>,
          longrow::softmax_finish<R, Order>,
          longrow::logsoftmax_finish<R>,
          simd_rows::online_softmax<V, Order>,
          longrow::partial<R, Order>,
          longrow::scale<R>,
          longrow::shift<R>,
          glu_quake<V, Order, float>,
          {exp_quake<V, Order, uint16_t>, sigmoid_quake<V, Order, uint16_t>, silu_quake<V, Order, uint16_t>,
           gelu_quake<V, Order, uint16_t>, glu_quake<V, Order, uint16_t>}};
}

}  // namespace
}  // namespace quake
