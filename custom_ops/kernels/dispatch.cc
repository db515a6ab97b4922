// Chooses the kernel table: CPU features are read once per process; the
// QUAKE_ISA environment variable may lower the level (for tests and for
// comparing paths on one machine). Also the engine of Attention's precision
// "bfloat16", which QUAKE_NEON_BF16 may switch from BFMMLA to BFDOT on AArch64,
// and the float16 lanes QUAKE_F16 selects on AVX512-FP16 CPUs (auto: per op,
// whichever lanes measured faster).
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <cpuid.h>
#define QUAKE_X86 1
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace quake {
namespace {

struct CpuFeatures {
  bool avx2_fma_f16c = false;
  bool avx512 = false;
  bool avx512_bf16 = false;  // VDPBF16PS / VCVTNEPS2BF16 (with the AVX-512 table's features)
  bool avx512_fp16 = false;  // float16 arithmetic (with the AVX-512 table's features)
  bool neon = false;
  bool neon_bf16 = false;  // FEAT_BF16: BFDOT, BFMMLA, BFCVT (Linux HWCAP2_BF16)
};

#ifdef QUAKE_X86
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef QUAKE_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!(osxsave && avx)) return f;
  const uint64_t xcr0 = read_xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  f.avx2_fma_f16c = os_ymm && avx2 && fma && f16c;
  f.avx512 = f.avx2_fma_f16c && os_zmm && avx512f && avx512dq && avx512bw && avx512vl;
  f.avx512_fp16 = f.avx512 && (d & (1u << 23));
  if (f.avx512 && a >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512_bf16 = a & (1u << 5);
#elif defined(__aarch64__)
  f.neon = true;  // ASIMD is mandatory on AArch64
#if defined(__linux__)
  f.neon_bf16 = getauxval(AT_HWCAP2) & (1ul << 14);  // HWCAP2_BF16
#endif
#endif
  return f;
}

const CpuFeatures& features() {
  static const CpuFeatures f = detect();
  return f;
}

// The environment variable `name` as one of `choices`: unset, empty or "auto"
// gives index 0, a listed value its index; anything else false (select_kernels
// refuses it on every machine, so a typo is never silently ignored).
bool env_choice(const char* name, std::initializer_list<const char*> choices, int* out) {
  const char* v = std::getenv(name);
  *out = 0;
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return true;
  for (const char* c : choices) {
    if (std::strcmp(v, c) == 0) return true;
    ++*out;
  }
  return false;
}

// QUAKE_NEON_BF16: which FEAT_BF16 micro-kernel runs precision "bfloat16" on
// AArch64 (auto: BFMMLA).
enum class NeonBf16 { kBfmmla, kBfdot };
bool neon_bf16_choice(NeonBf16* out) {
  int i;
  const bool ok = env_choice("QUAKE_NEON_BF16", {"bfmmla", "bfdot"}, &i);
  *out = ok ? static_cast<NeonBf16>(i) : NeonBf16::kBfmmla;
  return ok;
}

// QUAKE_F16: whichever lanes measured faster per op (auto), the float32
// lanes, or the AVX512-FP16 lanes.
enum class F16Lanes { kMeasured, kFloat32, kLanes };
bool f16_choice(F16Lanes* out) {
  int i;
  const bool ok = env_choice("QUAKE_F16", {"auto", "float32", "lanes"}, &i);
  *out = ok ? static_cast<F16Lanes>(i) : F16Lanes::kMeasured;
  return ok;
}

// The AVX-512 table with the float16 lanes of AVX512-FP16 for orders 1 and 2
// (Exp, Sigmoid, Silu, Gelu; Glu and order 3 keep float32 lanes).
const KernelTable* avx512_with_fp16_lanes() {
  static const KernelTable table = [] {
    KernelTable t = *avx512_kernels();
    for (int order = 1; order <= 2; ++order) {
      const HalfKernels* lanes = avx512fp16_half_kernels(order);
      if (lanes == nullptr) continue;
      HalfKernels& h = t.order[order - 1].half;
      h.exp = lanes->exp;
      h.sigmoid = lanes->sigmoid;
      h.silu = lanes->silu;
      h.gelu = lanes->gelu;
    }
    return t;
  }();
  return &table;
}

bool fp16_lanes_available() { return features().avx512_fp16 && avx512fp16_half_kernels(1) != nullptr; }

// QUAKE_F16=auto on AVX512-FP16: the AVX-512 table with, op by op and order
// by order, the lanes faster_half_kernels measured faster (once per process),
// and the text float16_engine gives for it.
struct MeasuredTable {
  KernelTable table;
  std::string engine;
};
std::atomic<const MeasuredTable*> g_measured{nullptr};  // set once the measurement is done
const MeasuredTable& avx512_with_measured_fp16_lanes() {
  static const MeasuredTable measured = [] {
    MeasuredTable m{*avx512_kernels(), ""};
    std::string picked_text;
    for (int order = 1; order <= 2; ++order) {
      bool picked[4];
      HalfKernels& h = m.table.order[order - 1].half;
      h = faster_half_kernels(h, *avx512fp16_half_kernels(order), picked);
      std::string ops;
      for (int op = 0; op < 4; ++op) {
        if (picked[op]) ops += std::string(ops.empty() ? "" : ", ") + kHalfLaneOpNames[op];
      }
      if (!ops.empty()) {
        picked_text += std::string(picked_text.empty() ? "" : "; ") + ops + " at order " + std::to_string(order);
      }
    }
    m.engine =
        picked_text.empty()
            ? "float32 lanes, converted in registers (QUAKE_F16=auto: AVX512-FP16 lanes not measured 10 % faster)"
            : "AVX512-FP16 lanes for " + picked_text +
                  ", measured faster (QUAKE_F16=auto); float32 lanes, converted in registers, for the rest";
    return m;
  }();
  g_measured.store(&measured, std::memory_order_release);
  return measured;
}

}  // namespace

