// Standalone test of every kernel table this machine can run (kernels_for):
// each order 1..3 and entry against a long-double reference of ops.md, the
// special values of kernels.h, tails, guards, alignment, row edge cases,
// float16 conversions, and agreement of each SIMD table with the scalar one.
// No framework: prints failures, a summary of measured errors, and
// "N passed, M failed"; exits non-zero on any failure.
#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define QUAKE_TEST_MMAP 1
#endif

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "constants.h"
#include "cpu_caches.h"
#include "exaq_scalar.h"
#include "f16_scalar.h"
#include "half_lanes.h"
#include "kernels.h"

namespace {

using namespace quake;

// ---------------------------------------------------------------------------
// Error bounds, index = order - 1. From ops.md: the order table for Exp, the
// order-2 budgets of a replaced node, order 1 ~15x looser, order 3 ~20x
// tighter. LogSoftmax is off by log(1 +- exp error).
// ---------------------------------------------------------------------------
constexpr double kExpRel[3] = {3.1e-2, 2.0e-3, 1.0e-4};         // relative, kExpUnderflow < z < kExpOverflow
constexpr double kSigmoidAbs[3] = {1.5e-2, 1.0e-3, 5.0e-5};     // absolute
constexpr double kSiluAbs[3] = {1.5e-2, 1.0e-3, 5.0e-5};        // absolute, times max(1, 1/alpha) (+ kRoundRel * |y|)
constexpr double kGeluAbs[3] = {3.0e-2, 2.0e-3, 1.0e-4};        // absolute vs the tanh form (+ kRoundRel * |y|)
constexpr double kSoftmaxAbs[3] = {3.0e-2, 2.0e-3, 1.0e-4};     // absolute per element
constexpr double kRowSumAbs = 1.0e-5;                           // |sum(softmax row) - 1|
constexpr double kLogSoftmaxAbs[3] = {3.2e-2, 2.0e-3, 1.0e-4};  // absolute (+ kRoundRel * |y|)
constexpr double kRoundRel = 1.0e-6;                            // float rounding of results that grow with x (y ~ x)
// SIMD vs scalar: same algorithm; differences only from rcp + Newton (~2 ulp),
// VREDUCEPS rounding of t - floor(t) (1 ulp of f) and summation order.
constexpr double kAgreeRel = 1.0e-6;
constexpr double kAgreeAbs = 1.0e-30;  // results near 0 (sigmoid(-87) ~ 1.6e-38)
// Rows: a float sum of n terms in another order may differ by up to
// 2 (n - 1) 2^-24 relative (recursive summation bound, Higham's gamma_{n-1}).
double agree_row_sum(size_t n) { return 2.0 * static_cast<double>(n - 1) * 0x1p-24; }

constexpr float kInf = std::numeric_limits<float>::infinity();
// Reals from here on round to +inf in float: FLT_MAX + half an ulp.
const long double kFloatOverflow = static_cast<long double>(FLT_MAX) + std::ldexp(1.0L, 103);
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kSilAlphas[] = {1.0f, 1.702f, 0.37f, 4.0f};
constexpr uint32_t kGuardBits = 0x7fb1f00du;  // a signalling NaN no kernel produces

int g_passed = 0, g_failed = 0;

// QUAKE_TEST_QUICK=1 (the AArch64 run under qemu, where every case costs ~50x):
// a tenth of the dense inputs and rows of at most 5000, every check the same.
const bool g_quick = [] {
  const char* v = std::getenv("QUAKE_TEST_QUICK");
  return v != nullptr && std::strcmp(v, "1") == 0;
}();
int dense_count(int full) { return g_quick ? full / 10 : full; }
std::map<std::string, double> g_max_err;  // "table op order" -> measured max error

void note_err(const std::string& key, double err) {
  double& m = g_max_err[key];
  if (err > m) m = err;
}

uint32_t bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
bool same(float a, float b) { return (std::isnan(a) && std::isnan(b)) || bits(a) == bits(b); }

// One named test case: passes if no check failed; prints the first failures.
class Case {
 public:
  explicit Case(std::string name) : name_(std::move(name)) {}
  ~Case() {
    if (bad_ == 0) {
      ++g_passed;
    } else {
      ++g_failed;
      std::printf("FAIL %s: %d bad\n", name_.c_str(), bad_);
    }
  }
  bool check(bool ok, const char* fmt, ...) __attribute__((format(printf, 3, 4))) {
    if (ok) return true;
    if (bad_++ < 4) {
      std::printf("  [%s] ", name_.c_str());
      va_list ap;
      va_start(ap, fmt);
      std::vprintf(fmt, ap);
      va_end(ap);
      std::printf("\n");
    }
    return false;
  }

