// float16 lanes on AVX512-FP16 (Sapphire Rapids and later): half_lanes.h on
// 32 float16 lanes per zmm register, no conversions. Compiled with
// -mavx512fp16 and run only after dispatch found AVX512-FP16 (dispatch.cc)
// and QUAKE_F16 chose it (lanes, or auto's measurement: half_lanes_choice.cc),
// so nothing here runs at static
// initialisation. Orders 1 and 2 only (order 3 stays in float32 lanes:
// half_lanes.h). Silu's alpha is rounded to float16 (1.702 -> 1.7021484,
// within the bounds: tested); an alpha whose rounding falls outside the
// normal float16 range [2^-14, 65504], and Gelu with a bias (x + bias
// rounded to float16 would add an error no bound budgets), take the AVX-512
// table's float32 lanes (converted in registers).
#include "kernels.h"

#if defined(__x86_64__) && defined(__AVX512FP16__)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include "half_lanes.h"

namespace quake {
namespace {

// The layer of half_lanes.h: every operation rounds once to float16.
struct Fp16Layer {
  using Vec = __m512h;
  using Mask = __mmask32;
  static Vec set(float c) { return _mm512_set1_ph(static_cast<_Float16>(c)); }
  static Vec add(Vec a, Vec b) { return _mm512_add_ph(a, b); }
  static Vec sub(Vec a, Vec b) { return _mm512_sub_ph(a, b); }
  static Vec mul(Vec a, Vec b) { return _mm512_mul_ph(a, b); }
  static Vec div(Vec a, Vec b) { return _mm512_div_ph(a, b); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ph(a, b, c); }
  static Vec fnma(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ph(a, b, c); }
  static Vec min(Vec a, Vec b) { return _mm512_min_ph(a, b); }
  static Vec max(Vec a, Vec b) { return _mm512_max_ph(a, b); }
  static Vec abs(Vec a) {
    return _mm512_castsi512_ph(_mm512_and_si512(_mm512_castph_si512(a), _mm512_set1_epi16(0x7fff)));
  }
  static Vec round_int(Vec a) { return _mm512_roundscale_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static Vec scalef(Vec p, Vec n) { return _mm512_scalef_ph(p, n); }
  static Mask lt(Vec a, Vec b) { return _mm512_cmp_ph_mask(a, b, _CMP_LT_OQ); }
  static Mask ge(Vec a, Vec b) { return _mm512_cmp_ph_mask(a, b, _CMP_GE_OQ); }
  static Vec select(Mask m, Vec a, Vec b) { return _mm512_mask_blend_ph(m, b, a); }
};

inline __mmask32 tail_mask(size_t rem) { return static_cast<__mmask32>((1ull << rem) - 1u); }
inline __m512h load32(const uint16_t* p) { return _mm512_castsi512_ph(_mm512_loadu_si512(p)); }
inline __m512h maskz_load32(__mmask32 k, const uint16_t* p) {
  return _mm512_castsi512_ph(_mm512_maskz_loadu_epi16(k, p));
}
inline void store32(uint16_t* p, __m512h v) { _mm512_storeu_si512(p, _mm512_castph_si512(v)); }
inline void mask_store32(uint16_t* p, __mmask32 k, __m512h v) {
  _mm512_mask_storeu_epi16(p, k, _mm512_castph_si512(v));
}

// MXCSR.DAZ and FTZ cleared for the lanes' duration and restored after: an
// ORT session may set them (denormal-as-zero), and float16 arithmetic that
// honoured them (Bochs does) would flush subnormal halves, which the
// algorithm, the emulated layer and the bounds treat as values.
class ClearDazFtz {
 public:
  ClearDazFtz() : saved_(_mm_getcsr()) {
    if (saved_ & kBits) _mm_setcsr(saved_ & ~kBits);
  }
  ~ClearDazFtz() {
    if (saved_ & kBits) _mm_setcsr(saved_);
  }
  ClearDazFtz(const ClearDazFtz&) = delete;
  ClearDazFtz& operator=(const ClearDazFtz&) = delete;

 private:
  static constexpr unsigned kBits = 0x8040u;  // FTZ (bit 15), DAZ (bit 6)
  unsigned saved_;
};

// y[i] = f(x[i]); two registers per iteration, masked tail (nothing past n
// is read or written; masked-off lanes compute on +0).
template <typename F>
inline void map_fp16(const uint16_t* x, uint16_t* y, size_t n, F f) {
  const ClearDazFtz plain_denormals;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512h a = load32(x + i);
    const __m512h b = load32(x + i + 32);
    store32(y + i, f(a));
    store32(y + i + 32, f(b));
  }
  for (; i + 32 <= n; i += 32) store32(y + i, f(load32(x + i)));
  if (i < n) {
    const __mmask32 k = tail_mask(n - i);
    mask_store32(y + i, k, f(maskz_load32(k, x + i)));
  }
}

template <int Order>
void exp_fp16(const uint16_t* x, uint16_t* y, size_t n) {
  map_fp16(x, y, n, [](__m512h v) { return half_lanes::exp<Fp16Layer, Order>(v); });
}

template <int Order>
void sigmoid_fp16(const uint16_t* x, uint16_t* y, size_t n) {
  map_fp16(x, y, n, [](__m512h v) { return half_lanes::sigmoid<Fp16Layer, Order>(v); });
}

template <int Order>
void silu_fp16(const uint16_t* x, uint16_t* y, size_t n, float alpha) {
  const _Float16 a = static_cast<_Float16>(alpha);
  if (!(static_cast<float>(a) >= 0x1p-14f && static_cast<float>(a) <= half_lanes::kHalfMax)) {
    return avx512_kernels()->order[Order - 1].half.silu(x, y, n, alpha);
  }
  const __m512h va = _mm512_set1_ph(a);
  const bool unit = alpha == 1.0f;
  map_fp16(x, y, n, [va, unit](__m512h v) { return half_lanes::silu<Fp16Layer, Order>(v, va, unit); });
}

template <int Order>
void gelu_fp16(const uint16_t* x, const float* bias, uint16_t* y, size_t n) {
  if (bias != nullptr) return avx512_kernels()->order[Order - 1].half.gelu(x, bias, y, n);
  map_fp16(x, y, n, [](__m512h v) { return half_lanes::gelu<Fp16Layer, Order>(v); });
}

}  // namespace

const HalfKernels* avx512fp16_half_kernels(int order) {
  // Glu stays in float32 lanes (nullptr: the caller keeps the table's own).
  static const HalfKernels kOrders[2] = {
      {exp_fp16<1>, sigmoid_fp16<1>, silu_fp16<1>, gelu_fp16<1>, nullptr},
      {exp_fp16<2>, sigmoid_fp16<2>, silu_fp16<2>, gelu_fp16<2>, nullptr},
  };
  return order == 1 || order == 2 ? &kOrders[order - 1] : nullptr;
}

}  // namespace quake

#else  // no AVX512-FP16 in this build

namespace quake {
const HalfKernels* avx512fp16_half_kernels(int) { return nullptr; }
}  // namespace quake

#endif