const KernelTable* kernels_for(Isa isa) {
  const CpuFeatures& f = features();
  switch (isa) {
    case Isa::kScalar:
      return scalar_kernels();
    case Isa::kNeon:
      return f.neon ? neon_kernels() : nullptr;
    case Isa::kAvx2:
      return f.avx2_fma_f16c ? avx2_kernels() : nullptr;
    case Isa::kAvx512:
      return f.avx512 ? avx512_kernels() : nullptr;
  }
  return nullptr;
}

bool parse_isa(const char* name, Isa* out) {
  static const struct {
    const char* name;
    Isa isa;
  } kNames[] = {{"scalar", Isa::kScalar}, {"neon", Isa::kNeon}, {"avx2", Isa::kAvx2}, {"avx512", Isa::kAvx512}};
  for (const auto& entry : kNames) {
    if (std::strcmp(name, entry.name) == 0) {
      *out = entry.isa;
      return true;
    }
  }
  return false;
}

// The tables this build's architecture has, as QUAKE_ISA's error lists them.
// A table of the other architecture is refused rather than lowered: asking
// for neon on x86-64 would otherwise run the scalar table, and avx2 on
// AArch64 NEON, neither of which was asked for.
#if defined(QUAKE_X86)
constexpr const char* kArchTables = "x86-64 runs auto, scalar, avx2, avx512";
bool table_of_this_arch(Isa isa) { return isa != Isa::kNeon; }
#elif defined(__aarch64__)
constexpr const char* kArchTables = "AArch64 runs auto, scalar, neon";
bool table_of_this_arch(Isa isa) { return isa == Isa::kScalar || isa == Isa::kNeon; }
#else
constexpr const char* kArchTables = "this architecture runs auto, scalar";
bool table_of_this_arch(Isa isa) { return isa == Isa::kScalar; }
#endif

const KernelTable* best_kernels(Isa at_most) {
  for (int level = static_cast<int>(at_most); level > 0; --level) {
    if (const KernelTable* t = kernels_for(static_cast<Isa>(level))) return t;
  }
  return scalar_kernels();
}