 private:
  std::string name_;
  int bad_ = 0;
};

// ------------------------------ references --------------------------------
using LD = long double;
const LD kK1 = 2.0L * std::sqrt(2.0L / 3.14159265358979323846264338327950288L);

LD ref_sigmoid(LD v) { return 1.0L / (1.0L + std::exp(-v)); }
LD ref_silu(LD x, LD a) { return std::isinf(x) ? (x > 0 ? x : -0.0L) : x * ref_sigmoid(a * x); }
LD ref_gelu(LD u) { return std::isinf(u) ? (u > 0 ? u : -0.0L) : u * ref_sigmoid(kK1 * (u + 0.044715L * u * u * u)); }

enum Op { kExp, kSigmoid, kSilu, kGelu, kGeluBias, kNumElementwise };
const char* const kOpNames[] = {"exp", "sigmoid", "silu", "gelu", "gelu+bias"};

void run_elementwise(const KernelTable* t, int order, Op op, const float* x, const float* bias, float* y, size_t n,
                     float alpha) {
  const OrderKernels& k = t->order[order - 1];
  switch (op) {
    case kExp:
      return k.exp(x, y, n);
    case kSigmoid:
      return k.sigmoid(x, y, n);
    case kSilu:
      return k.silu(x, y, n, alpha);
    case kGelu:
      return k.gelu(x, nullptr, y, n);
    case kGeluBias:
      return k.gelu(x, bias, y, n);
    default:
      return;
  }
}

// Checks one elementwise result against the contract; returns the error.
bool check_elementwise(Case& c, Op op, int order, float x, float b, float alpha, float got, double* err) {
  *err = 0;
  if (op == kExp) {
    // The float64 truth decides, not the kernels' constants: +inf exactly where
    // e^x rounds to inf in float, the order's relative error wherever e^x is
    // a normal float, and below FLT_MIN (a subnormal truth) +0 or that error.
    if (std::isnan(x)) return c.check(std::isnan(got), "exp(NaN) = %a", got);
    const LD ref = std::exp(static_cast<LD>(x));
    if (ref >= kFloatOverflow) return c.check(got == kInf, "exp(%a) = %a, want +inf", x, got);
    *err = ref == 0 ? 0.0 : static_cast<double>(std::fabs((got - ref) / ref));
    if (ref < static_cast<LD>(FLT_MIN) && bits(got) == 0) {
      *err = 0;
      return true;
    }
    return c.check(std::isfinite(got) && *err <= kExpRel[order - 1], "order %d exp(%a) = %a, ref %Lg, rel err %g",
                   order, x, got, ref, *err);
  }
  const float u = op == kGeluBias ? x + b : x;
  if (std::isnan(u)) return c.check(std::isnan(got), "%s(NaN) = %a", kOpNames[op], got);
  LD ref;
  double bound;
  switch (op) {
    case kSigmoid:
      ref = ref_sigmoid(x);
      bound = kSigmoidAbs[order - 1];
      // A normal result far out on the left tail (~e^x) keeps the exponential's relative error.
      if (x < -8.0f && ref >= static_cast<LD>(FLT_MIN)) {
        const double rel = static_cast<double>(std::fabs((got - ref) / ref));
        if (!c.check(rel <= kExpRel[order - 1], "order %d sigmoid(%a) = %a, ref %Lg, rel err %g", order, x, got, ref,
                     rel)) {
          return false;
        }
      }
      break;
    case kSilu:  // |d silu| <= 0.224 * exp error / alpha
      ref = ref_silu(x, alpha);
      bound = kSiluAbs[order - 1] * (alpha < 1.0f ? 1.0 / alpha : 1.0);
      break;
    default:
      ref = ref_gelu(u);
      bound = kGeluAbs[order - 1];
      break;
  }
  const float ref_f = static_cast<float>(ref);
  if (std::isinf(ref_f)) return c.check(got == ref_f, "%s(%a) = %a, want %a", kOpNames[op], u, got, ref_f);
  *err = static_cast<double>(std::fabs(got - ref));
  const double slack = op == kSigmoid ? 0.0 : kRoundRel * static_cast<double>(std::fabs(ref));
  return c.check(std::isfinite(got) && *err <= bound + slack, "order %d %s(%a, alpha %g) = %a, ref %.9Lg, err %g",
                 order, kOpNames[op], u, alpha, got, ref, *err);
}

// The AVX-512 core takes t = fl(z log2e) without kExpTBias (kernels_avx512.cc):
// for z in (-2^-110.5, 0) its e^z is p(1) / 2 where the scalar's is p(0),
// both within the contract, which is checked for every table apart.
bool core_without_bias(const KernelTable* t, float z) { return t->isa == Isa::kAvx512 && std::fabs(z) < 0x1p-110f; }

// ------------------------------ input sets ---------------------------------
std::vector<float> special_values() {
  std::vector<float> v = {kNaN,
                          -kNaN,
                          from_bits(0x7f800001u),
                          kInf,
                          -kInf,
                          0.0f,
                          -0.0f,
                          FLT_MAX,
                          -FLT_MAX,
                          FLT_MIN,
                          -FLT_MIN,
                          from_bits(1),
                          from_bits(0x80000001u),
                          1e-40f,
                          -1e-40f,
                          1.0f,
                          -1.0f,
                          -87.3f,
                          -87.306f,
                          -87.33655f,
                          -87.336555f,
                          88.7f,
                          88.72283f,
                          88.72284f,
                          -87.0f,
                          87.0f,
                          -88.0f,
                          88.0f,
                          -88.72283f,
                          -88.72284f,
                          87.33655f,
                          87.336555f,
                          -100.0f,
                          100.0f,
                          -12.0f,
                          12.0f,
                          -13.0f,
                          1e30f,
                          -1e30f,
                          51.1f,
                          -51.1f};
  // Every float within 300 ulp of the range ends of the exponential (and of
  // their negatives, where sigmoid-based ops meet them), and across order 1's
  // low window (-87.3366, -87.306), where Schraudolph's bits fall below FLT_MIN's.
  for (float end : {-87.336555f, 88.72284f, -88.72284f, 87.336555f, -87.306f}) {
    float a = end, b = end;
    for (int i = 0; i < 300; ++i) {
      v.push_back(a = std::nextafter(a, -kInf));
      v.push_back(b = std::nextafter(b, kInf));
    }
  }
  for (float z = -87.34f; z < -87.30f; z += 1e-4f) v.push_back(z);
  return v;
}

// Every exponent field of both signs, several mantissas each, plus specials.
std::vector<float> band_inputs(std::mt19937& rng) {
  std::vector<float> v = special_values();
  for (uint32_t sign = 0; sign < 2; ++sign) {
    for (uint32_t e = 0; e < 255; ++e) {
      const uint32_t r0 = static_cast<uint32_t>(rng()), r1 = static_cast<uint32_t>(rng()),
                     r2 = static_cast<uint32_t>(rng());
      const uint32_t mants[] = {0u, 0x7fffffu, 0x400000u, r0 & 0x7fffffu, r1 & 0x7fffffu, r2 & 0x7fffffu};
      for (uint32_t m : mants) v.push_back(from_bits((sign << 31) | (e << 23) | m));
    }
  }
  return v;
}

std::vector<float> dense_inputs(Op op, std::mt19937& rng) {
  std::vector<float> v;
  auto uni = [&](float lo, float hi, int count) {
    std::uniform_real_distribution<float> d(lo, hi);
    for (int i = 0; i < count; ++i) v.push_back(d(rng));
  };
  if (op == kExp) {
    uni(-87.34f, 88.73f, dense_count(150000));
    uni(-2.0f, 2.0f, 50000);
  } else {
    uni(-40.0f, 40.0f, dense_count(60000));
    uni(-4.0f, 4.0f, dense_count(100000));
  }
  return v;
}

std::string key(const KernelTable* t, const char* op, int order) {
  return std::string(t->name) + " " + op + " " + std::to_string(order);
}

// ------------------------- elementwise accuracy ----------------------------
void test_elementwise_accuracy(const KernelTable* t, const KernelTable* scalar, std::mt19937& rng) {
  const std::vector<float> bands = band_inputs(rng);
  for (int op_i = 0; op_i < kNumElementwise; ++op_i) {
    const Op op = static_cast<Op>(op_i);
    std::vector<float> x = bands;
    const std::vector<float> dense = dense_inputs(op, rng);
    x.insert(x.end(), dense.begin(), dense.end());
    const size_t n = x.size();
    std::vector<float> bias(n);
    std::uniform_real_distribution<float> bd(-3.0f, 3.0f);
    for (float& b : bias) b = bd(rng);
    const size_t n_alpha = op == kSilu ? sizeof kSilAlphas / sizeof kSilAlphas[0] : 1;
    for (size_t ai = 0; ai < n_alpha; ++ai) {
      const float alpha = kSilAlphas[ai];
      for (int order = 1; order <= 3; ++order) {
        std::vector<float> y(n), ys(n);
        run_elementwise(t, order, op, x.data(), bias.data(), y.data(), n, alpha);
        char name[128];
        std::snprintf(name, sizeof name, "%s order %d %s alpha %g: contract", t->name, order, kOpNames[op], alpha);
        {
          Case c(name);
          for (size_t i = 0; i < n; ++i) {
            double err;
            if (check_elementwise(c, op, order, x[i], bias[i], alpha, y[i], &err))
              note_err(key(t, kOpNames[op], order), err);
          }
        }
        if (t == scalar) continue;
        run_elementwise(scalar, order, op, x.data(), bias.data(), ys.data(), n, alpha);
        std::snprintf(name, sizeof name, "%s order %d %s alpha %g: agrees with scalar", t->name, order, kOpNames[op],
                      alpha);
        Case c(name);
        for (size_t i = 0; i < n; ++i) {
          bool ok;
          if (std::isnan(ys[i]) || std::isnan(y[i]) || std::isinf(ys[i])) {
            ok = same(y[i], ys[i]);
          } else {
            const double d = std::fabs(static_cast<double>(y[i]) - ys[i]);
            ok = d <= kAgreeRel * std::fabs(ys[i]) + kAgreeAbs;
            if (ok && ys[i] != 0) note_err(key(t, "agree-rel", order), d / std::fabs(ys[i]));
          }
          c.check(ok || core_without_bias(t, x[i]), "x = %a: %a vs scalar %a", x[i], y[i], ys[i]);
        }
      }
    }
  }
}

// Subnormal and zero inputs give Exp and Sigmoid exactly their result at 0:
// the core's t = fl(z log2e + kExpTBias) stays a normal float (constants.h),
// so p(t) rounds to p(0), whatever the vector length (not AVX-512's core:
// core_without_bias).
void test_subnormal_inputs(const KernelTable* t) {
  if (t->isa == Isa::kAvx512) return;
  const float tiny[] = {0.0f,
                        -0.0f,
                        from_bits(1),
                        from_bits(0x80000001u),
                        1e-40f,
                        -1e-40f,
                        from_bits(0x007fffffu),
                        from_bits(0x807fffffu),
                        1e-45f,
                        -3e-39f,
                        5e-39f};
  const size_t n = sizeof tiny / sizeof tiny[0];
  std::vector<float> x;
  for (int copy = 0; copy < 4; ++copy) x.insert(x.end(), tiny, tiny + n);  // whole vectors and a tail
  for (Op op : {kExp, kSigmoid}) {
    for (int order = 1; order <= 3; ++order) {
      const float zero = 0.0f;
      float at_zero;
      run_elementwise(t, order, op, &zero, &zero, &at_zero, 1, 1.0f);
      std::vector<float> y(x.size()), bias(x.size(), 0.0f);
      run_elementwise(t, order, op, x.data(), bias.data(), y.data(), x.size(), 1.0f);
      char name[128];
      std::snprintf(name, sizeof name, "%s order %d %s: subnormal inputs give the result at 0", t->name, order,
                    kOpNames[op]);
      Case c(name);
      for (size_t i = 0; i < x.size(); ++i) c.check(same(y[i], at_zero), "x = %a: %a, at 0 %a", x[i], y[i], at_zero);
    }
  }
}

// --------------------- tails, guards, alignment, aliasing -------------------
constexpr size_t kMaxLen = 67;
constexpr size_t kGuard = 16;
constexpr size_t kOffsets[] = {0, 1, 2, 3, 5, 15};

struct Guarded {
  std::vector<float> buf;
  explicit Guarded(size_t n) : buf(n + 2 * kGuard + 32, from_bits(kGuardBits)) {}
  float* at(size_t off) { return buf.data() + kGuard + off; }
  bool guards_ok(size_t off, size_t n) const {
    for (size_t i = 0; i < buf.size(); ++i) {
      const bool inside = i >= kGuard + off && i < kGuard + off + n;
      if (!inside && bits(buf[i]) != kGuardBits) return false;
    }
    return true;
  }
};

std::vector<float> mixed_row(std::mt19937& rng, size_t n, bool specials) {
  std::normal_distribution<float> d(0.0f, 4.0f);
  std::vector<float> v(n);
  for (float& f : v) f = d(rng);
  if (specials) {
    const std::vector<float> s = special_values();
    for (size_t i = 0; i < n; i += 3) v[i] = s[(i / 3) % s.size()];
  }
  return v;
}

void test_tails(const KernelTable* t, std::mt19937& rng) {
  // Elementwise: an element gives the same bits wherever it lands (body or
  // tail), nothing outside [0, n) is written, any alignment works.
  const size_t kBody = 128;
  const std::vector<float> base = mixed_row(rng, kBody, true);
  std::vector<float> bias = mixed_row(rng, kBody, false);
  for (int order = 1; order <= 3; ++order) {
    for (int op_i = 0; op_i < kNumElementwise; ++op_i) {
      const Op op = static_cast<Op>(op_i);
      std::vector<float> full(kBody);
      run_elementwise(t, order, op, base.data(), bias.data(), full.data(), kBody, 1.702f);
      char name[128];
      std::snprintf(name, sizeof name, "%s order %d %s: lengths 1..%zu, offsets, guards, in place", t->name, order,
                    kOpNames[op], kMaxLen);
      Case c(name);
      for (size_t n = 1; n <= kMaxLen; ++n) {
        for (size_t off : kOffsets) {
          Guarded xb(n), yb(n), bb(n);
          std::memcpy(xb.at(off), base.data(), n * 4);
          std::memcpy(bb.at(off), bias.data(), n * 4);
          run_elementwise(t, order, op, xb.at(off), bb.at(off), yb.at(off), n, 1.702f);
          c.check(yb.guards_ok(off, n), "n %zu off %zu: wrote outside y", n, off);
          for (size_t i = 0; i < n; ++i) {
            c.check(same(yb.at(off)[i], full[i]), "n %zu off %zu i %zu: %a, body gives %a", n, off, i, yb.at(off)[i],
                    full[i]);
          }
          run_elementwise(t, order, op, xb.at(off), bb.at(off), xb.at(off), n, 1.702f);  // x == y
          c.check(xb.guards_ok(off, n), "n %zu off %zu: in place wrote outside", n, off);
          for (size_t i = 0; i < n; ++i) {
            c.check(same(xb.at(off)[i], full[i]), "in place n %zu off %zu i %zu: %a vs %a", n, off, i, xb.at(off)[i],
                    full[i]);
          }
        }
      }
    }
  }
}

// ------------------------------ softmax rows -------------------------------
enum RowOp { kSoftmax, kLogSoftmax };

void run_row(const KernelTable* t, int order, RowOp op, const float* x, float* y, size_t n) {
  if (op == kSoftmax) {
    t->order[order - 1].softmax(x, y, 1, n);
  } else {
    t->order[order - 1].logsoftmax(x, y, 1, n);
  }
}

// Checks one row against the long-double reference of ops.md.
void check_row(Case& c, const KernelTable* t, int order, RowOp op, const float* x, const float* y, size_t n) {
  bool has_nan = false, has_pinf = false;
  LD m = -INFINITY;
  for (size_t i = 0; i < n; ++i) {
    has_nan |= std::isnan(x[i]);
    has_pinf |= x[i] == kInf;
    if (x[i] > m) m = x[i];
  }
  if (has_nan || has_pinf) {
    for (size_t i = 0; i < n; ++i) c.check(std::isnan(y[i]), "n %zu: NaN/+inf row gives y[%zu] = %a", n, i, y[i]);
    return;
  }
  if (m == -INFINITY) {
    for (size_t i = 0; i < n; ++i) {
      if (op == kSoftmax) {
        c.check(bits(y[i]) == 0, "n %zu: all -inf row gives y[%zu] = %a, want +0", n, i, y[i]);
      } else {
        c.check(y[i] == -kInf, "n %zu: all -inf row gives y[%zu] = %a, want -inf", n, i, y[i]);
      }
    }
    return;
  }
  std::vector<LD> e(n);  // each exponential once (long double is slow where it is software binary128)
  LD s = 0;
  for (size_t i = 0; i < n; ++i) s += e[i] = std::exp(static_cast<LD>(x[i]) - m);
  const LD log_s = std::log(s);
  double row_sum = 0;
  const char* opname = op == kSoftmax ? "softmax" : "logsoftmax";
  for (size_t i = 0; i < n; ++i) {
    if (op == kSoftmax) {
      const LD ref = e[i] / s;
      const double err = static_cast<double>(std::fabs(y[i] - ref));
      note_err(key(t, opname, order), err);
      c.check(err <= kSoftmaxAbs[order - 1] && y[i] >= 0, "order %d n %zu i %zu x %a: %a, ref %.9Lg", order, n, i, x[i],
              y[i], ref);
      row_sum += y[i];
    } else {
      const LD ref_ld = (static_cast<LD>(x[i]) - m) - log_s;
      const float ref = static_cast<float>(ref_ld);  // -FLT_MAX - FLT_MAX overflows to -inf in float too
      if (std::isinf(ref)) {
        c.check(y[i] == ref, "order %d n %zu i %zu: %a, want %a", order, n, i, y[i], ref);
        continue;
      }
      const double err = static_cast<double>(std::fabs(y[i] - ref_ld));
      note_err(key(t, opname, order), err);
      c.check(err <= kLogSoftmaxAbs[order - 1] + kRoundRel * std::fabs(ref), "order %d n %zu i %zu x %a: %a, ref %.9Lg",
              order, n, i, x[i], y[i], ref_ld);
    }
  }
  if (op == kSoftmax) {
    note_err(key(t, "softmax-rowsum", order), std::fabs(row_sum - 1.0));
    c.check(std::fabs(row_sum - 1.0) <= kRowSumAbs, "order %d n %zu: row sums to 1 %+g", order, n, row_sum - 1.0);
  }
}

std::vector<std::vector<float>> row_cases(std::mt19937& rng) {
  std::vector<std::vector<float>> rows;
  const size_t lens[] = {1, 2, 3, 7, 15, 16, 17, 31, 33, 64, 65, 67, 100, 1000, 4099, 50257};
  std::bernoulli_distribution half(0.5);
  for (size_t n : lens) {
    if (g_quick && n > 5000) continue;
    for (float scale : {1.0f, 10.0f, 60.0f}) {
      std::normal_distribution<float> d(0.0f, scale);
      std::vector<float> r(n);
      for (float& f : r) f = d(rng);
      rows.push_back(r);
      std::vector<float> masked = r, lowest = r;  // attention masks
      for (size_t i = 0; i + 1 < n; ++i) {
        if (half(rng)) {
          masked[i] = -kInf;
          lowest[i] = -FLT_MAX;
        }
      }
      rows.push_back(masked);
      rows.push_back(lowest);
    }
    rows.push_back(std::vector<float>(n, -kInf));     // fully masked
    rows.push_back(std::vector<float>(n, -FLT_MAX));  // fully masked with lowest: uniform
    rows.push_back(std::vector<float>(n, 0.0f));
    for (size_t pos : {size_t{0}, n / 2, n - 1}) {
      std::vector<float> r = rows[rows.size() - 5];
      r[pos] = kNaN;
      rows.push_back(r);
      r[pos] = kInf;
      rows.push_back(r);
      std::vector<float> m(n, -kInf);
      m[pos] = kNaN;  // NaN in an otherwise fully masked row
      rows.push_back(m);
      m[pos] = -FLT_MAX;  // one live element
      rows.push_back(m);
      std::vector<float> big = rows[rows.size() - 9];
      big[pos] = FLT_MAX;
      big[n - 1 - pos] = -FLT_MAX;
      rows.push_back(big);
      std::vector<float> near = big;  // close to the underflow edge
      for (size_t i = 0; i < n; ++i) near[i] = -87.0f - 0.01f * static_cast<float>(i % 100);
      near[pos] = 0.0f;
      rows.push_back(near);
    }
    // Left padding: the first quarter far below the rest, as masks of -1e4
    // or -inf give, and heads 40 and 55 below the rest's max: a row's terms
    // against its head's k or its max's (softmax_rows.h, kHeadSpan).
    for (float pad : {-1e4f, -kInf, -30.0f, -45.0f}) {
      std::normal_distribution<float> d(0.0f, 3.0f);
      std::vector<float> r(n);
      for (size_t i = 0; i < n; ++i) r[i] = i < n / 4 ? pad : d(rng);
      rows.push_back(r);
    }
  }
  return rows;
}

// Many rows in one call (as the op layer calls it) give each row exactly what a
// one-row call gives, whatever its neighbours hold (masked, NaN, +inf rows).
void test_row_batches(const KernelTable* t, std::mt19937& rng) {
  for (int order = 1; order <= 3; ++order) {
    for (RowOp op : {kSoftmax, kLogSoftmax}) {
      char name[160];
      std::snprintf(name, sizeof name, "%s order %d %s: row batches equal single rows, in place too", t->name, order,
                    op == kSoftmax ? "softmax" : "logsoftmax");
      Case c(name);
      // 70000: in place beyond softmax_rows.h's kHeadBuffer.
      for (size_t n : {1, 2, 7, 16, 17, 31, 64, 65, 128, 333, 400, 1024, 5000, 70000}) {
        const size_t rows = n >= 1024 ? 6 : 37;
        std::vector<float> x(rows * n);
        for (size_t r = 0; r < rows; ++r) {
          std::vector<float> row = mixed_row(rng, n, false);
          switch (r % 6) {
            case 1:
              std::fill(row.begin(), row.end(), -kInf);
              break;  // fully masked
            case 2:
              row[(r * 7) % n] = kNaN;
              break;
            case 3:
              row[(r * 5) % n] = kInf;
              break;
            case 4:
              for (size_t i = 0; i < n; i += 2) row[i] = -FLT_MAX;
              break;  // float-lowest mask
            case 5:
              for (size_t i = 0; i < n * 3 / 4; ++i) row[i] = -1e4f;
              break;  // left padding: a head far below the max (softmax_rows.h)
            default:
              break;
          }
          std::copy(row.begin(), row.end(), x.begin() + r * n);
        }
        std::vector<float> batch(rows * n), single(rows * n), inplace = x;
        const RowsFn fn = op == kSoftmax ? t->order[order - 1].softmax : t->order[order - 1].logsoftmax;
        fn(x.data(), batch.data(), rows, n);
        for (size_t r = 0; r < rows; ++r) fn(x.data() + r * n, single.data() + r * n, 1, n);
        fn(inplace.data(), inplace.data(), rows, n);  // ORT may hand a node its input as output
        for (size_t i = 0; i < rows * n; ++i) {
          c.check(same(batch[i], single[i]), "n %zu row %zu i %zu: %a vs %a", n, i / n, i % n, batch[i], single[i]);
          c.check(same(inplace[i], batch[i]), "in place n %zu row %zu i %zu: %a vs %a", n, i / n, i % n, inplace[i],
                  batch[i]);
        }
      }
    }
  }
}

// A row whose head is just within kRowStatsLimit and whose max is just
// beyond it (t of the max ~26 against the head's k, so head_first accepts the
// head's k while three_passes takes the max's base-e terms): it must give the
// same bits alone, after a row that sends the call to three passes (left
// padding), and in place beyond kHeadBuffer (softmax_rows.h).
void test_row_stats_limit_edge(const KernelTable* t) {
  for (int order = 1; order <= 3; ++order) {
    for (RowOp op : {kSoftmax, kLogSoftmax}) {
      char name[160];
      std::snprintf(name, sizeof name, "%s order %d %s: max beyond kRowStatsLimit, head within it", t->name, order,
                    op == kSoftmax ? "softmax" : "logsoftmax");
      Case c(name);
      for (size_t n : {400, 70000}) {
        std::vector<float> row(n);
        for (size_t i = 0; i < n; ++i) row[i] = kRowStatsLimit - 10.0f - 0.5f * static_cast<float>(i % 7);
        row[n / 2] = kRowStatsLimit + 8.0f;
        std::vector<float> x(2 * n, 1.0f);
        for (size_t i = 0; i < n / 4; ++i) x[i] = -1e4f;  // row 0: left padding
        std::copy(row.begin(), row.end(), x.begin() + n);
        const RowsFn fn = op == kSoftmax ? t->order[order - 1].softmax : t->order[order - 1].logsoftmax;
        std::vector<float> single(n), batch(2 * n), inplace = row;
        fn(row.data(), single.data(), 1, n);
        fn(x.data(), batch.data(), 2, n);
        fn(inplace.data(), inplace.data(), 1, n);
        for (size_t i = 0; i < n; ++i) {
          c.check(same(batch[n + i], single[i]), "n %zu i %zu: batched %a vs single %a", n, i, batch[n + i], single[i]);
          c.check(same(inplace[i], single[i]), "n %zu i %zu: in place %a vs single %a", n, i, inplace[i], single[i]);
        }
      }
    }
  }
}

void test_rows(const KernelTable* t, const KernelTable* scalar, std::mt19937& rng) {
  const std::vector<std::vector<float>> rows = row_cases(rng);
  for (int order = 1; order <= 3; ++order) {
    for (RowOp op : {kSoftmax, kLogSoftmax}) {
      const char* opname = op == kSoftmax ? "softmax" : "logsoftmax";
      char name[160];
      std::snprintf(name, sizeof name, "%s order %d %s: %zu rows vs reference, in place, scalar", t->name, order,
                    opname, rows.size());
      Case c(name);
      for (const std::vector<float>& x : rows) {
        const size_t n = x.size();
        std::vector<float> y(n), ys(n), inplace = x;
        run_row(t, order, op, x.data(), y.data(), n);
        check_row(c, t, order, op, x.data(), y.data(), n);
        run_row(t, order, op, inplace.data(), inplace.data(), n);
        for (size_t i = 0; i < n; ++i)
          c.check(same(inplace[i], y[i]), "in place n %zu i %zu: %a vs %a", n, i, inplace[i], y[i]);
        if (t == scalar) continue;
        run_row(scalar, order, op, x.data(), ys.data(), n);
        for (size_t i = 0; i < n; ++i) {
          bool ok;
          if (!std::isfinite(ys[i]) || !std::isfinite(y[i])) {
            ok = same(y[i], ys[i]);
          } else {
            const double d = std::fabs(static_cast<double>(y[i]) - ys[i]);
            ok = op == kSoftmax ? d <= (kAgreeRel + agree_row_sum(n)) * std::fabs(ys[i]) + kAgreeAbs
                                : d <= agree_row_sum(n) + kAgreeRel * (1.0 + std::fabs(ys[i]));
          }
          c.check(ok, "n %zu i %zu: %a vs scalar %a", n, i, y[i], ys[i]);
        }
      }
    }
  }
  // Tails, offsets and guards for rows.
  for (int order = 1; order <= 3; ++order) {
    for (RowOp op : {kSoftmax, kLogSoftmax}) {
      char name[160];
      std::snprintf(name, sizeof name, "%s order %d %s: lengths 1..%zu, offsets, guards", t->name, order,
                    op == kSoftmax ? "softmax" : "logsoftmax", kMaxLen);
      Case c(name);
      for (size_t n = 1; n <= kMaxLen; ++n) {
        std::vector<float> x = mixed_row(rng, n, false);
        if (n > 2) x[n / 3] = -kInf;
        for (size_t off : kOffsets) {
          Guarded xb(n), yb(n);
          std::memcpy(xb.at(off), x.data(), n * 4);
          run_row(t, order, op, xb.at(off), yb.at(off), n);
          c.check(yb.guards_ok(off, n), "n %zu off %zu: wrote outside y", n, off);
          check_row(c, t, order, op, xb.at(off), yb.at(off), n);
          run_row(t, order, op, xb.at(off), xb.at(off), n);
          c.check(xb.guards_ok(off, n), "n %zu off %zu: in place wrote outside", n, off);
        }
      }
    }
  }
}

// ------------------- two-pass rows (softmax_long.h) -------------------------
// stats + finish give what ops.md asks of a row (check_row: the reference,
// the bounds, rows summing to 1), whole or split into chunks whose stats are
// combined in any order (as the op layer splits one long row over threads),
// with any block size, in place too. Rows whose max is beyond kRowStatsLimit
// are the op layer's to redo with the one-row kernel: the stats must say so.
void run_two_pass(const KernelTable* t, int order, RowOp op, const float* x, float* y, const std::vector<size_t>& cuts,
                  size_t block, bool reverse) {
  const OrderKernels& k = t->order[order - 1];
  std::vector<RowStats> parts;
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    RowStats st;
    k.softmax_stats(x + cuts[c], cuts[c + 1] - cuts[c], block, &st);
    parts.push_back(st);
  }
  if (reverse) std::reverse(parts.begin(), parts.end());
  RowStats row = parts[0];
  for (size_t c = 1; c < parts.size(); ++c) row = combine_stats(row, parts[c]);
  const RowFinishFn finish = op == kSoftmax ? k.softmax_finish : k.logsoftmax_finish;
  for (size_t c = 0; c + 1 < cuts.size(); ++c) finish(x + cuts[c], y + cuts[c], cuts[c + 1] - cuts[c], block, row);
}

