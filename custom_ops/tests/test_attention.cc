// Standalone test of com.quake Attention below the op layer (attention.h):
// the FlashAttention-2 block of every kernel table this machine can run
// (kernels_for), orders 1..3, against a long-double reference of ops.md, run
// through the same planning the op uses (tiles, tasks, the decode split and
// its combination); the bf16 block of precision "bfloat16" where the CPU has
// one, against the same reference and that of its bf16-rounded inputs; the
// online-softmax step of each SIMD table against the scalar definition; the
// broadcast layout and the tile choice. No framework:
// prints failures and the measured errors, then "N passed, M failed".
#include <algorithm>
#include <cfloat>
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

#include "attention.h"
#include "f16_scalar.h"
#include "kernels.h"

namespace {

using namespace quake;
using LD = long double;

// max |Y - reference| <= kAttentionAbs[order - 1] * max|V| (+ the float32
// rounding of large scores, see bound()). Order 2 is the contract's 2e-3
// (ops.md); the measured maxima are printed at the end.
constexpr double kAttentionAbs[3] = {3.0e-2, 2.0e-3, 1.0e-4};
// float16 inputs are exact in float; Y is rounded once to half (2^-11
// relative, 2^-25 absolute near 0).
constexpr double kHalfRel = 0x1p-11;
// Summation in float: the tile products and row sums of up to a few thousand terms.
constexpr double kSumRel = 2e-6;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

int g_passed = 0, g_failed = 0;
std::map<std::string, double> g_max_err;  // "table order" -> max |err| / max|V|

class Check {
 public:
  explicit Check(std::string name) : name_(std::move(name)) {}
  ~Check() {
    if (bad_ == 0) {
      ++g_passed;
    } else {
      ++g_failed;
      std::printf("FAIL %s: %d bad\n", name_.c_str(), bad_);
    }
  }
  bool operator()(bool ok, const char* fmt, ...) __attribute__((format(printf, 3, 4))) {
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

// ------------------------------- one head ----------------------------------
// The float16 image of a mask value: float's lowest becomes float16's,
// -65504, as a float16 export's finfo.min (the kernel reads it back as float's
// lowest, so fully masked rows stay uniform).
uint16_t half_mask(float f) { return f == -FLT_MAX ? 0xfbffu : scalar::float_to_half(f); }

enum class MaskKind { kNone, kPadding, kRandomNegInf, kRandomLowest, kRandom1e4, kRowsDead, kOneLive, kColumn };
const char* const kMaskNames[] = {"none", "padding", "-inf", "lowest", "-1e4", "dead rows", "one live key", "column"};

struct Problem {
  std::string name;
  size_t sq, skv, d, dv;
  float scale;
  bool causal;
  std::vector<float> q, k, v, mask;  // mask: mask_rows x mask_cols, or empty
  size_t mask_rows = 0, mask_cols = 0;
  // Reference.
  std::vector<LD> y;
  std::vector<int> kind;      // per row: 0 values, 1 no live key (Y = 0), 2 NaN
  std::vector<double> s_mag;  // per row: largest |score| among live, non-lowest keys
  std::vector<double> a_mag;  // per row: max over keys of scale * sum_c |q_c k_c| (the bf16 bound's A)
  double v_max = 0;
};

float mask_at(const Problem& p, size_t i, size_t j) {
  if (p.mask.empty()) return 0.0f;
  return p.mask[(p.mask_rows == 1 ? 0 : i) * p.mask_cols + (p.mask_cols == 1 ? 0 : j)];
}

// softmax(scale Q K^T + M, causal) V in long double, with ops.md's rules.
void reference(Problem& p) {
  p.y.assign(p.sq * p.dv, 0);
  p.kind.assign(p.sq, 0);
  p.s_mag.assign(p.sq, 0);
  p.a_mag.assign(p.sq, 0);
  p.v_max = 0;
  for (float x : p.v) p.v_max = std::max(p.v_max, static_cast<double>(std::fabs(x)));
  std::vector<LD> s(p.skv);
  for (size_t i = 0; i < p.sq; ++i) {
    LD m = -INFINITY;
    bool nan = false;
    for (size_t j = 0; j < p.skv; ++j) {
      LD dot = 0, abs_dot = 0;
      for (size_t c = 0; c < p.d; ++c) {
        dot += static_cast<LD>(p.q[i * p.d + c]) * p.k[j * p.d + c];
        abs_dot += std::fabs(static_cast<LD>(p.q[i * p.d + c]) * p.k[j * p.d + c]);
      }
      if (std::isfinite(abs_dot)) {
        p.a_mag[i] = std::max(p.a_mag[i], static_cast<double>(std::fabs(static_cast<LD>(p.scale)) * abs_dot));
      }
      LD x = static_cast<LD>(p.scale) * dot + mask_at(p, i, j);
      if (p.causal && static_cast<ptrdiff_t>(j) > static_cast<ptrdiff_t>(i + p.skv) - static_cast<ptrdiff_t>(p.sq)) {
        x = -INFINITY;
      }
      s[j] = x;
      nan |= std::isnan(x) || x == INFINITY;
      if (x > m) m = x;
      if (std::isfinite(x) && x > -1e30L) p.s_mag[i] = std::max(p.s_mag[i], static_cast<double>(std::fabs(x)));
    }
    if (nan) {
      p.kind[i] = 2;
      continue;
    }
    if (m == -INFINITY) {
      p.kind[i] = 1;
      continue;
    }
    LD sum = 0;
    for (size_t j = 0; j < p.skv; ++j) sum += std::exp(s[j] - m);
    for (size_t j = 0; j < p.skv; ++j) {
      const LD w = std::exp(s[j] - m) / sum;
      if (w == 0) continue;
      for (size_t c = 0; c < p.dv; ++c) p.y[i * p.dv + c] += w * p.v[j * p.dv + c];
    }
  }
}

Problem make_problem(const std::string& name, size_t sq, size_t skv, size_t d, size_t dv, bool causal, MaskKind mk,
                     std::mt19937& rng) {
  Problem p;
  p.name = name;
  p.sq = sq;
  p.skv = skv;
  p.d = d;
  p.dv = dv;
  p.causal = causal;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto fill = [&](std::vector<float>& x, size_t n, float sigma) {
    x.resize(n);
    for (float& f : x) f = nd(rng) * sigma;
  };
  fill(p.q, sq * d, 1.5f);  // scores of a few units: the exponential's whole range is used
  fill(p.k, skv * d, 1.5f);
  fill(p.v, skv * dv, 2.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  switch (mk) {
    case MaskKind::kNone:
      break;
    case MaskKind::kPadding:  // the last keys are padding, one row for all queries
      p.mask_rows = 1;
      p.mask_cols = skv;
      p.mask.assign(skv, 0.0f);
      for (size_t j = skv - skv / 3; j < skv && j > 0; ++j) p.mask[j] = -kInf;
      break;
    case MaskKind::kRandomNegInf:
    case MaskKind::kRandomLowest:
    case MaskKind::kRandom1e4: {
      const float value = mk == MaskKind::kRandomNegInf ? -kInf : (mk == MaskKind::kRandomLowest ? -FLT_MAX : -1e4f);
      p.mask_rows = sq;
      p.mask_cols = skv;
      p.mask.assign(sq * skv, 0.0f);
      for (float& f : p.mask) f = u(rng) < 0.4f ? value : nd(rng);
      for (size_t i = 0; i < sq; i += 5) {  // every fifth row fully masked
        for (size_t j = 0; j < skv; ++j) p.mask[i * skv + j] = value;
      }
      break;
    }
    case MaskKind::kRowsDead:  // -inf rows and -inf blocks of whole tiles
      p.mask_rows = sq;
      p.mask_cols = skv;
      p.mask.assign(sq * skv, 0.0f);
      for (size_t i = 0; i < sq; ++i) {
        for (size_t j = 0; j < skv; ++j) {
          if (i % 3 == 1 || (j / 32) % 2 == 1) p.mask[i * skv + j] = -kInf;
        }
      }
      break;
    case MaskKind::kOneLive:  // each row sees exactly one key
      p.mask_rows = sq;
      p.mask_cols = skv;
      p.mask.assign(sq * skv, -kInf);
      for (size_t i = 0; i < sq; ++i) p.mask[i * skv + (i * 7) % skv] = 0.5f;
      break;
    case MaskKind::kColumn:  // one value per query: -inf kills the row, finite values change nothing
      p.mask_rows = sq;
      p.mask_cols = 1;
      p.mask.resize(sq);
      for (size_t i = 0; i < sq; ++i) p.mask[i] = i % 4 == 3 ? -kInf : nd(rng);
      break;
  }
  reference(p);
  return p;
}

// ------------------------------ one run ------------------------------------
struct RunOptions {
  AttentionTiles tiles{0, 0};  // {0, 0}: from the caches
  size_t parallelism = 1;      // > (head, query block) pairs: decode split
  bool half = false;
  bool k_transposed = false;
  AttentionBlockFn block = nullptr;  // nullptr: the table's float32 block; else a bf16 block
  bool pack = true;                  // key tiles packed once (when plan_attention_packing packs)
};

int g_packed_runs = 0;  // runs whose key tiles were packed once

float* align64(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~static_cast<uintptr_t>(63));
}

// The op layer's pack step (op_kernels.cc), when `pack` allows it and the
// plan packs: every key tile of every distinct K/V pair of the heads, into a
// buffer first filled with NaN (a packed float the block reads but the pack
// step never wrote shows in Y). Returns that buffer's storage.
std::vector<float> pack_keys(const KernelTable* t, AttentionParams* p, AttentionHead* heads, size_t n, bool pack) {
  std::vector<float> storage;
  AttentionPacking pk;
  if (!pack || !plan_attention_packing(p, heads, n, &pk)) return storage;
  ++g_packed_runs;
  storage.assign(pk.floats() + 16, kNaN);
  attention_packing_assign(*p, pk, align64(storage.data()), heads, n);
  std::vector<float> scratch(attention_scratch_floats(*p));
  for (size_t source : pk.sources) {
    for (size_t tile = 0; tile < pk.tiles; ++tile) t->attention_pack(*p, heads[source], tile, scratch.data());
  }
  return storage;
}

std::vector<float> run(const KernelTable* t, int order, const Problem& pr, const RunOptions& opt, Check& check,
                       size_t* chunks) {
  AttentionParams p{};
  p.sq = pr.sq;
  p.skv = pr.skv;
  p.d = pr.d;
  p.dv = pr.dv;
  p.scale = pr.scale;
  p.causal = pr.causal;
  p.k_transposed = opt.k_transposed;
  p.half = opt.half;
  p.bf16 = opt.block != nullptr;
  p.mask_row_stride = pr.mask_rows <= 1 ? 0 : pr.mask_cols;
  p.mask_col_broadcast = pr.mask_cols == 1 && pr.skv != 1;
  p.tiles = opt.tiles.bq ? opt.tiles : choose_attention_tiles(cache_sizes(), pr.sq, pr.skv, pr.d, pr.dv);
  p.online_softmax = t->order[order - 1].online_softmax;
  p.f16_to_f32 = t->f16_to_f32;
  p.f32_to_f16 = t->f32_to_f16;

  std::vector<float> k = pr.k;
  if (opt.k_transposed) {
    for (size_t j = 0; j < pr.skv; ++j) {
      for (size_t c = 0; c < pr.d; ++c) k[c * pr.skv + j] = pr.k[j * pr.d + c];
    }
  }
  std::vector<float> y(pr.sq * pr.dv, kNaN);
  std::vector<uint16_t> hq, hk, hv, hm, hy(pr.sq * pr.dv);
  auto halves = [](const std::vector<float>& x) {
    std::vector<uint16_t> h(x.size());
    for (size_t i = 0; i < x.size(); ++i) h[i] = scalar::float_to_half(x[i]);
    return h;
  };
  AttentionHead head{pr.q.data(), k.data(), pr.v.data(), pr.mask.empty() ? nullptr : pr.mask.data(), y.data()};
  if (opt.half) {
    hq = halves(pr.q);
    hk = halves(k);
    hv = halves(pr.v);
    hm.resize(pr.mask.size());
    for (size_t i = 0; i < pr.mask.size(); ++i) hm[i] = half_mask(pr.mask[i]);
    head = {hq.data(), hk.data(), hv.data(), pr.mask.empty() ? nullptr : hm.data(), hy.data()};
  }

  AttentionTaskPlan plan;
  plan_attention_tasks(p, 1, opt.parallelism, &plan);
  *chunks = plan.chunks;
  const std::vector<float> packed = pack_keys(t, &p, &head, 1, opt.pack);
  // The scratch is exactly attention_scratch_floats long, between guards.
  const size_t n = attention_scratch_floats(p), guard = 64;
  std::vector<float> scratch(n + 2 * guard, -12345.0f);
  const AttentionBlockFn block = opt.block ? opt.block : t->attention_block;
  for (const AttentionTask& task : plan.tasks) block(p, head, task, scratch.data() + guard);
  for (size_t b = 0; b < (plan.chunks > 1 ? plan.blocks : 0); ++b) combine_attention_partials(p, &head, plan, b);
  bool guards = true;
  for (size_t i = 0; i < guard; ++i) guards &= scratch[i] == -12345.0f && scratch[guard + n + i] == -12345.0f;
  check(guards, "%s: the block wrote outside its scratch", pr.name.c_str());
  if (opt.half) {
    for (size_t i = 0; i < y.size(); ++i) y[i] = scalar::half_to_float(hy[i]);
  }
  return y;
}

// The bound of one element: the order's weight error times max|V|, the
// float32 rounding of the row's scores (a score s is off by up to 2^-24 |s|,
// its weight by that relative, so Y by 2^-23 |s| max|V|: large only for
// -1e4-style masks of fully masked rows), summation, and float16's rounding.
double bound(const Problem& p, size_t row, int order, bool half, double y_ref) {
  double b = (kAttentionAbs[order - 1] + 0x1p-23 * p.s_mag[row] + kSumRel) * p.v_max;
  if (half) b += kHalfRel * std::fabs(y_ref) + 0x1p-25 + kAttentionAbs[order - 1] * kHalfRel * p.v_max;
  return b;
}

void check_result(Check& check, const KernelTable* t, int order, const Problem& p, const std::vector<float>& y,
                  bool half, const char* variant) {
  double worst = 0;
  for (size_t i = 0; i < p.sq; ++i) {
    for (size_t c = 0; c < p.dv; ++c) {
      const float got = y[i * p.dv + c];
      if (p.kind[i] == 2) {
        check(std::isnan(got), "%s %s: row %zu holds a NaN/+inf score, Y[%zu] = %g", p.name.c_str(), variant, i, c,
              got);
        continue;
      }
      if (p.kind[i] == 1) {
        check(got == 0.0f, "%s %s: row %zu has no live key, Y[%zu] = %g", p.name.c_str(), variant, i, c, got);
        continue;
      }
      const LD ref = p.y[i * p.dv + c];
      const double err = static_cast<double>(std::fabs(got - ref));
      if (p.v_max > 0 && p.s_mag[i] < 1e3) worst = std::max(worst, err / p.v_max);
      check(err <= bound(p, i, order, half, static_cast<double>(ref)),
            "%s %s: Y[%zu][%zu] = %.9g, ref %.9Lg, err %g > %g", p.name.c_str(), variant, i, c, got, ref, err,
            bound(p, i, order, half, static_cast<double>(ref)));
    }
  }
  double& m = g_max_err[std::string(t->name) + (half ? " half" : " float") + " order " + std::to_string(order)];
  m = std::max(m, worst);
}

std::vector<Problem> problems(std::mt19937& rng) {
  std::vector<Problem> ps;
  struct Spec {
    size_t sq, skv, d, dv;
    bool causal;
    MaskKind mask;
  };
  const Spec specs[] = {
      {1, 1, 32, 32, false, MaskKind::kNone},
      {1, 7, 64, 64, false, MaskKind::kNone},
      {7, 7, 80, 48, true, MaskKind::kNone},
      {1, 1500, 64, 64, false, MaskKind::kNone},
      {1, 1500, 128, 128, false, MaskKind::kPadding},
      {7, 1500, 32, 64, true, MaskKind::kNone},
      {63, 65, 64, 64, false, MaskKind::kRandomNegInf},
      {65, 63, 128, 96, true, MaskKind::kNone},
      {64, 64, 64, 64, true, MaskKind::kNone},
      {65, 257, 80, 80, true, MaskKind::kPadding},
      {257, 257, 64, 64, false, MaskKind::kRandomLowest},
      {63, 257, 32, 32, false, MaskKind::kRandom1e4},
      {257, 63, 64, 32, true, MaskKind::kNone},
      {64, 1500, 64, 64, false, MaskKind::kRowsDead},
      {65, 65, 128, 128, false, MaskKind::kOneLive},
      {7, 65, 32, 16, true, MaskKind::kColumn},
      {257, 1500, 64, 64, true, MaskKind::kNone},
      {65, 64, 64, 64, false, MaskKind::kPadding},
      {300, 300, 32, 32, true, MaskKind::kNone},
  };
  for (const Spec& s : specs) {
    char name[128];
    std::snprintf(name, sizeof name, "Sq %zu Skv %zu D %zu Dv %zu%s mask %s", s.sq, s.skv, s.d, s.dv,
                  s.causal ? " causal" : "", kMaskNames[static_cast<int>(s.mask)]);
    ps.push_back(make_problem(name, s.sq, s.skv, s.d, s.dv, s.causal, s.mask, rng));
  }
  // Special scores and values: a NaN in Q (its row NaN), a NaN in K (every
  // row NaN), +inf in the mask (its row NaN), inf in V (its columns), zero D.
  Problem nan_q = make_problem("NaN in a Q row", 33, 70, 32, 32, false, MaskKind::kNone, rng);
  nan_q.q[5 * 32 + 3] = kNaN;
  reference(nan_q);
  ps.push_back(nan_q);
  Problem nan_k = make_problem("NaN in a K row", 9, 70, 32, 32, false, MaskKind::kNone, rng);
  nan_k.k[40 * 32 + 1] = kNaN;
  reference(nan_k);
  ps.push_back(nan_k);
  Problem inf_m = make_problem("+inf in the mask", 20, 70, 32, 32, true, MaskKind::kRandomNegInf, rng);
  inf_m.mask[3 * 70 + 2] = kInf;
  reference(inf_m);
  ps.push_back(inf_m);
  // The worst case of the weights' error: two keys whose score gap sweeps
  // [-6, 6] (every fraction of the exponent), values +1 and -1.
  Problem pairs = make_problem("pairs: score gaps -6..6, V = +-1", 4001, 2, 1, 1, false, MaskKind::kNone, rng);
  for (size_t i = 0; i < pairs.sq; ++i) pairs.q[i] = -6.0f + 12.0f * static_cast<float>(i) / 4000.0f;
  pairs.k = {0.0f, 1.0f};
  pairs.v = {1.0f, -1.0f};
  pairs.scale = 1.0f;
  reference(pairs);
  ps.push_back(pairs);
  ps.push_back(make_problem("D 0", 5, 9, 0, 8, false, MaskKind::kNone, rng));
  ps.push_back(make_problem("Skv 0", 5, 0, 8, 8, false, MaskKind::kNone, rng));
  ps.push_back(make_problem("Sq > Skv causal: leading rows see nothing", 40, 9, 16, 16, true, MaskKind::kNone, rng));
  return ps;
}

// ----------------------------- the block -----------------------------------
// The float16 images of the problems.
std::vector<Problem> half_images(const std::vector<Problem>& ps) {
  std::vector<Problem> out = ps;
  for (Problem& p : out) {
    for (auto* x : {&p.q, &p.k, &p.v}) {
      for (float& f : *x) f = scalar::half_to_float(scalar::float_to_half(f));
    }
    for (float& f : p.mask) f = f == -FLT_MAX ? f : scalar::half_to_float(scalar::float_to_half(f));
    reference(p);
  }
  return out;
}

void test_block(const KernelTable* t, const std::vector<Problem>& ps, const std::vector<Problem>& half_ps) {
  // Key tiles are packed once wherever Sq exceeds the tile's query rows
  // (RunOptions::pack); "per-tile packing" keeps the path that packs them
  // inside each product at small tiles, where every problem would pack (at
  // order 2 only: the products do not depend on the order, and qemu is slow).
  const RunOptions variants[] = {
      {},                                           // tiles from the caches
      {{16, 48}, 1, false, false},                  // small tiles: every length straddles blocks
      {{16, 48}, 1, false, false, nullptr, false},  // the same, per-tile packing
      {{16, 32}, 64, false, true},                  // decode split, K transposed
      {{0, 0}, 1, true, false},                     // float16
      {{32, 16}, 16, true, true},                   // float16, split, K transposed
      {{32, 16}, 1, true, true, nullptr, false},    // float16, K transposed, per-tile packing
  };
  const char* const names[] = {"cache tiles", "tiles 16x48",       "tiles 16x48 per-tile packing", "split, K^T",
                               "float16",     "float16 split K^T", "float16 K^T per-tile packing"};
  for (int order = 1; order <= 3; ++order) {
    for (size_t vi = 0; vi < sizeof variants / sizeof variants[0]; ++vi) {
      if (!variants[vi].pack && order != 2) continue;
      char name[160];
      std::snprintf(name, sizeof name, "%s order %d attention, %s: %zu problems vs reference", t->name, order,
                    names[vi], ps.size());
      Check check(name);
      size_t split = 0;
      const int packed_before = g_packed_runs;
      for (const Problem& p : variants[vi].half ? half_ps : ps) {
        size_t chunks = 1;
        const std::vector<float> y = run(t, order, p, variants[vi], check, &chunks);
        split += chunks > 1;
        check_result(check, t, order, p, y, variants[vi].half, names[vi]);
      }
      if (variants[vi].parallelism > 1) check(split > 0, "no problem was split");
      const int packed = g_packed_runs - packed_before;
      check(variants[vi].pack ? packed > 0 : packed == 0, "%d problems packed their key tiles once", packed);
    }
  }
}

// A split row's chunks take their exponentials against their own maxima, so
// split and unsplit results differ by up to twice the order's bound, not more.
void test_split_agrees(const KernelTable* t, std::mt19937& rng) {
  Check check(std::string(t->name) + " attention: decode split and one task per row agree within the bound");
  Problem p = make_problem("decode", 1, 1500, 64, 64, false, MaskKind::kPadding, rng);
  for (int order = 1; order <= 3; ++order) {
    size_t c1 = 0, c2 = 0;
    const std::vector<float> one = run(t, order, p, {{1, 64}, 1, false, false}, check, &c1);
    const std::vector<float> many = run(t, order, p, {{1, 64}, 32, false, false}, check, &c2);
    check(c1 == 1 && c2 > 1, "chunks %zu / %zu", c1, c2);
    for (size_t i = 0; i < one.size(); ++i) {
      check(std::fabs(one[i] - many[i]) <= 2 * (kAttentionAbs[order - 1] + kSumRel) * p.v_max,
            "order %d Y[%zu]: %g vs split %g", order, i, one[i], many[i]);
    }
  }
}

// --------------------------- the online step --------------------------------
// Each SIMD table's step against the scalar definition on rows of 1..67
// columns with masks, causal limits and special scores: p within 1e-6
// relative, m and rescale exact, l within the float sum's bound; nothing
// written past the tile's columns.
void test_online_step(const KernelTable* t, const KernelTable* scalar, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (int order = 1; order <= 3; ++order) {
    Check check(std::string(t->name) + " order " + std::to_string(order) + " online softmax step vs scalar");
    for (size_t cols = 1; cols <= 67; ++cols) {
      const size_t rows = 9, ld = cols + 5;
      std::vector<float> s(rows * ld), mask(rows * cols);
      for (float& f : s) f = nd(rng);
      for (float& f : mask) f = nd(rng) > 3.0f ? -kInf : 0.0f;
      s[2 * ld + cols / 2] = kNaN;                                   // row 2: NaN score
      s[3 * ld + cols - 1] = kInf;                                   // row 3: +inf score
      for (size_t j = 0; j < cols; ++j) mask[4 * cols + j] = -kInf;  // row 4: nothing live
      mask[5 * cols + cols - 1] = -FLT_MAX;                          // row 5: a lowest mask
      for (ptrdiff_t diag : {static_cast<ptrdiff_t>(cols), static_cast<ptrdiff_t>(cols / 2) - 4}) {
        for (bool with_mask : {false, true}) {
          std::vector<float> a = s, b = s;
          std::vector<float> ma(rows), la(rows), ra(rows), mb(rows), lb(rows), rb(rows);
          for (size_t r = 0; r < rows; ++r) {
            ma[r] = mb[r] = r == 6 ? -kInf : (r == 7 ? kNaN : nd(rng));  // row 7: already NaN
            la[r] = lb[r] = r == 6 ? 0.0f : 2.5f;
          }
          const float* mk = with_mask ? mask.data() : nullptr;
          scalar->order[order - 1].online_softmax(a.data(), ld, rows, cols, diag, 0.7f, mk, cols, ma.data(), la.data(),
                                                  ra.data());
          t->order[order - 1].online_softmax(b.data(), ld, rows, cols, diag, 0.7f, mk, cols, mb.data(), lb.data(),
                                             rb.data());
          for (size_t r = 0; r < rows; ++r) {
            const bool same_m = (std::isnan(ma[r]) && std::isnan(mb[r])) || ma[r] == mb[r];
            const bool same_l = (std::isnan(la[r]) && std::isnan(lb[r])) ||
                                std::fabs(la[r] - lb[r]) <= 4e-7 * (std::fabs(la[r]) + 1) * std::sqrt(cols + 1.0);
            check(same_m && same_l && ra[r] == rb[r], "cols %zu diag %td row %zu: m %g/%g l %g/%g rescale %g/%g", cols,
                  diag, r, ma[r], mb[r], la[r], lb[r], ra[r], rb[r]);
            for (size_t j = 0; j < ld; ++j) {
              const float x = a[r * ld + j], y = b[r * ld + j];
              const bool ok = j >= cols ? y == s[r * ld + j] : std::fabs(x - y) <= 1e-6f * std::fabs(x) + 1e-37f;
              check(ok, "cols %zu diag %td row %zu col %zu: p %g vs scalar %g", cols, diag, r, j, y, x);
            }
          }
        }
      }
    }
  }
}

// ------------------------------ planning ------------------------------------
void test_layout() {
  Check check("attention layout: broadcast, GQA, mask strides, refusals");
  AttentionLayout l;
  // GQA: 8 query heads over 2 key/value heads, a padding mask [B, 1, 1, Skv].
  AttentionShapes s{{2, 8, 5, 16}, {2, 2, 7, 16}, {2, 2, 7, 12}, {2, 1, 1, 7}, true, false};
  check(plan_attention_layout(s, &l).empty(), "GQA refused");
  check(l.out_shape == std::vector<int64_t>({2, 8, 5, 12}), "GQA out shape");
  check(l.q_off.size() == 16 && l.k_off[3] == 0 && l.k_off[4] == 7 * 16 && l.k_off[8] == 2 * 7 * 16 &&
            l.v_off[7] == 7 * 12 && l.q_off[9] == 9 * 5 * 16 && l.mask_off[9] == 7 && l.mask_row_stride == 0,
        "GQA offsets");
  // Q broadcast over a batch of K/V; mask [Sq, 1].
  s = {{1, 3, 4, 8}, {5, 3, 6, 8}, {5, 3, 6, 8}, {4, 1}, true, false};
  check(plan_attention_layout(s, &l).empty(), "batch broadcast refused");
  check(l.out_shape == std::vector<int64_t>({5, 3, 4, 8}) && l.q_off[4] == 1 * 4 * 8 && l.k_off[4] == 4 * 6 * 8 &&
            l.mask_col_broadcast && l.mask_row_stride == 1,
        "batch broadcast offsets");
  // K transposed.
  s = {{2, 4, 8}, {2, 8, 9}, {2, 9, 3}, {}, false, true};
  check(plan_attention_layout(s, &l).empty() && l.skv == 9 && l.out_shape == std::vector<int64_t>({2, 4, 3}),
        "k_transposed");
  // Decode with GQA folds each group's query heads into the rows of one head.
  s = {{2, 8, 1, 16}, {2, 2, 7, 16}, {2, 2, 7, 16}, {2, 1, 1, 7}, true, false};
  check(plan_attention_layout(s, &l).empty() && fold_decode_groups(&l), "GQA decode not folded");
  check(l.sq == 4 && l.q_off.size() == 4 && l.q_off[1] == 4 * 16 && l.q_off[3] == 12 * 16 && l.k_off[1] == 7 * 16 &&
            l.k_off[2] == 2 * 7 * 16 && l.mask_off[1] == 0 && l.mask_off[2] == 7 && l.mask_row_stride == 0 &&
            l.out_shape == std::vector<int64_t>({2, 8, 1, 16}),
        "GQA decode fold: sq %zu heads %zu", l.sq, l.q_off.size());
  s = {{1, 6, 1, 8}, {1, 1, 9, 8}, {1, 1, 9, 8}, {1, 6, 1, 9}, true, false};  // MQA, a mask row per head
  check(plan_attention_layout(s, &l).empty() && fold_decode_groups(&l) && l.sq == 6 && l.q_off.size() == 1 &&
            l.mask_row_stride == 9,
        "MQA decode with per-head mask rows");
  for (const AttentionShapes& no : {AttentionShapes{{1, 4, 1, 8}, {1, 4, 9, 8}, {1, 4, 9, 8}, {}, false, false},
                                    AttentionShapes{{1, 4, 2, 8}, {1, 2, 9, 8}, {1, 2, 9, 8}, {}, false, false}}) {
    check(plan_attention_layout(no, &l).empty() && !fold_decode_groups(&l) && l.q_off.size() == 4,
          "folded without shared K/V heads or with Sq > 1");
  }
  const AttentionShapes bad[] = {
      {{2, 4, 8}, {2, 9, 7}, {2, 9, 3}, {}, false, false},           // D differs
      {{2, 4, 8}, {2, 9, 8}, {2, 10, 3}, {}, false, false},          // Skv differs
      {{6, 4, 8}, {4, 9, 8}, {4, 9, 3}, {}, false, false},           // 4 heads do not divide 6
      {{3, 2, 4, 8}, {2, 2, 9, 8}, {2, 2, 9, 3}, {}, false, false},  // batch 3 vs 2
      {{2, 4, 8}, {2, 9, 8}, {2, 9, 3}, {4, 5}, true, false},        // mask columns
      {{8}, {9, 8}, {9, 3}, {}, false, false},                       // Q rank 1
  };
  for (const AttentionShapes& b : bad) {
    const std::string e = plan_attention_layout(b, &l);
    check(!e.empty() && e.find("Q [") != std::string::npos, "bad shapes accepted or not named: '%s'", e.c_str());
  }
}

void test_tiles() {
  Check check("attention tiles from the caches");
  const CacheSizes& c = cache_sizes();
  check(c.l1d >= 4096 && c.l2 >= c.l1d, "cache sizes %zu / %zu", c.l1d, c.l2);
  std::printf("caches: L1d %zu KiB, L2 %zu KiB\n", c.l1d >> 10, c.l2 >> 10);
  for (CacheSizes cs :
       {c, CacheSizes{32 << 10, 1 << 20, 0}, CacheSizes{48 << 10, 2 << 20, 0}, CacheSizes{64 << 10, 512 << 10, 0}}) {
    for (size_t d : {32, 64, 80, 128, 256}) {
      const AttentionTiles t = choose_attention_tiles(cs, 4096, 4096, d, d);
      const size_t working = 4 * (2 * t.bq * t.bk + t.bq * 3 * d + 2 * t.bk * 2 * d);
      check(t.bq >= 16 && t.bq <= 128 && (t.bq & (t.bq - 1)) == 0 && t.bk % 16 == 0 && t.bk >= 16 &&
                (working <= cs.l2 / 2 || t.bk == 16) && 4 * t.bq * 3 * d <= cs.l2 / 4,
            "L1 %zu L2 %zu d %zu: tiles %zu x %zu, working set %zu", cs.l1d, cs.l2, d, t.bq, t.bk, working);
      if (cs.l1d == c.l1d && cs.l2 == c.l2) std::printf("tiles for d = dv = %zu: %zu x %zu\n", d, t.bq, t.bk);
    }
    const AttentionTiles small = choose_attention_tiles(cs, 1, 7, 64, 64);
    check(small.bq == 1 && small.bk == 7, "short sequences: tiles %zu x %zu", small.bq, small.bk);
  }
}

// --------------------------- precision bfloat16 -----------------------------
// bf16 keeps 8 significant bits: rounding to nearest even changes a value by
// at most u = 2^-8 of itself. The bf16 block rounds Q, K and V (and P for
// P V); products are exact in float32 and summed in float32. Per row, with
// A = scale * max_j sum_c |q_c k_jc| (a_mag):
//  - a score moves by at most D = (2u + u^2) A (Q and K rounded) plus the
//    float32 sum's d 2^-24 A, so each weight by a factor within e^(+-2D) and
//    Y by at most (e^(2D) - 1) max|V|;
//  - rounding V and P moves Y by at most u max|V| each;
// so against the float32 definition (the long-double reference of Q, K, V):
//   |Y_bf16 - Y| <= (order bound + 2u + e^(2D) - 1 + float32 terms) max|V|
// (first order: (order bound + 2^-7 + 2^-6 A) max|V|; docs/ops.md states it).
// That bound is loose by construction (it adds every rounding with one sign),
// so the block is also held to the reference of the bf16-rounded Q, K, V,
// where only P's rounding and the float32 sums remain:
//   |Y_bf16 - Y(bf16 Q, K, V)| <= (order bound + u + d 2^-23 A + float32 terms) max|V|.
constexpr double kBf16U = 0x1p-8;

// Round to bf16 (nearest even) and back, as VCVTNEPS2BF16 does: NaN stays
// NaN, float32 denormals become 0.
float bf16_round(float x) {
  if (std::isnan(x)) return x;
  if (std::fabs(x) < FLT_MIN) return std::copysign(0.0f, x);
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  bits &= 0xffff0000u;
  std::memcpy(&x, &bits, 4);
  return x;
}

Problem bf16_image(const Problem& in) {
  Problem p = in;
  for (auto* x : {&p.q, &p.k, &p.v}) {
    for (float& f : *x) f = bf16_round(f);
  }
  reference(p);
  return p;
}

double float_terms(const Problem& p, size_t row) { return 0x1p-23 * p.s_mag[row] + kSumRel; }

// Against the float32 definition (p: the reference of the unrounded inputs).
double bf16_bound_f32(const Problem& p, size_t row, int order, bool half, double y_ref) {
  const double dd = (2 * kBf16U + kBf16U * kBf16U + p.d * 0x1p-24) * p.a_mag[row];
  double b = (kAttentionAbs[order - 1] + 2 * kBf16U + std::expm1(2 * dd) + float_terms(p, row)) * p.v_max;
  if (half) b += kHalfRel * std::fabs(y_ref) + 0x1p-25 + kHalfRel * 0.1 * p.v_max;
  return b;
}

// Against the reference of the bf16-rounded Q, K, V (pb).
double bf16_bound_emulated(const Problem& pb, size_t row, int order, bool half, double y_ref) {
  double b =
      (kAttentionAbs[order - 1] * (1 + kBf16U) + kBf16U + pb.d * 0x1p-23 * pb.a_mag[row] + float_terms(pb, row)) *
      pb.v_max;
  if (half) b += kHalfRel * std::fabs(y_ref) + 0x1p-25 + kHalfRel * 0.1 * pb.v_max;
  return b;
}

// Records the measured maxima under "<engine> <float|half> order <n><group>".
void check_bf16_result(Check& check, const char* engine, int order, const Problem& p, const Problem& pb,
                       const std::vector<float>& y, bool half, const char* variant, const char* group = "") {
  double worst_f32 = 0, worst_emu = 0;
  for (size_t i = 0; i < p.sq; ++i) {
    for (size_t c = 0; c < p.dv; ++c) {
      const float got = y[i * p.dv + c];
      if (pb.kind[i] == 2) {
        check(std::isnan(got), "%s %s: row %zu holds a NaN/+inf score, Y[%zu] = %g", p.name.c_str(), variant, i, c,
              got);
        continue;
      }
      if (pb.kind[i] == 1) {
        check(got == 0.0f, "%s %s: row %zu has no live key, Y[%zu] = %g", p.name.c_str(), variant, i, c, got);
        continue;
      }
      const LD ref = p.y[i * p.dv + c], ref_b = pb.y[i * p.dv + c];
      const double err = static_cast<double>(std::fabs(got - ref)), err_b = static_cast<double>(std::fabs(got - ref_b));
      if (p.v_max > 0 && p.s_mag[i] < 1e3) {
        worst_f32 = std::max(worst_f32, err / p.v_max);
        worst_emu = std::max(worst_emu, err_b / pb.v_max);
      }
      const double b = bf16_bound_f32(p, i, order, half, static_cast<double>(ref));
      const double bb = bf16_bound_emulated(pb, i, order, half, static_cast<double>(ref_b));
      check(err <= b, "%s %s: Y[%zu][%zu] = %.9g, float32 ref %.9Lg, err %g > %g", p.name.c_str(), variant, i, c, got,
            ref, err, b);
      check(err_b <= bb, "%s %s: Y[%zu][%zu] = %.9g, bf16-input ref %.9Lg, err %g > %g", p.name.c_str(), variant, i, c,
            got, ref_b, err_b, bb);
    }
  }
  const std::string key = std::string(engine) + (half ? " half" : " float") + " order " + std::to_string(order) + group;
  double& m = g_max_err[key + " vs f32"];
  m = std::max(m, worst_f32);
  double& mb = g_max_err[key + " vs bf16 in"];
  mb = std::max(mb, worst_emu);
}

void test_gqa(const KernelTable* t, AttentionBlockFn block, const char* engine, std::mt19937& rng);

// A bf16 engine of table t: its name (attention_bf16_block's *engine) and block.
struct Bf16Engine {
  std::string name;
  AttentionBlockFn block;
};

// Restores an environment variable to the value it had at construction.
class EnvRestore {
 public:
  explicit EnvRestore(const char* name) : name_(name) {
    const char* v = std::getenv(name);
    had_ = v != nullptr;
    if (had_) value_ = v;
  }
  ~EnvRestore() {
    if (had_) {
      setenv(name_, value_.c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  bool had_ = false;
  std::string value_;
};

// Every bf16 engine of table t, one per QUAKE_NEON_BF16 choice that gives a
// different block (AArch64 with FEAT_BF16: BFMMLA by default, BFDOT on
// request; x86: the one AVX512-BF16 engine); empty when t has none. Checks
// the names each choice reports.
std::vector<Bf16Engine> bf16_engines(const KernelTable* t) {
  EnvRestore restore("QUAKE_NEON_BF16");
  std::vector<Bf16Engine> out;
  const char* const choices[] = {nullptr, "auto", "bfmmla", "bfdot"};
  Check check(std::string(t->name) + " precision bfloat16: engines named");
  for (const char* choice : choices) {
    if (choice == nullptr) {
      unsetenv("QUAKE_NEON_BF16");
    } else {
      setenv("QUAKE_NEON_BF16", choice, 1);
    }
    const char* engine = nullptr;
    const AttentionBlockFn block = attention_bf16_block(t, &engine);
    const std::string name = engine ? engine : "(null)";
    const char* label = choice ? choice : "unset";
    if (block == nullptr) {
      check(name == "float32 fallback", "QUAKE_NEON_BF16 %s: no block, engine '%s'", label, name.c_str());
      continue;
    }
    if (t->isa == Isa::kNeon) {
      const char* want = choice && std::strcmp(choice, "bfdot") == 0 ? "NEON BFDOT" : "NEON BFMMLA";
      check(name == want, "QUAKE_NEON_BF16 %s: engine '%s', want '%s'", label, name.c_str(), want);
    } else {
      check(name == "AVX512-BF16", "QUAKE_NEON_BF16 %s: engine '%s'", label, name.c_str());
    }
    bool seen = false;
    for (const Bf16Engine& e : out) {
      if (e.block == block) {
        seen = true;
        check(e.name == name, "one block named '%s' and '%s'", e.name.c_str(), name.c_str());
      }
    }
    if (!seen) out.push_back({name, block});
  }
  return out;
}

// QUAKE_NEON_BF16 is checked on every machine: an unknown value is refused
// by select_kernels with a sentence naming the variable and the choices.
void test_neon_bf16_variable() {
  EnvRestore restore("QUAKE_NEON_BF16");
  Check check("QUAKE_NEON_BF16: unknown value refused, known values taken");
  setenv("QUAKE_NEON_BF16", "bfmmmla", 1);
  const char* error = nullptr;
  check(select_kernels(&error) == nullptr, "QUAKE_NEON_BF16=bfmmmla accepted");
  const std::string message = error ? error : "";
  check(message == "QUAKE_NEON_BF16='bfmmmla' is not one of auto, bfmmla, bfdot", "message '%s'", message.c_str());
  for (const char* ok : {"", "auto", "bfmmla", "bfdot"}) {
    setenv("QUAKE_NEON_BF16", ok, 1);
    check(select_kernels(&error) != nullptr && error == nullptr, "QUAKE_NEON_BF16='%s' refused", ok);
  }
}

// Outputs of two engines agree bit for bit (NaN where NaN). BFMMLA is two
// BFDOT steps per element over the same pairs in the same order (Arm ARM), so
// the NEON engines must match exactly.
size_t bitwise_differences(const std::vector<float>& a, const std::vector<float>& b) {
  size_t bad = a.size() != b.size() ? 1 : 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    bad += !(std::memcmp(&a[i], &b[i], sizeof(float)) == 0 || (std::isnan(a[i]) && std::isnan(b[i])));
  }
  return bad;
}

void test_bf16_block(const KernelTable* t, const std::vector<Bf16Engine>& engines, const std::vector<Problem>& ps,
                     const std::vector<Problem>& half_ps, std::mt19937& rng) {
  std::vector<Problem> pb, half_pb;
  for (const Problem& p : ps) pb.push_back(bf16_image(p));
  for (const Problem& p : half_ps) half_pb.push_back(bf16_image(p));
  const RunOptions variants[] = {
      {{0, 0}, 1, false, false, nullptr},    // tiles from the caches
      {{16, 48}, 1, false, false, nullptr},  // small tiles: every length straddles blocks
      {{7, 33}, 1, false, true, nullptr},    // odd tiles: row tails below 8, odd key tiles (P pairs padded), K^T
      {{16, 32}, 64, false, true, nullptr},  // decode split, K transposed
      {{0, 0}, 1, true, false, nullptr},     // float16
      {{32, 16}, 16, true, true, nullptr},   // float16, split, K transposed
  };
  const char* const names[] = {"cache tiles", "tiles 16x48", "tiles 7x33 K^T",
                               "split, K^T",  "float16",     "float16 split K^T"};
  for (int order = 1; order <= 3; ++order) {
    for (size_t vi = 0; vi < sizeof variants / sizeof variants[0]; ++vi) {
      std::vector<std::vector<float>> first;  // the first engine's outputs, to compare the others with
      for (size_t ei = 0; ei < engines.size(); ++ei) {
        const Bf16Engine& e = engines[ei];
        char name[200];
        std::snprintf(name, sizeof name, "%s order %d attention bf16 (%s), %s: %zu problems vs references", t->name,
                      order, e.name.c_str(), names[vi], ps.size());
        Check check(name);
        RunOptions opt = variants[vi];
        opt.block = e.block;
        const bool half = opt.half;
        size_t split = 0;
        for (size_t i = 0; i < ps.size(); ++i) {
          size_t chunks = 1;
          const Problem& p = half ? half_ps[i] : ps[i];
          const std::vector<float> y = run(t, order, p, opt, check, &chunks);
          split += chunks > 1;
          check_bf16_result(check, e.name.c_str(), order, p, half ? half_pb[i] : pb[i], y, half, names[vi]);
          if (ei == 0) {
            first.push_back(y);
          } else {
            const size_t bad = bitwise_differences(first[i], y);
            check(bad == 0, "%s %s: %zu elements differ from %s", p.name.c_str(), names[vi], bad,
                  engines[0].name.c_str());
          }
        }
        if (opt.parallelism > 1) check(split > 0, "no problem was split");
      }
    }
  }
  // Every engine on the same GQA data (a copy of the generator each).
  for (const Bf16Engine& e : engines) {
    std::mt19937 same = rng;
    test_gqa(t, e.block, e.name.c_str(), same);
  }
}

// Every tail of the float32 products with key tiles packed once (Eigen's
// micro-kernel panels of its register rows and columns, called directly):
// query rows 1..17, keys 1..17, D 1..12, Dv 1..17, causal rows and masks, at
// 3 x 5 tiles (every tile a tail) packed once with K as given and with K^T,
// and packed per product, against the references.
// Sq and Skv 1..17 with D 1..12 and Dv 1..17 varying along, some causal,
// masks of four kinds: every tail of the tile products' register blocks.
std::vector<Problem> tail_problems(std::mt19937& rng) {
  const MaskKind masks[] = {MaskKind::kNone, MaskKind::kRandomNegInf, MaskKind::kPadding, MaskKind::kColumn};
  std::vector<Problem> ps;
  for (size_t sq = 1; sq <= 17; ++sq) {
    for (size_t skv = 1; skv <= 17; ++skv) {
      const size_t d = 1 + (sq + 2 * skv) % 12, dv = 1 + (3 * sq + skv) % 17;
      const bool causal = (sq + skv) % 3 == 0;
      const MaskKind mk = masks[(sq * 7 + skv) % 4];
      char name[128];
      std::snprintf(name, sizeof name, "tails: Sq %zu Skv %zu D %zu Dv %zu%s mask %s", sq, skv, d, dv,
                    causal ? " causal" : "", kMaskNames[static_cast<int>(mk)]);
      ps.push_back(make_problem(name, sq, skv, d, dv, causal, mk, rng));
    }
  }
  return ps;
}

void test_float_tails(const KernelTable* t, std::mt19937& rng) {
  const std::vector<Problem> ps = tail_problems(rng);
  const RunOptions variants[] = {{{3, 5}, 1, false, false, nullptr, true},
                                 {{3, 5}, 1, false, true, nullptr, true},
                                 {{3, 5}, 1, false, false, nullptr, false}};
  const char* const names[] = {"packed once", "packed once, K^T", "per-tile packing"};
  for (size_t vi = 0; vi < 3; ++vi) {
    Check check(std::string(t->name) + " attention float32, tiles 3x5 " + names[vi] + ": " + std::to_string(ps.size()) +
                " tail problems vs references");
    for (const Problem& p : ps) {
      size_t chunks = 1;
      check_result(check, t, 2, p, run(t, 2, p, variants[vi], check, &chunks), false, names[vi]);
    }
  }
}

// A causal block's last packed tile multiplied to the register panel past
// its limit (attention_flash.h, packed_row_prefix): 16-row query blocks over
// 96-key tiles, so the limit falls inside a tile's first panels on every
// ISA (panels of 8 to 48 rows), packed once against packed per product.
void test_causal_prefix(const KernelTable* t, std::mt19937& rng) {
  Check check(std::string(t->name) + " attention float32: causal blocks over tiles packed once, to the panel");
  const Problem p = make_problem("causal Sq 200 Skv 200 D 8", 200, 200, 8, 8, true, MaskKind::kNone, rng);
  const Problem padded =
      make_problem("causal Sq 150 Skv 200 D 24 Dv 40", 150, 200, 24, 40, true, MaskKind::kPadding, rng);
  for (const Problem* pr : {&p, &padded}) {
    for (bool pack : {true, false}) {
      const int before = g_packed_runs;
      size_t chunks = 1;
      const RunOptions opt{{16, 96}, 1, false, false, nullptr, pack};
      check_result(check, t, 2, *pr, run(t, 2, *pr, opt, check, &chunks), false, pack ? "packed once" : "per product");
      check((g_packed_runs > before) == pack, "%s: packed once %d", pr->name.c_str(), g_packed_runs - before);
    }
  }
}

// Every tail of the micro-kernels: query rows 1..17 (row blocks of 8, the
// BFMMLA row pairs), keys 1..17 (S's column tails below 8, P V's reduction
// tails of 1..3 values past a quad and odd pairs), head dims D 1..12 (Q K^T's
// reduction tails) and Dv 1..17 (P V's column tails), with causal rows and
// masks, at the cache tiles and at 3 x 5 tiles (every tile a tail), each
// engine against the references with the bounds above and the engines
// against each other bit for bit.
void test_bf16_tails(const KernelTable* t, const std::vector<Bf16Engine>& engines, std::mt19937& rng) {
  const std::vector<Problem> ps = tail_problems(rng);
  std::vector<Problem> pb;
  for (const Problem& p : ps) pb.push_back(bf16_image(p));
  const RunOptions variants[] = {{{0, 0}, 1, false, false, nullptr}, {{3, 5}, 1, false, true, nullptr}};
  const char* const names[] = {"cache tiles", "tiles 3x5 K^T"};
  const int order = 2;
  for (size_t vi = 0; vi < 2; ++vi) {
    std::vector<std::vector<float>> first;
    for (size_t ei = 0; ei < engines.size(); ++ei) {
      const Bf16Engine& e = engines[ei];
      Check check(std::string(t->name) + " attention bf16 (" + e.name + "), " + names[vi] + ": " +
                  std::to_string(ps.size()) + " tail problems vs references");
      RunOptions opt = variants[vi];
      opt.block = e.block;
      for (size_t i = 0; i < ps.size(); ++i) {
        size_t chunks = 1;
        const std::vector<float> y = run(t, order, ps[i], opt, check, &chunks);
        check_bf16_result(check, e.name.c_str(), order, ps[i], pb[i], y, false, names[vi], " tails");
        if (ei == 0) {
          first.push_back(y);
        } else {
          const size_t bad = bitwise_differences(first[i], y);
          check(bad == 0, "%s %s: %zu elements differ from %s", ps[i].name.c_str(), names[vi], bad,
                engines[0].name.c_str());
        }
      }
    }
  }
}

// Grouped-query attention through the op's planning with a bf16 block, or
// with block nullptr the table's float32 block (Sq 200 > bq: the key tiles of
// each key/value head packed once for its 4 query heads, as the op layer
// does): Q
// [1, 8, Sq, D] over K, V [1, 2, Skv, D] (query head h reads key/value head
// h / 4), a padding mask [1, 1, 1, Skv]; Sq 1 takes the decode fold (the 4
// heads of a group become the rows of one task), and parallelism 16 (more
// than the query blocks) the key split. Each query head is checked against
// its own reference.
void test_gqa(const KernelTable* t, AttentionBlockFn block, const char* engine, std::mt19937& rng) {
  const bool bf16 = block != nullptr;
  if (!bf16) block = t->attention_block;
  for (size_t sq : {1, 2, 33, 200}) {
    for (size_t parallelism : {1, 16}) {
      const size_t h = 8, hkv = 2, skv = 300, d = 64, order = 2;
      char name[160];
      std::snprintf(name, sizeof name, "%s attention %s (%s): GQA 8/2 heads, Sq %zu, parallelism %zu", t->name,
                    bf16 ? "bf16" : "float32", engine, sq, parallelism);
      Check check(name);
      std::normal_distribution<float> nd(0.0f, 1.5f);
      std::vector<float> q(h * sq * d), k(hkv * skv * d), v(hkv * skv * d), mask(skv, 0.0f);
      for (auto* x : {&q, &k, &v}) {
        for (float& f : *x) f = nd(rng);
      }
      for (size_t j = skv - 70; j < skv; ++j) mask[j] = -kInf;
      AttentionShapes shapes{{1, static_cast<int64_t>(h), static_cast<int64_t>(sq), static_cast<int64_t>(d)},
                             {1, static_cast<int64_t>(hkv), static_cast<int64_t>(skv), static_cast<int64_t>(d)},
                             {1, static_cast<int64_t>(hkv), static_cast<int64_t>(skv), static_cast<int64_t>(d)},
                             {1, 1, 1, static_cast<int64_t>(skv)},
                             true,
                             false};
      AttentionLayout layout;
      check(plan_attention_layout(shapes, &layout).empty(), "layout refused");
      const bool folded = fold_decode_groups(&layout);
      check(folded == (sq == 1), "fold %d at Sq %zu", folded, sq);
      AttentionParams p{};
      p.sq = layout.sq;
      p.skv = layout.skv;
      p.d = layout.d;
      p.dv = layout.dv;
      p.scale = 0.125f;
      p.bf16 = bf16;
      p.mask_row_stride = layout.mask_row_stride;
      p.mask_col_broadcast = layout.mask_col_broadcast;
      p.tiles = choose_attention_tiles(cache_sizes(), p.sq, p.skv, p.d, p.dv);
      if (parallelism > 1) p.tiles.bk = 48;  // several key tiles, so the split happens
      p.online_softmax = t->order[order - 1].online_softmax;
      p.f16_to_f32 = t->f16_to_f32;
      p.f32_to_f16 = t->f32_to_f16;
      std::vector<float> y(h * sq * d, kNaN);
      std::vector<AttentionHead> heads(layout.q_off.size());
      for (size_t i = 0; i < heads.size(); ++i) {
        heads[i] = {q.data() + layout.q_off[i], k.data() + layout.k_off[i], v.data() + layout.v_off[i],
                    mask.data() + layout.mask_off[i], y.data() + i * p.sq * p.dv};
      }
      AttentionTaskPlan plan;
      plan_attention_tasks(p, heads.size(), parallelism, &plan);
      check((plan.chunks > 1) == (parallelism > 1 && sq < 200), "chunks %zu", plan.chunks);
      const int packed_before = g_packed_runs;
      const std::vector<float> packed = pack_keys(t, &p, heads.data(), heads.size(), true);
      check((g_packed_runs > packed_before) == (!bf16 && sq > p.tiles.bq), "packed once: %d",
            g_packed_runs - packed_before);
      std::vector<float> scratch(attention_scratch_floats(p));
      for (const AttentionTask& task : plan.tasks) block(p, heads[task.head], task, scratch.data());
      for (size_t b = 0; b < (plan.chunks > 1 ? plan.blocks : 0); ++b) {
        combine_attention_partials(p, heads.data(), plan, b);
      }
      for (size_t qh = 0; qh < h; ++qh) {
        Problem pr;
        pr.name = "GQA head " + std::to_string(qh);
        pr.sq = sq;
        pr.skv = skv;
        pr.d = pr.dv = d;
        pr.scale = 0.125f;
        pr.causal = false;
        pr.q.assign(q.begin() + qh * sq * d, q.begin() + (qh + 1) * sq * d);
        const size_t kv = qh / (h / hkv);
        pr.k.assign(k.begin() + kv * skv * d, k.begin() + (kv + 1) * skv * d);
        pr.v.assign(v.begin() + kv * skv * d, v.begin() + (kv + 1) * skv * d);
        pr.mask = mask;
        pr.mask_rows = 1;
        pr.mask_cols = skv;
        reference(pr);
        const std::vector<float> yh(y.begin() + qh * sq * d, y.begin() + (qh + 1) * sq * d);
        if (bf16) {
          check_bf16_result(check, engine, order, pr, bf16_image(pr), yh, false, "GQA");
        } else {
          check_result(check, t, order, pr, yh, false, "GQA");
        }
      }
    }
  }
}

void print_errors() {
  std::printf("\nattention: measured max |Y - reference| / max|V| (rows of scores below 1e3)\n");
  for (const auto& kv : g_max_err) std::printf("  %-28s %10.3g\n", kv.first.c_str(), kv.second);
}

}  // namespace

// Usage: test_attention [TABLE[:PART]...]. With no argument every table of
// this CPU is tested; with names (scalar, neon, avx2, avx512) only those
// tables, and with a part (float32 or bf16) only that part of a table, so
// CTest can run them as parallel tests (under qemu-user the NEON table takes
// minutes). The table-independent checks run with the scalar table.
int main(int argc, char** argv) {
  // Line by line even into a file or pipe (CI logs): a crash keeps the cases before it.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::vector<std::string> only(argv + 1, argv + argc);
  for (const std::string& arg : only) {
    const std::string table = arg.substr(0, arg.find(':'));
    const std::string part = arg.find(':') == std::string::npos ? "" : arg.substr(arg.find(':') + 1);
    const bool table_ok = table == "scalar" || table == "neon" || table == "avx2" || table == "avx512";
    const bool part_ok = arg.find(':') == std::string::npos || part == "float32" || part == "bf16";
    if (!table_ok || !part_ok) {
      std::fprintf(stderr, "test_attention: '%s' is not TABLE[:PART] (scalar, neon, avx2, avx512; float32, bf16)\n",
                   arg.c_str());
      return 2;
    }
  }
  const auto wanted = [&](const std::string& table, const char* part) {
    const auto named = [&](const std::string& s) { return std::find(only.begin(), only.end(), s) != only.end(); };
    return only.empty() || named(table) || named(table + ":" + part);
  };
  std::mt19937 problem_rng(20261130u);
  if (wanted("scalar", "float32")) {
    test_layout();
    test_tiles();
  }
  const std::vector<Problem> ps = problems(problem_rng), half_ps = half_images(ps);
  const KernelTable* scalar = kernels_for(Isa::kScalar);
  for (Isa isa : {Isa::kScalar, Isa::kNeon, Isa::kAvx2, Isa::kAvx512}) {
    const KernelTable* t = kernels_for(isa);
    if (t == nullptr) continue;
    const bool float32 = wanted(t->name, "float32"), bf16 = wanted(t->name, "bf16");
    if (!float32 && !bf16) continue;
    std::printf("== table %s\n", t->name);
    // Each part its own stream: its inputs do not depend on what else ran.
    if (float32) {
      std::mt19937 rng(20261130u + 2 * static_cast<unsigned>(isa));
      {
        Check check(std::string(t->name) + ": attention entries present");
        check(t->attention_block != nullptr && t->attention_pack != nullptr,
              "attention_block or attention_pack missing");
        for (const OrderKernels& k : t->order) check(k.online_softmax != nullptr, "online_softmax missing");
      }
      test_block(t, ps, half_ps);
      test_split_agrees(t, rng);
      test_float_tails(t, rng);
      test_causal_prefix(t, rng);
      test_gqa(t, nullptr, "packed once when Sq > bq", rng);
      if (t != scalar) test_online_step(t, scalar, rng);
    }
    if (bf16) {
      std::mt19937 rng(20261131u + 2 * static_cast<unsigned>(isa));
      const std::vector<Bf16Engine> engines = bf16_engines(t);
      for (const Bf16Engine& e : engines) std::printf("precision bfloat16 on table %s: %s\n", t->name, e.name.c_str());
      if (engines.empty()) std::printf("precision bfloat16 on table %s: float32 fallback\n", t->name);
      test_bf16_block(t, engines, ps, half_ps, rng);
      test_bf16_tails(t, engines, rng);
    }
  }
  if (wanted("scalar", "bf16")) test_neon_bf16_variable();
  print_errors();
  std::printf("\n%d passed, %d failed\n", g_passed, g_failed);
  // Tables this CPU lacks (neon on x86-64, say) ran nothing: CTest's skip
  // status (SKIP_RETURN_CODE in CMakeLists.txt), not a pass.
  if (g_passed + g_failed == 0) {
    std::printf("skipped: no table named here runs on this CPU\n");
    return 77;
  }
  return g_failed == 0 ? 0 : 1;
}