const KernelTable* select_kernels(const char** error) {
  *error = nullptr;
  NeonBf16 neon_bf16;
  if (!neon_bf16_choice(&neon_bf16)) {
    thread_local std::string message;  // lives until this thread's next call
    message = std::string("QUAKE_NEON_BF16='") + std::getenv("QUAKE_NEON_BF16") + "' is not one of auto, bfmmla, bfdot";
    *error = message.c_str();
    return nullptr;
  }
  F16Lanes f16;
  if (!f16_choice(&f16)) {
    thread_local std::string message;  // lives until this thread's next call
    message = std::string("QUAKE_F16='") + std::getenv("QUAKE_F16") + "' is not one of auto, float32, lanes";
    *error = message.c_str();
    return nullptr;
  }
  const char* requested = std::getenv("QUAKE_ISA");
  const bool named = requested != nullptr && *requested != '\0' && std::strcmp(requested, "auto") != 0;
  Isa isa = Isa::kAvx512;  // auto: the best this CPU has
  if (named && !parse_isa(requested, &isa)) {
    thread_local std::string message;  // lives until this thread's next call
    message = std::string("QUAKE_ISA='") + requested + "' is not one of auto, scalar, neon, avx2, avx512";
    *error = message.c_str();
    return nullptr;
  }
  if (named && !table_of_this_arch(isa)) {
    thread_local std::string message;  // lives until this thread's next call
    message = std::string("QUAKE_ISA='") + requested + "' is a table of another architecture (" + kArchTables + ")";
    *error = message.c_str();
    return nullptr;
  }
  const KernelTable* t = best_kernels(isa);
  if (t->isa != Isa::kAvx512 || !fp16_lanes_available()) return t;
  if (f16 == F16Lanes::kLanes) return avx512_with_fp16_lanes();
  if (f16 == F16Lanes::kMeasured) return &avx512_with_measured_fp16_lanes().table;
  return t;
}

const char* float16_engine(const KernelTable* t) {
  if (fp16_lanes_available() && t == avx512_with_fp16_lanes()) return "AVX512-FP16 lanes";
  // The measured table only once select_kernels made it: naming a table must not time kernels.
  if (const MeasuredTable* m = g_measured.load(std::memory_order_acquire); m != nullptr && t == &m->table) {
    return m->engine.c_str();
  }
  // QUAKE_F16=lanes that changed nothing says why, so "lanes" is not read as granted.
  F16Lanes f16;
  const bool asked = f16_choice(&f16) && f16 == F16Lanes::kLanes;
  if (t->isa == Isa::kScalar) {
    return asked ? "float32, converted in blocks (QUAKE_F16=lanes: not on the scalar table)"
                 : "float32, converted in blocks";
  }
  if (!asked) return "float32 lanes, converted in registers";
  return features().avx512_fp16
             ? "float32 lanes, converted in registers (QUAKE_F16=lanes: needs the avx512 table)"
             : "float32 lanes, converted in registers (QUAKE_F16=lanes: this CPU has no AVX512-FP16)";
}

AttentionBlockFn attention_bf16_block(const KernelTable* t, const char** engine) {
  *engine = "float32 fallback";
#ifdef QUAKE_X86
  if (t != nullptr && t->isa == Isa::kAvx512 && features().avx512_bf16) {
    *engine = "AVX512-BF16";
    return attention_block_avx512bf16;
  }
#elif defined(__aarch64__)
  NeonBf16 choice;
  if (t != nullptr && t->isa == Isa::kNeon && features().neon_bf16 && neon_bf16_choice(&choice)) {
    if (choice == NeonBf16::kBfdot) {
      *engine = "NEON BFDOT";
      return attention_block_neonbfdot;
    }
    *engine = "NEON BFMMLA";
    return attention_block_neonbfmmla;
  }
#else
  (void)t;
#endif
  return nullptr;
}

RowStats combine_stats(const RowStats& a, const RowStats& b) {
  const float max = a.max > b.max ? a.max : b.max;  // never NaN
  if (a.nan || b.nan) return RowStats{max, 0.0, 0.0, true};
  if (a.sum == 0.0) return RowStats{max, b.k, b.sum, false};  // a chunk without terms adds nothing
  if (b.sum == 0.0) return RowStats{max, a.k, a.sum, false};
  const RowStats& hi = a.k >= b.k ? a : b;
  const RowStats& lo = a.k >= b.k ? b : a;
  // lo's terms are 2^(lo.k - hi.k) times smaller relative to hi.k: exact in double.
  const double gap = lo.k - hi.k;
  return RowStats{max, hi.k, hi.sum + (gap < -1100.0 ? 0.0 : std::ldexp(lo.sum, static_cast<int>(gap))), false};
}

ChunkStats combine_chunks(const ChunkStats& a, const ChunkStats& b) {
  const float max = a.max > b.max ? a.max : b.max;  // never NaN
  if (a.nan || b.nan) return ChunkStats{max, 0.0, true};
  if (a.sum == 0.0) return ChunkStats{max, b.sum, false};  // a chunk without terms adds nothing
  if (b.sum == 0.0) return ChunkStats{max, a.sum, false};
  // Each sum moves to the common max by an exact-enough e^(its max - max).
  return ChunkStats{
      max, a.sum * std::exp(static_cast<double>(a.max) - max) + b.sum * std::exp(static_cast<double>(b.max) - max),
      false};
}

}  // namespace quake