// The split of one row over threads (ChunkStats): each chunk's partial, the
// chunks combined in any order, then each chunk scaled (Softmax) or shifted
// (LogSoftmax), as the op layer's RunSplit does.
void run_split(const KernelTable* t, int order, RowOp op, const float* x, float* y, const std::vector<size_t>& cuts,
               bool reverse) {
  const OrderKernels& k = t->order[order - 1];
  std::vector<ChunkStats> parts;
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    ChunkStats st;
    k.softmax_partial(x + cuts[c], op == kSoftmax ? y + cuts[c] : nullptr, cuts[c + 1] - cuts[c], &st);
    parts.push_back(st);
  }
  std::vector<ChunkStats> order_of = parts;
  if (reverse) std::reverse(order_of.begin(), order_of.end());
  ChunkStats row = order_of[0];
  for (size_t c = 1; c < order_of.size(); ++c) row = combine_chunks(row, order_of[c]);
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    const size_t a = cuts[c], n = cuts[c + 1] - cuts[c];
    if (row.nan) {
      std::fill(y + a, y + a + n, kNaN);
    } else if (row.max == -kInf) {
      std::fill(y + a, y + a + n, op == kSoftmax ? 0.0f : -kInf);
    } else if (op == kLogSoftmax) {
      k.shift(x + a, y + a, n, row.max, static_cast<float>(std::log(row.sum)));
    } else if (parts[c].max == -kInf) {
      std::fill(y + a, y + a + n, 0.0f);
    } else {
      k.scale(y + a, n, static_cast<float>(std::exp(static_cast<double>(parts[c].max) - row.max) / row.sum));
    }
  }
}

void test_two_pass_rows(const KernelTable* t, std::mt19937& rng) {
  const std::vector<std::vector<float>> rows = row_cases(rng);
  for (int order = 1; order <= 3; ++order) {
    for (RowOp op : {kSoftmax, kLogSoftmax}) {
      char name[160];
      std::snprintf(name, sizeof name, "%s order %d %s: two passes and splits, whole and in chunks, in place", t->name,
                    order, op == kSoftmax ? "softmax" : "logsoftmax");
      Case c(name);
      for (const std::vector<float>& x : rows) {
        const size_t n = x.size();
        RowStats whole;
        t->order[order - 1].softmax_stats(x.data(), n, 1024, &whole);
        bool nan = false;
        for (float v : x) nan |= std::isnan(v) || v == kInf;
        c.check(whole.nan == nan, "n %zu: stats say nan=%d", n, whole.nan);
        if (!whole.nan && std::fabs(whole.max) > kRowStatsLimit) continue;  // the op layer redoes these
        std::uniform_int_distribution<size_t> cut(0, n);
        std::vector<size_t> a = {0, n}, b = {0, cut(rng), n}, d = {0, cut(rng), cut(rng), cut(rng), n};
        std::sort(b.begin(), b.end());
        std::sort(d.begin(), d.end());
        const struct {
          const std::vector<size_t>* cuts;
          size_t block;
          bool reverse;
        } ways[] = {{&a, 1024, false}, {&a, 64, false}, {&b, 4096, true}, {&d, 100, false}, {&d, 1024, true}};
        for (const auto& w : ways) {
          if (n > 5000 && w.block != 1024) continue;  // long rows: two ways are enough (run time)
          std::vector<float> y(n), inplace = x;
          run_two_pass(t, order, op, x.data(), y.data(), *w.cuts, w.block, w.reverse);
          check_row(c, t, order, op, x.data(), y.data(), n);
          run_two_pass(t, order, op, inplace.data(), inplace.data(), *w.cuts, w.block, w.reverse);
          for (size_t i = 0; i < n; ++i)
            c.check(same(inplace[i], y[i]), "in place n %zu i %zu: %a vs %a", n, i, inplace[i], y[i]);
          if (w.block != 1024) continue;  // the split has no blocks: once per cut
          std::vector<float> ys(n), split_inplace = x;
          run_split(t, order, op, x.data(), ys.data(), *w.cuts, w.reverse);
          check_row(c, t, order, op, x.data(), ys.data(), n);
          run_split(t, order, op, split_inplace.data(), split_inplace.data(), *w.cuts, w.reverse);
          for (size_t i = 0; i < n; ++i) c.check(same(split_inplace[i], ys[i]), "split in place n %zu i %zu", n, i);
        }
      }
    }
  }
}

