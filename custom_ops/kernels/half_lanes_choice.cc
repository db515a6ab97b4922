// QUAKE_F16=auto on a CPU with AVX512-FP16: which of two correct float16
// paths runs each op is measured on the user's CPU, once per process, not
// fixed by a rule. The float16 lanes (kernels_avx512fp16.cc, 32 per zmm) do
// not simply halve the work of the float32 lanes (16 per zmm plus two
// conversions): their float16 algorithm needs a two-constant range reduction,
// a cubic instead of a quadratic and a Newton step after the division to stay
// within the float16 bounds. llvm-mca 19's Sapphire Rapids model puts them at
// 1.18-1.35x the float32 lanes for Exp and 0.84-0.97x for Sigmoid, Silu and
// Gelu (BENCHMARKS.md, "AVX512-FP16 lanes"): close enough to a tie, and
// unmeasured on real hardware, that only a measurement can choose.
//
// The timing: each op's two kernels alternate over one block of 4096 halves
// spread over [-10, 10] (8 KB in and out, in L1: beyond L2 both paths move
// the same bytes, so the in-cache speed is what differs), the best of seven
// rounds each, when the first session of the process creates its kernels:
// 0.42 ms on a Zen 4 timing two of its own tables (`test_kernels half-lanes`).
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

#include "f16_scalar.h"
#include "kernels.h"

namespace quake {
namespace {

constexpr size_t kBlock = 4096;
constexpr int kRounds = 7;
constexpr int kCallsPerRound = 4;

// Runs op `op` (0 Exp, 1 Sigmoid, 2 Silu, 3 Gelu; the order of
// kHalfLaneOpNames) of table `h` over the block.
void run_op(const HalfKernels& h, int op, const uint16_t* x, uint16_t* y) {
  switch (op) {
    case 0:
      return h.exp(x, y, kBlock);
    case 1:
      return h.sigmoid(x, y, kBlock);
    case 2:
      return h.silu(x, y, kBlock, 1.0f);
    default:
      return h.gelu(x, nullptr, y, kBlock);
  }
}

double best_ns(const HalfKernels& h, int op, const uint16_t* x, uint16_t* y, double best) {
  const auto start = std::chrono::steady_clock::now();
  for (int c = 0; c < kCallsPerRound; ++c) run_op(h, op, x, y);
  const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
  return std::min(best, took.count());
}

}  // namespace

const char* const kHalfLaneOpNames[4] = {"Exp", "Sigmoid", "Silu", "Gelu"};

bool half_lanes_measured_faster(double lanes_ns, double float32_ns) { return lanes_ns < 0.9 * float32_ns; }

HalfKernels faster_half_kernels(const HalfKernels& float32_lanes, const HalfKernels& fp16_lanes, bool picked[4]) {
  std::vector<uint16_t> x(kBlock), y(kBlock);
  for (size_t i = 0; i < kBlock; ++i) x[i] = scalar::float_to_half(-10.0f + 20.0f * static_cast<float>(i) / kBlock);
  HalfKernels out = float32_lanes;
  for (int op = 0; op < 4; ++op) {
    run_op(float32_lanes, op, x.data(), y.data());  // warm caches and the branch predictor
    run_op(fp16_lanes, op, x.data(), y.data());
    double f32 = 1e300, lanes = 1e300;
    for (int round = 0; round < kRounds; ++round) {
      // Alternate which runs first, so neither always follows the other's warm-up.
      if (round % 2 == 0) {
        f32 = best_ns(float32_lanes, op, x.data(), y.data(), f32);
        lanes = best_ns(fp16_lanes, op, x.data(), y.data(), lanes);
      } else {
        lanes = best_ns(fp16_lanes, op, x.data(), y.data(), lanes);
        f32 = best_ns(float32_lanes, op, x.data(), y.data(), f32);
      }
    }
    picked[op] = half_lanes_measured_faster(lanes, f32);
  }
  if (picked[0]) out.exp = fp16_lanes.exp;
  if (picked[1]) out.sigmoid = fp16_lanes.sigmoid;
  if (picked[2]) out.silu = fp16_lanes.silu;
  if (picked[3]) out.gelu = fp16_lanes.gelu;
  return out;
}

}  // namespace quake
