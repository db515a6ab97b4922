// The per-ISA kernel table of com.quake. Kernels are plain functions over
// contiguous float arrays; the op layer (custom_ops/ops/) handles shapes,
// strides, float16 and threading. Every ISA file provides the same entries
// with the same semantics as kernels_scalar.cc, which is the readable
// definition (and the fallback).
//
// Shared contract of the exponential core (ops.md), per order k in {1,2,3}:
//   e^z for kExpUnderflow < z < kExpOverflow (-87.336555 < z < 88.72284: every
//   z whose e^z is a normal float) with max relative error 2.99e-2 / 1.73e-3 /
//   7.5e-5 (plus up to 3.6e-6 from rounding z * log2(e) for |z| ~ 80..88);
//   z <= kExpUnderflow (and -inf) -> +0 (e^z is subnormal there), z >= kExpOverflow
//   (and +inf) -> +inf (exactly where e^z rounds to inf in float), NaN -> NaN.
#pragma once

#include <cstddef>
#include <cstdint>

#include "attention.h"

namespace quake {

enum class Isa : int { kScalar = 0, kNeon = 1, kAvx2 = 2, kAvx512 = 3 };

using UnaryFn = void (*)(const float* x, float* y, size_t n);
// y = x * sigmoid(alpha * x); alpha > 0 (validated by the op layer).
using SiluFn = void (*)(const float* x, float* y, size_t n, float alpha);
// y = u * sigmoid(2 sqrt(2/pi) (u + 0.044715 u^3)), u = x + bias; bias is
// nullptr or n floats (one row of the last axis).
using GeluFn = void (*)(const float* x, const float* bias, float* y, size_t n);
// Gated activation of com.quake Glu: y = act(a) * b, one pass (a and b read
// once, y written once); y may alias a or b. kSilu: act(a) = a sigmoid(alpha a),
// alpha > 0 (validated by the op layer); kGelu: the tanh-form GELU of GeluFn
// (alpha unused).
enum class GluActivation : int { kSilu = 0, kGelu = 1 };
using GluFn = void (*)(const float* a, const float* b, float* y, size_t n, GluActivation act, float alpha);
// `rows` contiguous rows of length n >= 1 each (row r at x + r * n). x and y
// may alias. Kernels get many rows at once so they can overlap one row's
// horizontal reductions with the next row's work.
using RowsFn = void (*)(const float* x, float* y, size_t rows, size_t n);

// Softmax statistics of a row, or of a chunk of one, in base 2: the row's
// terms are 2^t_i with t_i = fl(x_i log2(e) - k) for one integer k, and
// sum = sum_i 2^t_i (softmax_long.h). Chunks combine exactly (powers of two),
// in any order, so one row can be split over threads.
struct RowStats {
  float max;   // the largest element, NaN skipped; -inf when there is none
  double k;    // the integer the terms are relative to: floor(fl(max log2(e)))
  double sum;  // sum of the terms; 0 when max is -inf
  bool nan;    // a NaN or +inf in the row: the result is a NaN row
};

// The stats of a row from those of two of its chunks (dispatch.cc: compiled
// without ISA flags, so no ISA-flagged copy can reach the op layer).
RowStats combine_stats(const RowStats& a, const RowStats& b);

// Rows whose max magnitude exceeds this cannot use the base-2 terms: beyond
// it fl(max log2(e)) has ulps of 1 or more, so k = floor of it could miss
// the max's own t = x log2(e) - k by thousands at |max| ~ 1e12 and the terms
// overflow (at 2^22, t of the max stays in (-0.25, 1.25)). The one-row
// kernels take such rows in base e; the op layer redoes them with those.
constexpr float kRowStatsLimit = 0x1p22f;

// Stats of x[0, n), read in blocks of `block` floats (each block twice, the
// second time from L1).
using RowStatsFn = void (*)(const float* x, size_t n, size_t block, RowStats* out);
// Softmax (or LogSoftmax) of x[0, n), a chunk of a row whose stats are `row`;
// x and y may alias.
using RowFinishFn = void (*)(const float* x, float* y, size_t n, size_t block, const RowStats& row);

// One long row cut over threads, without a second exponential
// (softmax_long.h): each chunk's max and the sum of e^(x - its max), the
// terms stored to y when y is not null (Softmax; LogSoftmax needs only the
// sum); then each chunk's y scaled by e^(its max - the row's) / the row's
// sum (Softmax), or y = (x - max) - log(sum) (LogSoftmax).
struct ChunkStats {
  float max;   // NaN skipped; -inf when the chunk holds no number
  double sum;  // of e^(x - max), the order's exponential
  bool nan;    // a NaN or +inf in the chunk
};
ChunkStats combine_chunks(const ChunkStats& a, const ChunkStats& b);  // dispatch.cc, as combine_stats
using ChunkPartialFn = void (*)(const float* x, float* y, size_t n, ChunkStats* out);
using ScaleFn = void (*)(float* y, size_t n, float c);                           // y *= c
using ShiftFn = void (*)(const float* x, float* y, size_t n, float a, float b);  // y = min((x - a) - b, 0)

// float16 twins of the elementwise kernels (x, b, y: float16 bit patterns;
// bias: float): each element is converted to float in registers, computed by
// the float kernel's own arithmetic and rounded once to nearest even, so the
// result is bit for bit f16_to_f32, the float kernel, f32_to_f16. Exp also
// takes float16's range (constants.h: +inf from x = 11.09375 on, at most
// 65504 below). A table without them has nullptr entries; the op layer then
// converts through float blocks, with the same results.
using HalfUnaryFn = void (*)(const uint16_t* x, uint16_t* y, size_t n);
using HalfSiluFn = void (*)(const uint16_t* x, uint16_t* y, size_t n, float alpha);
using HalfGeluFn = void (*)(const uint16_t* x, const float* bias, uint16_t* y, size_t n);
using HalfGluFn = void (*)(const uint16_t* a, const uint16_t* b, uint16_t* y, size_t n, GluActivation act, float alpha);
struct HalfKernels {
  HalfUnaryFn exp;
  HalfUnaryFn sigmoid;
  HalfSiluFn silu;
  HalfGeluFn gelu;
  HalfGluFn glu;
};

struct OrderKernels {
  UnaryFn exp;
  UnaryFn sigmoid;
  SiluFn silu;
  GeluFn gelu;
  RowsFn softmax;     // all -inf row -> 0; a NaN or +inf in the row -> NaN row
  RowsFn logsoftmax;  // all -inf row -> -inf; a NaN or +inf in the row -> NaN row; results <= 0
  // The same results in two passes over memory, for rows beyond the caches
  // and single rows split over threads (softmax_long.h).
  RowStatsFn softmax_stats;
  RowFinishFn softmax_finish;
  RowFinishFn logsoftmax_finish;
  OnlineSoftmaxFn online_softmax;  // one tile step of com.quake Attention (attention.h)
  // A long row over threads without a second exponential (ChunkStats).
  ChunkPartialFn softmax_partial;
  ScaleFn scale;
  ShiftFn shift;
  GluFn glu;         // com.quake Glu: act(a) * b in one pass
  HalfKernels half;  // float16 in registers; nullptr entries where the table has none
};

// EXAQ softmax (method "exaq", ops.md): bits in 2..8 and clip < 0 (a fixed
// C) or 0 (C from each row's standard deviation), validated by the op layer.
// The exponential core is not used, so there is no order.
struct ExaqParams {
  int bits;
  float clip;
};
// Rows as RowsFn; all -inf row -> 0, a NaN or +inf in the row -> NaN row,
// elements with x - max <= kExpUnderflow (-inf, float-lowest masks) -> 0.
using ExaqRowsFn = void (*)(const float* x, float* y, size_t rows, size_t n, const ExaqParams& p);

struct KernelTable {
  Isa isa;
  const char* name;
  OrderKernels order[3];  // index = order - 1
  void (*f16_to_f32)(const uint16_t* x, float* y, size_t n);
  void (*f32_to_f16)(const float* x, uint16_t* y, size_t n);  // round to nearest even
  ExaqRowsFn softmax_exaq;
  AttentionBlockFn attention_block;  // FlashAttention-2 task of com.quake Attention (attention.h)
  AttentionPackFn attention_pack;    // its key tiles packed once per call (attention.h)
};

// Tables of each ISA; nullptr where the build or the CPU lacks it.
const KernelTable* scalar_kernels();
const KernelTable* avx2_kernels();    // AVX2 + FMA + F16C
const KernelTable* avx512_kernels();  // AVX-512 F/BW/DQ/VL
const KernelTable* neon_kernels();    // aarch64 ASIMD

// The table of one ISA if this build and CPU have it, else nullptr. CPU
// features are read once per process.
const KernelTable* kernels_for(Isa isa);
// The best table at or below `at_most` that this CPU supports.
const KernelTable* best_kernels(Isa at_most);
// The table for a new kernel: the best this CPU has, lowered by the
// environment variable QUAKE_ISA=auto|scalar|neon|avx2|avx512 (a level the CPU
// lacks falls back to the best below it). QUAKE_F16=auto|float32|lanes:
// "lanes" gives the AVX-512 table the float16 lanes of AVX512-FP16
// (avx512fp16_half_kernels) where the CPU has them, and changes nothing
// elsewhere; "auto" gives it, op by op, whichever of the float16 and float32
// lanes faster_half_kernels measured faster on this CPU (once per process);
// "float32" keeps the float32 lanes. An unknown value of QUAKE_ISA, QUAKE_F16 or
// QUAKE_NEON_BF16 (attention_bf16_block) returns nullptr and sets *error.
// Read when a kernel is created, so a process can compare paths.
const KernelTable* select_kernels(const char** error);

// What computes float16 Exp, Sigmoid, Silu and Gelu with table `t`:
// "AVX512-FP16 lanes" (orders 1 and 2; order 3, Glu and Gelu with B in
// float32 lanes), under QUAKE_F16=auto "AVX512-FP16 lanes for <ops> at
// order <k>; ..., measured faster (QUAKE_F16=auto); float32 lanes, converted
// in registers, for the rest" or "float32 lanes, converted in registers
// (QUAKE_F16=auto: AVX512-FP16 lanes not measured 10 % faster)", "float32
// lanes, converted in registers" (the HalfKernels
// of the SIMD tables) or "float32, converted in blocks" (scalar); with
// QUAKE_F16=lanes where the lanes cannot run, the text adds why in brackets.
const char* float16_engine(const KernelTable* t);

// float16 lanes (half_lanes.h) for order 1 or 2 on AVX512-FP16: Exp, Sigmoid,
// Silu and Gelu (Glu nullptr); nullptr for other orders or when this build has
// no AVX512-FP16. Not checked against the CPU: select_kernels does that.
const HalfKernels* avx512fp16_half_kernels(int order);

// QUAKE_F16=auto's choice (half_lanes_choice.cc). kHalfLaneOpNames: Exp,
// Sigmoid, Silu, Gelu, the order of `picked`. half_lanes_measured_faster is
// its rule: the float16 lanes only when their best time is under 90 % of the
// float32 lanes' (noise near a tie keeps the float32 lanes, whose results
// every other CPU computes). faster_half_kernels times each op's two kernels
// alternately over 4096 halves in L1, best of seven, and returns
// float32_lanes with the entries the rule gave to fp16_lanes (Glu stays);
// picked[op] says which. Runs the kernels: call only where both can run.
extern const char* const kHalfLaneOpNames[4];
bool half_lanes_measured_faster(double lanes_ns, double float32_ns);
HalfKernels faster_half_kernels(const HalfKernels& float32_lanes, const HalfKernels& fp16_lanes, bool picked[4]);

// com.quake Attention's precision "bfloat16": the bf16 block for kernels of
// table `t` on this CPU, or nullptr when there is none (then the op runs t's
// float32 block). *engine names what runs: "AVX512-BF16" (the AVX-512 table
// on a CPU with AVX512-BF16; AMX CPUs have it too and use it until an AMX
// block exists), "NEON BFMMLA" (the NEON table on AArch64 Linux with
// FEAT_BF16), "NEON BFDOT" (the same with QUAKE_NEON_BF16=bfdot) or "float32
// fallback" (no bf16 dot product, a build without one, or a table lowered
// below it by QUAKE_ISA). QUAKE_NEON_BF16=auto|bfmmla|bfdot is read at each
// call, as QUAKE_ISA is.
AttentionBlockFn attention_bf16_block(const KernelTable* t, const char** engine);

}  // namespace quake