// --------------------------- page-end accesses -----------------------------
// Arrays that end right before an inaccessible page: reading or writing past
// the end faults.
void test_page_end(const KernelTable* t) {
#ifdef QUAKE_TEST_MMAP
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  auto map_region = [&]() {
    void* p = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return static_cast<char*>(nullptr);
    mprotect(static_cast<char*>(p) + page, page, PROT_NONE);
    return static_cast<char*>(p);
  };
  char* xr = map_region();
  char* yr = map_region();
  char* br = map_region();
  char name[96];
  std::snprintf(name, sizeof name, "%s: arrays ending at a protected page", t->name);
  Case c(name);
  if (!c.check(xr && yr && br, "mmap failed")) return;
  for (size_t n = 1; n <= kMaxLen; ++n) {
    float* x = reinterpret_cast<float*>(xr + page) - n;
    float* y = reinterpret_cast<float*>(yr + page) - n;
    float* b = reinterpret_cast<float*>(br + page) - n;
    for (size_t i = 0; i < n; ++i) x[i] = b[i] = 0.25f * static_cast<float>(i) - 3.0f;
    for (int order = 1; order <= 3; ++order) {
      for (int op = 0; op < kNumElementwise; ++op) run_elementwise(t, order, static_cast<Op>(op), x, b, y, n, 1.0f);
      run_row(t, order, kSoftmax, x, y, n);
      run_row(t, order, kLogSoftmax, x, y, n);
    }
    uint16_t* h = reinterpret_cast<uint16_t*>(yr + page) - n;
    t->f32_to_f16(x, h, n);
    t->f16_to_f32(h, reinterpret_cast<float*>(xr + page) - n, n);
  }
  munmap(xr, 2 * page);
  munmap(yr, 2 * page);
  munmap(br, 2 * page);
#else
  (void)t;
#endif
}

// ---------------------------------- Glu -------------------------------------
// y = act(a) * b (kernels_scalar.cc): the gate's absolute bound (Silu / Gelu
// above) times |b|, plus the rounding of y; the special values the scalar
// definition states; tails, offsets, guards, in place over a and over b;
// arrays ending at a protected page; the scalar table's results.
struct GluCase {
  GluActivation act;
  float alpha;
};
const GluCase kGluCases[] = {{GluActivation::kSilu, 1.0f},
                             {GluActivation::kSilu, 1.702f},
                             {GluActivation::kSilu, 0.37f},
                             {GluActivation::kSilu, 4.0f},
                             {GluActivation::kGelu, 1.0f}};

const char* glu_name(GluActivation act) { return act == GluActivation::kSilu ? "glu-silu" : "glu-gelu"; }

LD ref_gate(const GluCase& g, float a) { return g.act == GluActivation::kSilu ? ref_silu(a, g.alpha) : ref_gelu(a); }

double gate_bound(const GluCase& g, int order) {
  if (g.act == GluActivation::kGelu) return kGeluAbs[order - 1];
  return kSiluAbs[order - 1] * (g.alpha < 1.0f ? 1.0 / g.alpha : 1.0);
}

// b: N(0, 3) with a special value at every 7th position.
std::vector<float> glu_b(std::mt19937& rng, size_t n) {
  const float specials[] = {kNaN, kInf, -kInf, 0.0f, -0.0f, FLT_MAX, -FLT_MAX, FLT_MIN, 1e-40f, 1e30f, -1e30f, 1.0f};
  std::normal_distribution<float> d(0.0f, 3.0f);
  std::vector<float> b(n);
  for (size_t i = 0; i < n; ++i)
    b[i] = i % 7 == 3 ? specials[(i / 7) % (sizeof specials / sizeof specials[0])] : d(rng);
  return b;
}

// One Glu element against the contract; *gate_err is |y - ref| / |b| where
// that measures the gate's error (|a| <= 64, |b| >= 1/4), else 0.
bool check_glu(Case& c, const GluCase& g, int order, float a, float b, float got, double* gate_err) {
  *gate_err = 0;
  const char* name = glu_name(g.act);
  if (std::isnan(a) || std::isnan(b)) return c.check(std::isnan(got), "%s(%a, %a) = %a, want NaN", name, a, b, got);
  const LD gate = ref_gate(g, a);  // the limits at +-inf: +inf, -0
  if (std::isinf(b)) {
    // A gate below FLT_MIN (a = 0, or a tiny limit the kernels hold at
    // ~-1e-37 where the truth is smaller still) times inf: NaN or an infinity.
    if (std::fabs(gate) < static_cast<LD>(FLT_MIN)) {
      return c.check(std::isnan(got) || std::isinf(got), "%s(%a, %a) = %a, want inf or NaN", name, a, b, got);
    }
    const float want = static_cast<float>(gate * b);
    return c.check(got == want, "%s(%a, %a) = %a, want %a", name, a, b, got, want);
  }
  const LD ref = gate * b;
  if (std::isnan(ref)) return c.check(std::isnan(got), "%s(%a, %a) = %a, want NaN (+inf * 0)", name, a, b, got);
  const double tol = gate_bound(g, order) * std::fabs(b) + kRoundRel * static_cast<double>(std::fabs(ref)) + 0x1p-149;
  if (std::isinf(got)) {  // only where a value within tol rounds to it
    const bool ok = (got > 0) == (ref > 0) && std::fabs(ref) + tol >= kFloatOverflow;
    return c.check(ok, "%s(%a, %a) = %a, ref %Lg", name, a, b, got, ref);
  }
  const double err = static_cast<double>(std::fabs(got - ref));
  if (std::fabs(a) <= 64.0f && std::fabs(b) >= 0.25f) *gate_err = err / std::fabs(b);
  return c.check(!std::isnan(got) && err <= tol, "order %d %s(%a, %a, alpha %g) = %a, ref %.9Lg, err %g, tol %g", order,
                 name, a, b, g.alpha, got, ref, err, tol);
}

void test_glu_accuracy(const KernelTable* t, const KernelTable* scalar, std::mt19937& rng) {
  std::vector<float> a = band_inputs(rng);
  const std::vector<float> dense = dense_inputs(kSilu, rng);
  a.insert(a.end(), dense.begin(), dense.end());
  const size_t n = a.size();
  const std::vector<float> b = glu_b(rng, n);
  for (const GluCase& g : kGluCases) {
    for (int order = 1; order <= 3; ++order) {
      std::vector<float> y(n), ys(n);
      t->order[order - 1].glu(a.data(), b.data(), y.data(), n, g.act, g.alpha);
      char name[128];
      std::snprintf(name, sizeof name, "%s order %d %s alpha %g: contract", t->name, order, glu_name(g.act), g.alpha);
      {
        Case c(name);
        for (size_t i = 0; i < n; ++i) {
          double err;
          if (check_glu(c, g, order, a[i], b[i], y[i], &err)) note_err(key(t, glu_name(g.act), order), err);
        }
      }
      if (t == scalar) continue;
      scalar->order[order - 1].glu(a.data(), b.data(), ys.data(), n, g.act, g.alpha);
      // AVX2 and NEON run the scalar operations one for one: bit for bit.
      // AVX-512's VREDUCEPS may move f by an ulp (the top of kernels_avx512.cc).
      const bool exact = t->isa != Isa::kAvx512;
      std::snprintf(name, sizeof name, "%s order %d %s alpha %g: agrees with scalar%s", t->name, order, glu_name(g.act),
                    g.alpha, exact ? " bit for bit" : "");
      Case c(name);
      for (size_t i = 0; i < n; ++i) {
        bool ok;
        if (exact || std::isnan(ys[i]) || std::isnan(y[i]) || std::isinf(ys[i])) {
          ok = same(y[i], ys[i]);
        } else {
          const double d = std::fabs(static_cast<double>(y[i]) - ys[i]);
          ok = d <= kAgreeRel * std::fabs(ys[i]) + kAgreeAbs;
          if (ok && ys[i] != 0) note_err(key(t, "agree-rel", order), d / std::fabs(ys[i]));
        }
        c.check(ok || core_without_bias(t, a[i]), "a = %a, b = %a: %a vs scalar %a", a[i], b[i], y[i], ys[i]);
      }
    }
  }
}

void test_glu_tails(const KernelTable* t, std::mt19937& rng) {
  // Every element gives the same bits wherever it lands (body or tail, any
  // alignment), nothing outside [0, n) is written, and y may be a or b.
  const size_t kBody = 128;
  const std::vector<float> base_a = mixed_row(rng, kBody, true);
  const std::vector<float> base_b = glu_b(rng, kBody);
  for (int order = 1; order <= 3; ++order) {
    for (const GluCase& g : {kGluCases[1], kGluCases[4]}) {
      const GluFn glu = t->order[order - 1].glu;
      std::vector<float> full(kBody);
      glu(base_a.data(), base_b.data(), full.data(), kBody, g.act, g.alpha);
      char name[128];
      std::snprintf(name, sizeof name, "%s order %d %s: lengths 1..%zu, offsets, guards, in place over a and b",
                    t->name, order, glu_name(g.act), kMaxLen);
      Case c(name);
      for (size_t n = 1; n <= kMaxLen; ++n) {
        for (size_t off : kOffsets) {
          Guarded ab(n), bb(n), yb(n);
          auto reset = [&] {
            std::memcpy(ab.at(off), base_a.data(), n * 4);
            std::memcpy(bb.at(off), base_b.data(), n * 4);
          };
          auto expect = [&](Guarded& out, const char* how) {
            c.check(out.guards_ok(off, n), "%s n %zu off %zu: wrote outside", how, n, off);
            for (size_t i = 0; i < n; ++i) {
              c.check(same(out.at(off)[i], full[i]), "%s n %zu off %zu i %zu: %a, body gives %a", how, n, off, i,
                      out.at(off)[i], full[i]);
            }
          };
          reset();
          glu(ab.at(off), bb.at(off), yb.at(off), n, g.act, g.alpha);
          expect(yb, "out of place");
          glu(ab.at(off), bb.at(off), ab.at(off), n, g.act, g.alpha);  // y == a
          expect(ab, "y == a");
          reset();
          glu(ab.at(off), bb.at(off), bb.at(off), n, g.act, g.alpha);  // y == b
          expect(bb, "y == b");
        }
      }
    }
  }
}

void test_glu_page_end(const KernelTable* t) {
#ifdef QUAKE_TEST_MMAP
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  char* regions[3];
  for (char*& r : regions) {
    void* p = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    r = p == MAP_FAILED ? nullptr : static_cast<char*>(p);
    if (r) mprotect(r + page, page, PROT_NONE);
  }
  char name[96];
  std::snprintf(name, sizeof name, "%s glu: arrays ending at a protected page", t->name);
  Case c(name);
  if (c.check(regions[0] && regions[1] && regions[2], "mmap failed")) {
    for (size_t n = 1; n <= kMaxLen; ++n) {
      float* a = reinterpret_cast<float*>(regions[0] + page) - n;
      float* b = reinterpret_cast<float*>(regions[1] + page) - n;
      float* y = reinterpret_cast<float*>(regions[2] + page) - n;
      for (size_t i = 0; i < n; ++i) a[i] = b[i] = 0.25f * static_cast<float>(i) - 3.0f;
      for (int order = 1; order <= 3; ++order) {
        for (const GluCase& g : kGluCases) t->order[order - 1].glu(a, b, y, n, g.act, g.alpha);
      }
    }
  }
  for (char* r : regions) {
    if (r) munmap(r, 2 * page);
  }
#else
  (void)t;
#endif
}

// -------------------------------- float16 -----------------------------------
bool is_snan_half(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0 && (h & 0x200u) == 0; }

// The float16 twins (HalfKernels) against their definition: f16_to_f32, the
// table's float kernel (Exp then float16's range, constants.h), f32_to_f16,
// bit for bit, over every half as x (Glu: b from a shuffled copy), every
// order, op and alpha; then every tail length and offset, in place included,
// with nothing written outside y.
bool same_half(uint16_t a, uint16_t b) {
  const bool a_nan = (a & 0x7fffu) > 0x7c00u, b_nan = (b & 0x7fffu) > 0x7c00u;
  return a_nan ? b_nan : a == b;
}

enum HalfOp { kHExp, kHSigmoid, kHSilu, kHGelu, kHGeluBias, kHGluSilu, kHGluGelu, kNumHalfOps };
const char* const kHalfOpNames[] = {"exp", "sigmoid", "silu", "gelu", "gelu+bias", "glu silu", "glu gelu"};

// y = op(x) for n halves, by the float16 kernel (via_float false) or through
// float blocks as the op layer does without one (via_float true).
void run_half(const KernelTable* t, int order, HalfOp op, float alpha, bool via_float, const uint16_t* x,
              const uint16_t* b, const float* bias, uint16_t* y, size_t n) {
  const OrderKernels& k = t->order[order - 1];
  if (!via_float) {
    switch (op) {
      case kHExp:
        return k.half.exp(x, y, n);
      case kHSigmoid:
        return k.half.sigmoid(x, y, n);
      case kHSilu:
        return k.half.silu(x, y, n, alpha);
      case kHGelu:
        return k.half.gelu(x, nullptr, y, n);
      case kHGeluBias:
        return k.half.gelu(x, bias, y, n);
      case kHGluSilu:
        return k.half.glu(x, b, y, n, GluActivation::kSilu, alpha);
      case kHGluGelu:
        return k.half.glu(x, b, y, n, GluActivation::kGelu, alpha);
      default:
        return;
    }
  }
  std::vector<float> xf(n), bf(n), yf(n);
  t->f16_to_f32(x, xf.data(), n);
  if (b != nullptr) t->f16_to_f32(b, bf.data(), n);
  switch (op) {
    case kHExp:
      k.exp(xf.data(), yf.data(), n);
      for (size_t i = 0; i < n; ++i) {
        if (xf[i] >= kHalfExpInfFrom) {
          yf[i] = kInf;
        } else if (yf[i] > kHalfMax) {
          yf[i] = kHalfMax;
        }
      }
      break;
    case kHSigmoid:
      k.sigmoid(xf.data(), yf.data(), n);
      break;
    case kHSilu:
      k.silu(xf.data(), yf.data(), n, alpha);
      break;
    case kHGelu:
      k.gelu(xf.data(), nullptr, yf.data(), n);
      break;
    case kHGeluBias:
      k.gelu(xf.data(), bias, yf.data(), n);
      break;
    case kHGluSilu:
      k.glu(xf.data(), bf.data(), yf.data(), n, GluActivation::kSilu, alpha);
      break;
    case kHGluGelu:
      k.glu(xf.data(), bf.data(), yf.data(), n, GluActivation::kGelu, alpha);
      break;
    default:
      break;
  }
  t->f32_to_f16(yf.data(), y, n);
}

// A float16 kernel over spans: `run(in, out, len)` out of place and in place
// at every offset of guarded buffers; each element must equal want's (NaN
// as NaN) and nothing outside the span may be written.
template <class Run>
void check_half_spans(Case& c, const std::vector<uint16_t>& xs, const std::vector<uint16_t>& want, Run run) {
  constexpr uint16_t kGuardHalf = 0x7d0du;  // a signalling NaN half no kernel produces
  const size_t len = xs.size();
  for (size_t off : kOffsets) {
    std::vector<uint16_t> out(len + 2 * kGuard + 64, kGuardHalf), inplace(out.size(), kGuardHalf);
    std::copy(xs.begin(), xs.end(), inplace.begin() + kGuard + off);
    run(xs.data(), out.data() + kGuard + off, len);
    run(inplace.data() + kGuard + off, inplace.data() + kGuard + off, len);
    for (size_t i = 0; i < out.size(); ++i) {
      if (i < kGuard + off || i >= kGuard + off + len) {
        c.check(out[i] == kGuardHalf && inplace[i] == kGuardHalf, "n %zu off %zu: wrote outside at %zu", len, off, i);
        continue;
      }
      const size_t j = i - kGuard - off;
      c.check(same_half(out[i], want[j]), "n %zu off %zu i %zu: %04x vs %04x", len, off, j, out[i], want[j]);
      c.check(same_half(inplace[i], want[j]), "in place n %zu off %zu i %zu: %04x vs %04x", len, off, j, inplace[i],
              want[j]);
    }
  }
}

void test_half_kernels(const KernelTable* t, std::mt19937& rng) {
  char name[160];
  const HalfKernels& h1 = t->order[0].half;
  const bool any = h1.exp || h1.sigmoid || h1.silu || h1.gelu || h1.glu;
  {
    std::snprintf(name, sizeof name, "%s float16 kernels: %s", t->name,
                  t->isa == Isa::kScalar ? "none (the op layer converts)" : "every entry, every order");
    Case c(name);
    for (const OrderKernels& k : t->order) {
      const HalfKernels& h = k.half;
      const bool all = h.exp && h.sigmoid && h.silu && h.gelu && h.glu;
      const bool none = !h.exp && !h.sigmoid && !h.silu && !h.gelu && !h.glu;
      c.check(t->isa == Isa::kScalar ? none : all, "incomplete float16 entries");
    }
  }
  if (!any) return;
  const size_t n = 65536;
  std::vector<uint16_t> x(n), b(n), want(n), got(n);
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<uint16_t>(i);
  b = x;
  std::shuffle(b.begin(), b.end(), rng);
  std::vector<float> bias(n);
  std::normal_distribution<float> d(0.0f, 2.0f);
  for (float& v : bias) v = d(rng);
  for (int order = 1; order <= 3; ++order) {
    for (int op = 0; op < kNumHalfOps; ++op) {
      const HalfOp hop = static_cast<HalfOp>(op);
      const bool takes_alpha = hop == kHSilu || hop == kHGluSilu;
      for (float alpha : kSilAlphas) {
        if (!takes_alpha && alpha != 1.0f) continue;
        std::snprintf(name, sizeof name, "%s float16 %s order %d alpha %g: all 65536 halves = through float", t->name,
                      kHalfOpNames[op], order, alpha);
        Case c(name);
        run_half(t, order, hop, alpha, true, x.data(), b.data(), bias.data(), want.data(), n);
        run_half(t, order, hop, alpha, false, x.data(), b.data(), bias.data(), got.data(), n);
        for (size_t i = 0; i < n; ++i) {
          c.check(same_half(got[i], want[i]), "x %04zx b %04x: %04x, through float %04x", i, b[i], got[i], want[i]);
        }
      }
    }
  }
  std::uniform_int_distribution<int> any_half(0, 0xffff);
  for (int op = 0; op < kNumHalfOps; ++op) {
    const HalfOp hop = static_cast<HalfOp>(op);
    std::snprintf(name, sizeof name, "%s float16 %s order 2: every tail and offset, in place, guards", t->name,
                  kHalfOpNames[op]);
    Case c(name);
    for (size_t len = 0; len <= kMaxLen; ++len) {
      std::vector<uint16_t> xs(len), bs(len), full(len);
      for (size_t i = 0; i < len; ++i) {
        xs[i] = static_cast<uint16_t>(any_half(rng));
        bs[i] = static_cast<uint16_t>(any_half(rng));
      }
      run_half(t, 2, hop, 1.702f, true, xs.data(), bs.data(), bias.data(), full.data(), len);
      check_half_spans(c, xs, full, [&](const uint16_t* in, uint16_t* out, size_t count) {
        run_half(t, 2, hop, 1.702f, false, in, bs.data(), bias.data(), out, count);
      });
    }
  }
}

void test_f16(const KernelTable* t, std::mt19937& rng) {
  char name[128];
  {
    std::snprintf(name, sizeof name, "%s f16_to_f32: all 65536 halves bit-exact vs scalar", t->name);
    Case c(name);
    std::vector<uint16_t> h(65536);
    for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<uint16_t>(i);
    std::vector<float> y(h.size());
    t->f16_to_f32(h.data(), y.data(), h.size());
    for (size_t i = 0; i < h.size(); ++i) {
      const uint32_t want = bits(scalar::half_to_float(h[i]));
      // F16C and FCVT quiet a signalling NaN (set bit 22); the scalar
      // converter keeps it signalling. Same sign and payload otherwise.
      const bool ok =
          bits(y[i]) == want || (t->isa != Isa::kScalar && is_snan_half(h[i]) && bits(y[i]) == (want | 0x400000u));
      c.check(ok, "half %04zx -> %08x, scalar %08x", i, bits(y[i]), want);
    }
  }
  {
    std::snprintf(name, sizeof name, "%s f32_to_f16: ties, subnormals, overflow, NaN, random bits", t->name);
    Case c(name);
    std::vector<float> x;
    for (uint32_t hb = 0; hb < 0x7c00u; ++hb) {  // every finite half, the midpoints to the next and their neighbours
      const float a = scalar::half_to_float(static_cast<uint16_t>(hb));
      const float b = scalar::half_to_float(static_cast<uint16_t>(hb + 1));
      const float mid = static_cast<float>((static_cast<double>(a) + b) / 2);
      for (float s : {1.0f, -1.0f}) {
        x.push_back(s * a);
        x.push_back(s * mid);
        x.push_back(s * std::nextafter(mid, 0.0f));
        x.push_back(s * std::nextafter(mid, kInf));
      }
    }
    for (float f : {65504.0f,
                    65519.0f,
                    65519.99f,
                    65520.0f,
                    65536.0f,
                    1e5f,
                    FLT_MAX,
                    kInf,
                    -65520.0f,
                    -kInf,
                    kNaN,
                    -kNaN,
                    from_bits(0x7f800001u),
                    from_bits(0xff800fffu),
                    from_bits(0x7fc00001u),
                    from_bits(0x7fbfe000u),
                    0x1p-25f,
                    0x1.000002p-25f,
                    0x1.8p-25f,
                    0x1.fffffep-26f,
                    0x1p-24f,
                    0x1.8p-24f,
                    0x1p-14f,
                    0x1.ffcp-15f,
                    from_bits(1),
                    1e-30f})
      x.push_back(f);
    for (int i = 0; i < dense_count(1000000); ++i) x.push_back(from_bits(static_cast<uint32_t>(rng())));
    std::vector<uint16_t> h(x.size());
    t->f32_to_f16(x.data(), h.data(), x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const uint16_t want = scalar::float_to_half(x[i]);
      c.check(h[i] == want, "float %a (%08x) -> %04x, scalar %04x", x[i], bits(x[i]), h[i], want);
    }
  }
  {
    std::snprintf(name, sizeof name, "%s f16 conversions: lengths 1..%zu, offsets, guards", t->name, kMaxLen);
    Case c(name);
    for (size_t n = 1; n <= kMaxLen; ++n) {
      for (size_t off : kOffsets) {
        std::vector<uint16_t> hb(n + 64, 0xbeefu), hin(n + 64);
        for (size_t i = 0; i < n; ++i) hin[16 + off + i] = static_cast<uint16_t>(rng());
        Guarded yb(n);
        t->f16_to_f32(hin.data() + 16 + off, yb.at(off), n);
        c.check(yb.guards_ok(off, n), "f16_to_f32 n %zu off %zu wrote outside", n, off);
        for (size_t i = 0; i < n; ++i) {
          const uint16_t hv = hin[16 + off + i];
          const uint32_t want = bits(scalar::half_to_float(hv));
          c.check(bits(yb.at(off)[i]) == want || (is_snan_half(hv) && bits(yb.at(off)[i]) == (want | 0x400000u)),
                  "f16_to_f32 n %zu i %zu", n, i);
        }
        std::vector<float> x = mixed_row(rng, n, true);
        t->f32_to_f16(x.data(), hb.data() + 16 + off, n);
        for (size_t i = 0; i < hb.size(); ++i) {
          const bool inside = i >= 16 + off && i < 16 + off + n;
          if (inside) {
            c.check(hb[i] == scalar::float_to_half(x[i - 16 - off]), "f32_to_f16 n %zu i %zu", n, i - 16 - off);
          } else {
            c.check(hb[i] == 0xbeefu, "f32_to_f16 n %zu off %zu wrote outside at %zu", n, off, i);
          }
        }
      }
    }
  }
}

// ------------------------------ EXAQ softmax ------------------------------
// Each row is checked against the method's definition (ops.md), computed here
// from x alone: live elements z = x - max > -87.3, lo = max(clip, -87.3) or
// max(C(sigma), smallest live z), codes round(fma(z, a, L - 1)), y = the
// level's e^level over the sum of the row's levels. Where the code's argument
// is within kExaqTie of a rounding tie (x.5), either neighbour is accepted:
// a derived lo may differ in its last bit between ISAs (summation order of the
// statistics). The error against the exact softmax is bounded per bits for
// N(0, 1) logits (the fixed clip is the formula's C at sigma = 1).
constexpr double kExaqTie = 1e-4;
constexpr int kExaqBitsLo = 2, kExaqBitsHi = 8;
// max abs error per element vs the exact softmax, N(0,1) rows of 64..1000, bits 2..8
// (measured on every table: 0.054 0.031 0.014 0.0086 0.0044 0.0023 0.0011 derived,
// a little less with the fixed C(1)).
constexpr double kExaqAbs[9] = {0, 0, 0.08, 0.05, 0.025, 0.014, 0.007, 0.0036, 0.0018};
std::map<std::string, double> g_exaq_err;  // "table clip bits" -> max abs error vs exact (N(0,1) rows)

const float kExaqClips[] = {0.0f, -3.81f, -0.75f, -200.0f};  // derived, C(1) at 3 bits, narrow, below the range

void check_exaq_row(Case& c, const KernelTable* t, const ExaqParams& p, const float* x, const float* y, size_t n,
                    bool gaussian) {
  bool has_nan = false, has_pinf = false;
  float m = -kInf;
  for (size_t i = 0; i < n; ++i) {
    has_nan |= std::isnan(x[i]);
    has_pinf |= x[i] == kInf;
    if (x[i] > m) m = x[i];
  }
  if (has_nan || has_pinf) {
    for (size_t i = 0; i < n; ++i) c.check(std::isnan(y[i]), "n %zu: NaN/+inf row gives y[%zu] = %a", n, i, y[i]);
    return;
  }
  if (m == -kInf) {
    for (size_t i = 0; i < n; ++i) c.check(bits(y[i]) == 0, "n %zu: all -inf row gives y[%zu] = %a", n, i, y[i]);
    return;
  }
  float lo = exaq::fixed_lo(p.clip);
  if (p.clip == 0.0f) {
    LD count = 0, sum = 0, sum_sq = 0;
    float zmin = 0.0f;
    for (size_t i = 0; i < n; ++i) {
      const float z = x[i] - m;
      if (z > kExpUnderflow) {
        count += 1;
        sum += z;
        sum_sq += static_cast<LD>(z) * z;
        zmin = std::min(zmin, z);
      }
    }
    lo = exaq::derived_lo(p.bits, static_cast<double>(count), static_cast<double>(sum), static_cast<double>(sum_sq),
                          zmin);
  }
  exaq::Levels lv;
  exaq::make_levels(p.bits, lo, &lv);
  std::vector<int> lo_code(n, -1), hi_code(n, -1);  // acceptable codes; -1: masked (y must be +0)
  for (size_t i = 0; i < n; ++i) {
    const float z = x[i] - m;
    if (!(z > kExpUnderflow)) continue;
    const double u = std::fma(static_cast<double>(z), lv.a, lv.top);
    const int k = exaq::code(z, lv);
    lo_code[i] = hi_code[i] = k;
    if (std::fabs(u - std::floor(u) - 0.5) < kExaqTie && u > 0) {
      lo_code[i] = std::max(0, static_cast<int>(std::floor(u)));
      hi_code[i] = std::min(lv.levels - 1, static_cast<int>(std::floor(u)) + 1);
    }
  }
  // The error against the exact softmax is only kept (and bounded) for the
  // N(0, 1) rows, so only they pay for its long-double exponentials (the
  // bulk of this test's time where long double is software binary128, as on
  // AArch64 under qemu).
  std::vector<LD> exact(gaussian ? n : 0);
  LD sum_y = 0, sum_lo = 0, sum_hi = 0, exact_sum = 0;
  for (size_t i = 0; i < n; ++i) {
    sum_y += y[i];
    if (lo_code[i] < 0) continue;
    sum_lo += exaq::entry(lv, lo_code[i]);
    sum_hi += exaq::entry(lv, hi_code[i]);
    if (gaussian) exact_sum += exact[i] = std::exp(static_cast<LD>(x[i]) - m);
  }
  c.check(std::fabs(static_cast<double>(sum_y) - 1.0) <= kRowSumAbs, "bits %d clip %g n %zu: row sums to 1 %+g", p.bits,
          p.clip, n, static_cast<double>(sum_y - 1));
  // Codes the kernel chose, read back from y: the row's scale is y(max) = 1 / sum.
  double err = 0;
  for (size_t i = 0; i < n; ++i) {
    if (lo_code[i] < 0) {
      c.check(bits(y[i]) == 0, "bits %d clip %g n %zu: masked x[%zu] = %a gives %a, want +0", p.bits, p.clip, n, i,
              x[i], y[i]);
      continue;
    }
    // y within the rounding of one of the acceptable levels over a sum between the extremes.
    const LD want_lo = exaq::entry(lv, lo_code[i]) / sum_hi, want_hi = exaq::entry(lv, hi_code[i]) / sum_lo;
    const LD slack = (kAgreeRel + agree_row_sum(n)) * want_hi + 1e-30L;
    c.check(y[i] >= want_lo - slack && y[i] <= want_hi + slack,
            "bits %d clip %g n %zu i %zu x %a (max %a): %a, want %.9Lg..%.9Lg", p.bits, p.clip, n, i, x[i], m, y[i],
            want_lo, want_hi);
    if (gaussian) err = std::max(err, static_cast<double>(std::fabs(y[i] - exact[i] / exact_sum)));
  }
  if (gaussian) {
    char k[96];
    if (p.clip == 0.0f) {
      std::snprintf(k, sizeof k, "%s derived C", t->name);
    } else if (p.clip == static_cast<float>(exaq::clip_from_sigma(p.bits, 1.0))) {
      std::snprintf(k, sizeof k, "%s fixed C(sigma=1)", t->name);
    } else {
      std::snprintf(k, sizeof k, "%s fixed %g", t->name, p.clip);
    }
    double& e = g_exaq_err[std::string(k) + " " + std::to_string(p.bits)];
    e = std::max(e, err);
    if (p.clip == 0.0f || p.clip == -3.81f) {
      c.check(err <= kExaqAbs[p.bits], "bits %d clip %g n %zu: max abs error vs exact %g > %g", p.bits, p.clip, n, err,
              kExaqAbs[p.bits]);
    }
  }
}

// QUAKE_ISA: unset and "auto" give the best table of this CPU, a level
// names at most that table, and a table of the other architecture is refused
// with a message (it once crashed here: auto was checked as avx512).
void test_isa_choice() {
  const char* user = std::getenv("QUAKE_ISA");
  const std::string saved = user ? user : "";
  auto choose = [](const char* value, const char** error) {
    if (value == nullptr) {
      unsetenv("QUAKE_ISA");
    } else {
      setenv("QUAKE_ISA", value, 1);
    }
    return select_kernels(error);
  };
  Case c("QUAKE_ISA: unset, auto, a level, another architecture");
  const char* error = nullptr;
  const KernelTable* best = choose(nullptr, &error);
  c.check(best != nullptr && error == nullptr, "unset: %s", error ? error : "no table");
  const KernelTable* automatic = choose("auto", &error);
  c.check(automatic == best && error == nullptr, "auto: %s", error ? error : "another table");
  const KernelTable* scalar = choose("scalar", &error);
  c.check(scalar != nullptr && scalar->isa == Isa::kScalar, "scalar: %s", error ? error : "another table");
#if defined(__aarch64__)
  const char* foreign = "avx2";
#else
  const char* foreign = "neon";
#endif
  const KernelTable* refused = choose(foreign, &error);
  c.check(refused == nullptr && error != nullptr && std::strstr(error, "another architecture") != nullptr, "%s: %s",
          foreign, error ? error : "accepted");
  if (user) {
    setenv("QUAKE_ISA", saved.c_str(), 1);
  } else {
    unsetenv("QUAKE_ISA");
  }
}

void test_exaq_levels() {
  Case c("exaq levels: table within 1.5 ulp of e^level, top entry 1, codes clamp");
  for (int b = kExaqBitsLo; b <= kExaqBitsHi; ++b) {
    for (float lo : {-87.3f, -20.0f, -5.28f, -3.51f, -1.0f, -1e-3f, 0.0f}) {
      exaq::Levels lv;
      exaq::make_levels(b, lo, &lv);
      const int n = 1 << b;
      c.check(exaq::entry(lv, n - 1) == 1.0f, "bits %d lo %g: top entry %a", b, lo, exaq::entry(lv, n - 1));
      for (int k = 0; k < n; ++k) {
        const LD level = static_cast<LD>(lo) * (n - 1 - k) / (n - 1);
        const LD want = std::exp(level);
        c.check(std::fabs(exaq::entry(lv, k) - want) <= 1.5L * 0x1p-23L * want &&
                    (k >= 16 || lv.table[k] == exaq::entry(lv, k)),
                "bits %d lo %g k %d: %a vs %.9Lg", b, lo, k, exaq::entry(lv, k), want);
      }
      c.check(exaq::code(0.0f, lv) == n - 1 && exaq::code(-86.0f, lv) >= 0 &&
                  (lo == 0.0f || (exaq::code(lo, lv) == 0 && exaq::code(lo - 5.0f, lv) == 0)),
              "bits %d lo %g: codes of 0, lo, below lo", b, lo);
    }
  }
}

void test_exaq(const KernelTable* t, const KernelTable* scalar) {
  std::mt19937 rng(7u);  // every table sees the same rows
  const std::vector<std::vector<float>> special_rows = row_cases(rng);
  std::vector<std::vector<float>> gauss;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (size_t n : {64, 128, 1000}) {
    for (int r = 0; r < 20; ++r) {
      std::vector<float> v(n);
      for (float& f : v) f = nd(rng) + 3.0f;  // an offset: only x - max matters
      gauss.push_back(v);
    }
  }
  for (int b = kExaqBitsLo; b <= kExaqBitsHi; ++b) {
    for (float clip : kExaqClips) {
      // The fixed clip of the error bound is C(sigma = 1) of this bits.
      const float fixed = clip == -3.81f ? static_cast<float>(exaq::clip_from_sigma(b, 1.0)) : clip;
      const ExaqParams p{b, fixed};
      char name[160];
      std::snprintf(name, sizeof name, "%s exaq bits %d clip %g: definition, masks, specials, in place, vs scalar",
                    t->name, b, fixed);
      Case c(name);
      size_t flips = 0, total = 0;
      for (int set = 0; set < 2; ++set) {
        for (const std::vector<float>& x : set ? gauss : special_rows) {
          const size_t n = x.size();
          std::vector<float> y(n), ys(n), inplace = x;
          t->softmax_exaq(x.data(), y.data(), 1, n, p);
          check_exaq_row(c, t, p, x.data(), y.data(), n, set == 1 && p.clip != -3.81f ? true : set == 1);
          t->softmax_exaq(inplace.data(), inplace.data(), 1, n, p);
          for (size_t i = 0; i < n; ++i)
            c.check(same(inplace[i], y[i]), "in place n %zu i %zu: %a vs %a", n, i, inplace[i], y[i]);
          if (t == scalar) continue;
          scalar->softmax_exaq(x.data(), ys.data(), 1, n, p);
          for (size_t i = 0; i < n; ++i) {
            ++total;
            if (!std::isfinite(ys[i]) || !std::isfinite(y[i]) || ys[i] == 0 || y[i] == 0) {
              c.check(same(y[i], ys[i]), "n %zu i %zu: %a vs scalar %a", n, i, y[i], ys[i]);
            } else if (std::fabs(static_cast<double>(y[i]) - ys[i]) > (kAgreeRel + agree_row_sum(n)) * ys[i]) {
              ++flips;  // a code at a tie of a derived lo; the definition check above bounds it
            }
          }
        }
      }
      // A fixed clip gives every ISA the same codes; a derived one may flip a
      // code at a rounding tie, rarely.
      c.check(p.clip != 0.0f ? flips == 0 : flips * 10000 <= total, "%zu of %zu elements differ from scalar", flips,
              total);
    }
  }
  // Tails, offsets, guards; row batches equal single rows.
  for (int b : {2, 3, 4, 5, 8}) {
    for (float clip : {0.0f, -4.0f}) {
      const ExaqParams p{b, clip};
      char name[160];
      std::snprintf(name, sizeof name, "%s exaq bits %d clip %g: lengths 1..%zu, offsets, guards, batches, in place",
                    t->name, b, clip, kMaxLen);
      Case c(name);
      for (size_t n = 1; n <= kMaxLen; ++n) {
        std::vector<float> x = mixed_row(rng, n, false);
        if (n > 2) x[n / 3] = -kInf;
        if (n > 4) x[n - 1] = -FLT_MAX;
        for (size_t off : kOffsets) {
          Guarded xb(n), yb(n);
          std::memcpy(xb.at(off), x.data(), n * 4);
          t->softmax_exaq(xb.at(off), yb.at(off), 1, n, p);
          c.check(yb.guards_ok(off, n), "n %zu off %zu: wrote outside y", n, off);
          check_exaq_row(c, t, p, xb.at(off), yb.at(off), n, false);
          t->softmax_exaq(xb.at(off), xb.at(off), 1, n, p);
          c.check(xb.guards_ok(off, n), "n %zu off %zu: in place wrote outside", n, off);
        }
      }
      for (size_t n : {1, 2, 7, 16, 17, 31, 64, 65, 128, 333, 1024, 5000}) {
        const size_t rows = n >= 1024 ? 3 : 70;  // beyond one group of 64 rows (simd_exaq.h)
        std::vector<float> x(rows * n);
        for (size_t r = 0; r < rows; ++r) {
          std::vector<float> row = mixed_row(rng, n, false);
          switch (r % 6) {
            case 1:
              std::fill(row.begin(), row.end(), -kInf);
              break;
            case 2:
              row[(r * 7) % n] = kNaN;
              break;
            case 3:
              row[(r * 5) % n] = kInf;
              break;
            case 4:
              for (size_t i = 0; i < n; i += 2) row[i] = -FLT_MAX;
              break;
            default:
              break;
          }
          std::copy(row.begin(), row.end(), x.begin() + r * n);
        }
        std::vector<float> batch(rows * n), single(rows * n), inplace = x;
        t->softmax_exaq(x.data(), batch.data(), rows, n, p);
        for (size_t r = 0; r < rows; ++r) t->softmax_exaq(x.data() + r * n, single.data() + r * n, 1, n, p);
        t->softmax_exaq(inplace.data(), inplace.data(), rows, n, p);
        for (size_t i = 0; i < rows * n; ++i) {
          c.check(same(batch[i], single[i]), "batch n %zu row %zu i %zu: %a vs %a", n, i / n, i % n, batch[i],
                  single[i]);
          c.check(same(inplace[i], batch[i]), "in place batch n %zu row %zu i %zu: %a vs %a", n, i / n, i % n,
                  inplace[i], batch[i]);
        }
      }
    }
  }
#ifdef QUAKE_TEST_MMAP
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  char* xr = static_cast<char*>(mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  char* yr = static_cast<char*>(mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  Case c(std::string(t->name) + " exaq: arrays ending at a protected page");
  if (c.check(xr != MAP_FAILED && yr != MAP_FAILED, "mmap failed")) {
    mprotect(xr + page, page, PROT_NONE);
    mprotect(yr + page, page, PROT_NONE);
    for (size_t n = 1; n <= kMaxLen; ++n) {
      float* x = reinterpret_cast<float*>(xr + page) - n;
      float* y = reinterpret_cast<float*>(yr + page) - n;
      for (size_t i = 0; i < n; ++i) x[i] = 0.25f * static_cast<float>(i) - 3.0f;
      for (int b : {2, 4, 5, 8}) {
        t->softmax_exaq(x, y, 1, n, ExaqParams{b, 0.0f});
        t->softmax_exaq(x, y, 1, n, ExaqParams{b, -5.0f});
      }
    }
    munmap(xr, 2 * page);
    munmap(yr, 2 * page);
  }
#endif
}

void print_exaq_errors() {
  std::printf("\nexaq: max abs error vs the exact softmax, N(0,1) rows of 64..1000\n%-28s", "table clip");
  for (int b = kExaqBitsLo; b <= kExaqBitsHi; ++b) std::printf(" %8s%d", "bits ", b);
  std::printf("\n");
  std::map<std::string, std::map<int, double>> rows;
  for (const auto& kv : g_exaq_err) {
    const size_t sp = kv.first.rfind(' ');
    rows[kv.first.substr(0, sp)][std::stoi(kv.first.substr(sp + 1))] = kv.second;
  }
  for (const auto& kv : rows) {
    std::printf("%-28s", kv.first.c_str());
    for (int b = kExaqBitsLo; b <= kExaqBitsHi; ++b) std::printf(" %9.3g", kv.second.count(b) ? kv.second.at(b) : 0.0);
    std::printf("\n");
  }
}

// ---------------------------------------------------------------------------
// float16 lanes (half_lanes.h). The algorithm runs here on a scalar layer
// that rounds every operation once to float16, as AVX512-FP16 does (sums,
// products and FMAs of float16 values are exact in double, and a quotient
// rounded to double and then to float16 is rounded correctly), so its error
// is measured on every machine; where the CPU has AVX512-FP16 (or under an
// emulator: tools/run-sapphire-rapids.sh) the ISA kernels must give the same
// bits.
struct EmulatedHalfLayer {
  using Vec = float;
  using Mask = bool;
  // v rounded to the nearest float16 (ties to even), as a float: the ulp is
  // 2^(exponent - 10) for normal halves and 2^-24 below 2^-14; beyond 65504
  // a result that rounds up past it is +inf. Portable (no _Float16 needed).
  static float round16(double v) {
    if (std::isnan(v) || std::isinf(v) || v == 0.0) return static_cast<float>(v);
    int k;
    std::frexp(v, &k);  // |v| = m 2^k, m in [1/2, 1)
    const int ulp_exp = std::max(k - 11, -24);
    const double q = std::ldexp(std::nearbyint(std::ldexp(v, -ulp_exp)), ulp_exp);
    if (std::fabs(q) > 65504.0) return std::copysign(std::numeric_limits<float>::infinity(), v);
    return static_cast<float>(q);
  }
  static Vec set(float c) { return round16(c); }
  static Vec add(Vec a, Vec b) { return round16(static_cast<double>(a) + b); }
  static Vec sub(Vec a, Vec b) { return round16(static_cast<double>(a) - b); }
  static Vec mul(Vec a, Vec b) { return round16(static_cast<double>(a) * b); }
  static Vec div(Vec a, Vec b) { return round16(static_cast<double>(a) / b); }
  static Vec fma(Vec a, Vec b, Vec c) { return round16(std::fma(static_cast<double>(a), b, c)); }
  static Vec fnma(Vec a, Vec b, Vec c) { return round16(std::fma(-static_cast<double>(a), b, c)); }
  static Vec min(Vec a, Vec b) { return a < b ? a : b; }  // b when either is NaN
  static Vec max(Vec a, Vec b) { return a > b ? a : b; }
  static Vec abs(Vec a) { return std::fabs(a); }
  static Vec round_int(Vec a) { return std::nearbyint(a); }
  static Vec scalef(Vec p, Vec n) {
    if (std::isnan(p) || std::isnan(n)) return std::numeric_limits<float>::quiet_NaN();
    return round16(std::ldexp(static_cast<double>(p), static_cast<int>(std::floor(n))));
  }
  static Mask lt(Vec a, Vec b) { return a < b; }
  static Mask ge(Vec a, Vec b) { return a >= b; }
  static Vec select(Mask m, Vec a, Vec b) { return m ? a : b; }
};

enum LaneOp { kLExp, kLSigmoid, kLSilu, kLGelu, kNumLaneOps };
const char* const kLaneOpNames[] = {"exp", "sigmoid", "silu", "gelu"};
// The float16 bounds of tests/test_accuracy.py (ops.md's bound of the order
// plus the rounding of Y), {absolute, relative}, per op and order 1, 2; Silu's
// absolute part scales by max(1, 1 / alpha).
constexpr double kLaneBounds[kNumLaneOps][2][2] = {
    {{3.0e-8, 3.05e-2}, {3.0e-8, 2.3e-3}},   // exp
    {{8.3e-3, 0.0}, {7.1e-4, 0.0}},          // sigmoid
    {{7.5e-3, 0x1p-11}, {6.7e-4, 0x1p-11}},  // silu
    {{4.7e-3, 0x1p-11}, {5.1e-4, 0x1p-11}},  // gelu (tanh form)
};
// e^x rounds to +inf in float16 from here on: 65504 + half an ulp.
constexpr long double kHalfOverflow = 65520.0L;

template <int Order>
float emulated_lane_of_order(LaneOp op, float x, float alpha) {
  using L = EmulatedHalfLayer;
  switch (op) {
    case kLExp:
      return half_lanes::exp<L, Order>(x);
    case kLSigmoid:
      return half_lanes::sigmoid<L, Order>(x);
    case kLSilu:
      return half_lanes::silu<L, Order>(x, L::round16(alpha), alpha == 1.0f);
    default:
      return half_lanes::gelu<L, Order>(x);
  }
}

float emulated_lane(int order, LaneOp op, float x, float alpha) {
  return order == 1 ? emulated_lane_of_order<1>(op, x, alpha) : emulated_lane_of_order<2>(op, x, alpha);
}

// Every case of the float16 lanes: orders 1 and 2, each op, and for Silu
// each alpha of kSilAlphas (the other ops take alpha 1 only).
template <typename F>
void for_each_lane_case(const F& f) {
  for (int order = 1; order <= 2; ++order) {
    for (int op = 0; op < kNumLaneOps; ++op) {
      const LaneOp lop = static_cast<LaneOp>(op);
      for (float alpha : kSilAlphas) {
        if (lop == kLSilu || alpha == 1.0f) f(order, lop, alpha);
      }
    }
  }
}

void test_half_lanes_emulated() {
  char name[160];
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  for_each_lane_case([&](int order, LaneOp lop, float alpha) {
    const int op = lop;
    std::snprintf(name, sizeof name, "float16 lanes (emulated) %s order %d alpha %g: every half within bounds",
                  kLaneOpNames[op], order, alpha);
    Case c(name);
    const double abs_tol = kLaneBounds[op][order - 1][0] * (lop == kLSilu ? std::max(1.0, 1.0 / alpha) : 1.0);
    const double rel_tol = kLaneBounds[op][order - 1][1];
    for (uint16_t h : all) {
      const float x = scalar::half_to_float(h);
      const float y = emulated_lane(order, lop, x, alpha);
      if (!c.check(y == EmulatedHalfLayer::round16(y) || std::isnan(y), "x %a: %a is no float16", x, y)) continue;
      if (std::isnan(x)) {
        c.check(std::isnan(y), "%s(NaN) = %a", kLaneOpNames[op], y);
        continue;
      }
      if (x == 0.0f && (lop == kLSilu || lop == kLGelu)) {  // +-0 -> +-0, as the float32 lanes
        c.check(y == 0.0f && std::signbit(y) == std::signbit(x), "%s(%a) = %a", kLaneOpNames[op], x, y);
        continue;
      }
      LD ref;
      switch (lop) {
        case kLExp:
          ref = std::exp(static_cast<LD>(x));
          break;
        case kLSigmoid:
          ref = ref_sigmoid(x);
          break;
        case kLSilu:
          ref = ref_silu(x, alpha);
          break;
        default:
          ref = ref_gelu(x);
          break;
      }
      if (lop == kLExp && ref >= kHalfOverflow) {
        c.check(y == kInf, "exp(%a) = %a, want +inf", x, y);
        continue;
      }
      if (std::isinf(ref)) {
        c.check(y == static_cast<float>(ref), "%s(%a) = %a, want %Lg", kLaneOpNames[op], x, y, ref);
        continue;
      }
      const double err = static_cast<double>(std::fabs(static_cast<LD>(y) - ref));
      const double excess = err - rel_tol * static_cast<double>(std::fabs(ref));
      note_err(
          std::string("f16-lanes ") + kLaneOpNames[op] + (alpha != 1.0f ? "-alpha" : "") + " " + std::to_string(order),
          lop == kLExp ? err / std::max(static_cast<double>(ref), 0x1p-14) : excess);
      c.check(excess <= abs_tol, "order %d %s(%a) = %a, ref %.9Lg, err %g", order, kLaneOpNames[op], x, y, ref, err);
    }
  });
}

// QUAKE_F16=auto where the lanes run: each op and order of the table it
// selects is either the float32 lanes' or the float16 lanes' kernel, as the
// engine text says, measured once per process.
void test_half_lanes_measured(const KernelTable& lanes) {
  Case c("QUAKE_F16=auto on AVX512-FP16: each op from the lanes the engine text names");
  const char* user = std::getenv("QUAKE_F16");
  const std::string saved = user ? user : "";
  unsetenv("QUAKE_F16");
  const char* error = nullptr;
  const KernelTable* t = select_kernels(&error);
  const KernelTable* again = select_kernels(&error);
  const std::string engine = t ? float16_engine(t) : "";
  if (user) setenv("QUAKE_F16", saved.c_str(), 1);
  std::printf("QUAKE_F16=auto: %s\n", engine.c_str());
  if (!c.check(t != nullptr && t == again, "not one table per process (error %s)", error ? error : "none")) return;
  const KernelTable& f32 = *avx512_kernels();
  for (int order = 1; order <= 2; ++order) {
    const HalfKernels& h = t->order[order - 1].half;
    const HalfKernels& a = f32.order[order - 1].half;
    const HalfKernels& b = lanes.order[order - 1].half;
    const bool from_lanes[4] = {h.exp == b.exp, h.sigmoid == b.sigmoid, h.silu == b.silu, h.gelu == b.gelu};
    const bool from_f32[4] = {h.exp == a.exp, h.sigmoid == a.sigmoid, h.silu == a.silu, h.gelu == a.gelu};
    for (int op = 0; op < 4; ++op) {
      const std::string named = std::string(kHalfLaneOpNames[op]);
      const size_t at = engine.find(" at order " + std::to_string(order));
      const size_t start = engine.rfind("; ", at) == std::string::npos ? 0 : engine.rfind("; ", at);
      const bool says_lanes =
          at != std::string::npos && engine.substr(start, at - start).find(named) != std::string::npos;
      c.check(from_lanes[op] != from_f32[op], "order %d %s: neither lanes' kernel", order, kHalfLaneOpNames[op]);
      c.check(says_lanes == from_lanes[op], "order %d %s: engine text '%s' against the table", order,
              kHalfLaneOpNames[op], engine.c_str());
    }
    c.check(h.glu == a.glu, "order %d Glu left the float32 lanes", order);
  }
  c.check(t->order[2].half.exp == f32.order[2].half.exp, "order 3 left the float32 lanes");
}

// The AVX512-FP16 kernels against the emulated algorithm, bit for bit, over
// every half; then every tail length and offset, in place, guards.
void test_half_lanes_isa() {
  const char* user = std::getenv("QUAKE_F16");
  const std::string saved = user ? user : "";
  setenv("QUAKE_F16", "lanes", 1);
  const char* error = nullptr;
  const KernelTable* t = select_kernels(&error);
  if (user) {
    setenv("QUAKE_F16", saved.c_str(), 1);
  } else {
    unsetenv("QUAKE_F16");
  }
  if (t == nullptr || std::strcmp(float16_engine(t), "AVX512-FP16 lanes") != 0) {
    std::printf("(no AVX512-FP16 on this CPU or build: float16 lanes tested emulated only)\n");
    return;
  }
  std::printf("== float16 lanes: AVX512-FP16\n");
  test_half_lanes_measured(*t);
  char name[160];
  const size_t n = 65536;
  std::vector<uint16_t> x(n), y(n);
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<uint16_t>(i);
  auto run = [&](int order, LaneOp op, float alpha, const uint16_t* in, uint16_t* out, size_t count) {
    const HalfKernels& h = t->order[order - 1].half;
    switch (op) {
      case kLExp:
        return h.exp(in, out, count);
      case kLSigmoid:
        return h.sigmoid(in, out, count);
      case kLSilu:
        return h.silu(in, out, count, alpha);
      default:
        return h.gelu(in, nullptr, out, count);
    }
  };
  auto want_bits = [](int order, LaneOp op, float alpha, uint16_t h) {
    return scalar::float_to_half(emulated_lane(order, op, scalar::half_to_float(h), alpha));
  };
  for_each_lane_case([&](int order, LaneOp lop, float alpha) {
    std::snprintf(name, sizeof name, "avx512fp16 %s order %d alpha %g: all 65536 halves = emulated", kLaneOpNames[lop],
                  order, alpha);
    Case c(name);
    run(order, lop, alpha, x.data(), y.data(), n);
    for (size_t i = 0; i < n; ++i) {
      const uint16_t want = want_bits(order, lop, alpha, x[i]);
      c.check(same_half(y[i], want), "x %04zx: %04x, emulated %04x", i, y[i], want);
    }
  });
#if defined(__x86_64__)
  // ORT may set denormal-as-zero: the lanes must give the same bits with
  // MXCSR.DAZ and FTZ set, and leave MXCSR as they found it.
  for (int op = 0; op < kNumLaneOps; ++op) {
    const LaneOp lop = static_cast<LaneOp>(op);
    std::snprintf(name, sizeof name, "avx512fp16 %s order 2 under MXCSR DAZ+FTZ: all 65536 halves = emulated",
                  kLaneOpNames[op]);
    Case c(name);
    const unsigned saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040u);
    run(2, lop, 1.702f, x.data(), y.data(), n);
    const unsigned after = _mm_getcsr();
    _mm_setcsr(saved);
    c.check(after == (saved | 0x8040u), "MXCSR %x after the call, %x before", after, saved | 0x8040u);
    for (size_t i = 0; i < n; ++i) {
      const uint16_t want = want_bits(2, lop, 1.702f, x[i]);
      c.check(same_half(y[i], want), "x %04zx: %04x, emulated %04x", i, y[i], want);
    }
  }
#endif
  std::mt19937 rng(7u);
  std::uniform_int_distribution<int> any_half(0, 0xffff);
  for (int op = 0; op < kNumLaneOps; ++op) {
    const LaneOp lop = static_cast<LaneOp>(op);
    std::snprintf(name, sizeof name, "avx512fp16 %s order 2: every tail and offset, in place, guards",
                  kLaneOpNames[op]);
    Case c(name);
    for (size_t len = 0; len <= 2 * kMaxLen; ++len) {
      std::vector<uint16_t> xs(len);
      for (uint16_t& v : xs) v = static_cast<uint16_t>(any_half(rng));
      std::vector<uint16_t> want(len);
      for (size_t i = 0; i < len; ++i) want[i] = want_bits(2, lop, 1.702f, xs[i]);
      check_half_spans(c, xs, want,
                       [&](const uint16_t* in, uint16_t* out, size_t count) { run(2, lop, 1.702f, in, out, count); });
    }
  }
}

// QUAKE_F16=auto's chooser on every machine, with two copies of one SIMD
// table's float16 kernels, one doing its work eight times: the rule's margin,
// then the measurement picks the fast copy op by op on either side.
constexpr int kSlowTimes = 8;
const HalfKernels* g_timed = nullptr;  // the SIMD table's float16 kernels the slow copy repeats
template <int Op>
void slow_unary(const uint16_t* x, uint16_t* y, size_t n) {
  for (int i = 0; i < kSlowTimes; ++i) (Op == 0 ? g_timed->exp : g_timed->sigmoid)(x, y, n);
}
void slow_silu(const uint16_t* x, uint16_t* y, size_t n, float alpha) {
  for (int i = 0; i < kSlowTimes; ++i) g_timed->silu(x, y, n, alpha);
}
void slow_gelu(const uint16_t* x, const float* bias, uint16_t* y, size_t n) {
  for (int i = 0; i < kSlowTimes; ++i) g_timed->gelu(x, bias, y, n);
}

void test_half_lanes_choice() {
  {
    Case c("QUAKE_F16=auto rule: the float16 lanes only under 90 % of the float32 lanes' time");
    c.check(half_lanes_measured_faster(89.0, 100.0), "89 against 100 ns kept the float32 lanes");
    c.check(!half_lanes_measured_faster(90.0, 100.0), "90 against 100 ns took the float16 lanes");
    c.check(!half_lanes_measured_faster(100.0, 100.0), "a tie took the float16 lanes");
    c.check(!half_lanes_measured_faster(150.0, 100.0), "slower lanes were taken");
  }
  // The scalar table has no float16 kernels (it converts in blocks).
  const KernelTable* simd = best_kernels(Isa::kAvx512);  // NEON on AArch64
  if (simd->order[1].half.exp == nullptr) {
    std::printf("(no SIMD table here: the QUAKE_F16=auto measurement is not tested)\n");
    return;
  }
  Case c("QUAKE_F16=auto measurement: picks the table 8x faster, op by op, on either side");
  g_timed = &simd->order[1].half;
  const HalfKernels fast = *g_timed;
  const HalfKernels slow{slow_unary<0>, slow_unary<1>, slow_silu, slow_gelu, fast.glu};
  bool picked[4];
  const HalfKernels kept = faster_half_kernels(fast, slow, picked);
  for (int op = 0; op < 4; ++op) c.check(!picked[op], "%s: took the 8x slower lanes", kHalfLaneOpNames[op]);
  c.check(kept.exp == fast.exp && kept.sigmoid == fast.sigmoid && kept.silu == fast.silu && kept.gelu == fast.gelu,
          "entries other than the float32 lanes' kept");
  const HalfKernels took = faster_half_kernels(slow, fast, picked);
  for (int op = 0; op < 4; ++op) c.check(picked[op], "%s: kept the 8x slower float32 lanes", kHalfLaneOpNames[op]);
  c.check(took.exp == fast.exp && took.sigmoid == fast.sigmoid && took.silu == fast.silu && took.gelu == fast.gelu,
          "the faster lanes' entries not taken");
  c.check(took.glu == slow.glu, "Glu did not stay with the float32 lanes");
  // What the measurement costs a session (docs/ops.md), with two tables this
  // CPU runs standing in for the float32 and float16 lanes.
  const KernelTable* other = kernels_for(Isa::kAvx2);
  if (simd->isa == Isa::kAvx512 && other != nullptr) {
    const auto start = std::chrono::steady_clock::now();
    for (int order = 1; order <= 2; ++order) {
      faster_half_kernels(simd->order[order - 1].half, other->order[order - 1].half, picked);
    }
    const std::chrono::duration<double, std::milli> took_ms = std::chrono::steady_clock::now() - start;
    std::printf("QUAKE_F16=auto's measurement, orders 1 and 2 (AVX-512 against AVX2 as stand-ins): %.2f ms\n",
                took_ms.count());
  }
}

void print_errors() {
  std::printf(
      "\nmeasured max errors (exp: relative; sigmoid/silu/gelu/softmax/logsoftmax: absolute;\n"
      "softmax-rowsum: |sum - 1|; glu-silu/glu-gelu: |y - ref| / |b|, |a| <= 64;\n"
      "agree-rel: relative difference to the scalar table; f16-lanes: float16 lanes, emulated,\n"
      "exp relative (to 2^-14 below it), silu/gelu absolute beyond 2^-11 relative)\n");
  std::printf("%-28s %12s %12s %12s\n", "table op", "order 1", "order 2", "order 3");
  std::map<std::string, double[3]> rows;
  for (const auto& kv : g_max_err) {
    const std::string& k = kv.first;
    const size_t sp = k.rfind(' ');
    double* r = rows[k.substr(0, sp)];
    r[std::stoi(k.substr(sp + 1)) - 1] = kv.second;
  }
  for (const auto& kv : rows)
    std::printf("%-28s %12.4g %12.4g %12.4g\n", kv.first.c_str(), kv.second[0], kv.second[1], kv.second[2]);
}

}  // namespace

int main(int argc, char** argv) {
  // Line by line even into a file or pipe (CI logs): a crash keeps the cases before it.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const CacheSizes& caches = cache_sizes();
  std::printf("caches read at run time: L1D %zu KiB, L2 %zu KiB, L3 %zu KiB\n", caches.l1d / 1024, caches.l2 / 1024,
              caches.l3 / 1024);
  // "half-lanes": only the float16 lanes (for an emulated CPU, where the rest
  // would take hours: tools/run-sapphire-rapids.sh).
  if (argc > 1 && std::strcmp(argv[1], "half-lanes") == 0) {
    test_half_lanes_emulated();
    test_half_lanes_choice();
    test_half_lanes_isa();
    print_errors();
    std::printf("\n%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
  }
  const KernelTable* scalar = kernels_for(Isa::kScalar);
  // "exaq": only the EXAQ cases of every table (a few minutes under qemu instead of ten).
  if (argc > 1 && std::strcmp(argv[1], "exaq") == 0) {
    for (Isa isa : {Isa::kScalar, Isa::kNeon, Isa::kAvx2, Isa::kAvx512}) {
      if (const KernelTable* t = kernels_for(isa)) test_exaq(t, scalar);
    }
    test_exaq_levels();
    print_exaq_errors();
    std::printf("\n%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
  }
  std::mt19937 rng(20240917u);
  std::mt19937 glu_rng(15u);  // its own stream: the other tests' inputs stay as they were
  for (Isa isa : {Isa::kScalar, Isa::kNeon, Isa::kAvx2, Isa::kAvx512}) {
    const KernelTable* t = kernels_for(isa);
    if (t == nullptr) continue;
    std::printf("== table %s\n", t->name);
    {
      Case c(std::string(t->name) + ": table is complete and of its ISA");
      c.check(t->isa == isa && t->f16_to_f32 && t->f32_to_f16, "header");
      for (const OrderKernels& k : t->order) {
        c.check(k.exp && k.sigmoid && k.silu && k.gelu && k.softmax && k.logsoftmax && k.softmax_stats &&
                    k.softmax_finish && k.logsoftmax_finish && k.softmax_partial && k.scale && k.shift && k.glu,
                "missing entry");
      }
      c.check(t->softmax_exaq != nullptr, "missing softmax_exaq");
    }
    test_elementwise_accuracy(t, scalar, rng);
    test_subnormal_inputs(t);
    test_tails(t, rng);
    test_rows(t, scalar, rng);
    test_row_batches(t, rng);
    test_row_stats_limit_edge(t);
    test_two_pass_rows(t, rng);
    test_page_end(t);
    test_glu_accuracy(t, scalar, glu_rng);
    test_glu_tails(t, glu_rng);
    test_glu_page_end(t);
    test_f16(t, rng);
    test_half_kernels(t, glu_rng);
    test_exaq(t, scalar);
  }
  test_exaq_levels();
  test_isa_choice();
  test_half_lanes_emulated();
  test_half_lanes_choice();
  test_half_lanes_isa();
  print_errors();
  print_exaq_errors();
  std::printf("\n%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
