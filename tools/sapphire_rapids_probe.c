// Probe for tools/run-sapphire-rapids.sh: prints what the (emulated) CPU
// reports (vendor, brand, CPUID leaf 7 AVX-512 bits, XCR0, leaf 4 caches),
// runs a few AVX512-FP16 intrinsics on known values against scalar
// references, and exits 0 when every check passes (1 otherwise).
// Then `bench N` runs N rounds of 8 independent 512-bit VFMADD...PH (11
// instructions a round), `bench-ps N` the same in FP32, `bench-int N` a
// scalar integer loop, to time the emulation from the host.
//
// Build: gcc -O2 -static -mavx512f -mavx512bw -mavx512vl -mavx512dq
//            -mavx512fp16 -o probe tools/sapphire_rapids_probe.c
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

static void check(const char *what, int ok) {
  printf("%-44s %s\n", what, ok ? "ok" : "FAIL");
  if (!ok) failures++;
}

static uint16_t bits_of(_Float16 h) {
  uint16_t u;
  memcpy(&u, &h, 2);
  return u;
}

static void print_cpu(void) {
  unsigned a, b, c, d;
  char vendor[13] = {0}, brand[49] = {0};
  __cpuid(0, a, b, c, d);
  unsigned max_leaf = a;
  memcpy(vendor, &b, 4); memcpy(vendor + 4, &d, 4); memcpy(vendor + 8, &c, 4);
  for (unsigned i = 0; i < 3; i++) {
    __cpuid(0x80000002u + i, a, b, c, d);
    memcpy(brand + 16 * i, &a, 4); memcpy(brand + 16 * i + 4, &b, 4);
    memcpy(brand + 16 * i + 8, &c, 4); memcpy(brand + 16 * i + 12, &d, 4);
  }
  __cpuid(1, a, b, c, d);
  printf("vendor %s, max leaf 0x%x, family/model/stepping 0x%x\n", vendor, max_leaf, a);
  printf("brand  %s\n", brand);
  printf("leaf1  ecx=%08x (osxsave %u, avx %u, f16c %u, fma %u)\n", c, (c >> 27) & 1,
         (c >> 28) & 1, (c >> 29) & 1, (c >> 12) & 1);

  __cpuid_count(7, 0, a, b, c, d);
  printf("leaf7.0 ebx=%08x ecx=%08x edx=%08x\n", b, c, d);
  printf("  avx2 %u avx512f %u dq %u ifma %u cd %u bw %u vl %u\n", (b >> 5) & 1,
         (b >> 16) & 1, (b >> 17) & 1, (b >> 21) & 1, (b >> 28) & 1, (b >> 30) & 1,
         (b >> 31) & 1);
  printf("  vbmi %u vbmi2 %u vnni %u bitalg %u vpopcntdq %u\n", (c >> 1) & 1, (c >> 6) & 1,
         (c >> 11) & 1, (c >> 12) & 1, (c >> 14) & 1);
  printf("  avx512_fp16 %u amx_bf16 %u amx_tile %u amx_int8 %u\n", (d >> 23) & 1,
         (d >> 22) & 1, (d >> 24) & 1, (d >> 25) & 1);
  check("cpuid: AVX512F+BW+VL+DQ", ((b >> 16) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1) &&
                                       ((b >> 17) & 1));
  check("cpuid: AVX512_FP16 (leaf 7 edx bit 23)", (d >> 23) & 1);
  __cpuid_count(7, 1, a, b, c, d);
  printf("leaf7.1 eax=%08x (avx_vnni %u, avx512_bf16 %u)\n", a, (a >> 4) & 1, (a >> 5) & 1);

  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
  printf("xcr0   %016llx (x87 %u sse %u avx %u opmask %u zmm_hi256 %u hi16_zmm %u "
         "tilecfg %u tiledata %u)\n",
         (unsigned long long)xcr0, (unsigned)(xcr0 & 1), (unsigned)(xcr0 >> 1) & 1,
         (unsigned)(xcr0 >> 2) & 1, (unsigned)(xcr0 >> 5) & 1, (unsigned)(xcr0 >> 6) & 1,
         (unsigned)(xcr0 >> 7) & 1, (unsigned)(xcr0 >> 17) & 1, (unsigned)(xcr0 >> 18) & 1);
  check("xcr0: OS enabled AVX-512 state (bits 5-7)", (xcr0 & 0xe6) == 0xe6);

  for (unsigned i = 0;; i++) {
    __cpuid_count(4, i, a, b, c, d);
    unsigned type = a & 31;
    if (!type) break;
    unsigned level = (a >> 5) & 7;
    unsigned ways = (b >> 22) + 1, parts = ((b >> 12) & 0x3ff) + 1, line = (b & 0xfff) + 1;
    unsigned sets = c + 1;
    unsigned long size = (unsigned long)ways * parts * line * sets;
    unsigned sharing = ((a >> 14) & 0xfff) + 1;
    printf("leaf4.%u L%u %-7s %6lu KiB, %2u-way, %u B lines, %u sets, shared by <=%u threads%s\n",
           i, level, type == 1 ? "data" : type == 2 ? "instr" : "unified", size / 1024, ways,
           line, sets, sharing, (d >> 1) & 1 ? ", inclusive" : "");
  }
}

static void fp16_checks(void) {
  _Float16 a[32], b[32], c[32], out[32];
  float f[16];
  for (int i = 0; i < 32; i++) {
    a[i] = (_Float16)(i * 0.5f - 4.0f);
    b[i] = (_Float16)(1.25f + i / 8.0f);
    c[i] = (_Float16)(-0.75f * (i & 7));
  }
  __m512h va = _mm512_loadu_ph(a), vb = _mm512_loadu_ph(b), vc = _mm512_loadu_ph(c);

  _mm512_storeu_ph(out, _mm512_add_ph(va, vb));
  int ok = 1;
  for (int i = 0; i < 32; i++) ok &= bits_of(out[i]) == bits_of((_Float16)((float)a[i] + (float)b[i]));
  printf("add_ph    a[3]+b[3] = %g + %g = %g (0x%04x)\n", (double)a[3], (double)b[3],
         (double)out[3], bits_of(out[3]));
  check("vaddph matches float reference (32 lanes)", ok);

  _mm512_storeu_ph(out, _mm512_fmadd_ph(va, vb, vc));
  ok = 1;
  for (int i = 0; i < 32; i++) {
    // One rounding: a*b+c is exact in double for these fp16 inputs.
    _Float16 ref = (_Float16)((double)a[i] * (double)b[i] + (double)c[i]);
    ok &= bits_of(out[i]) == bits_of(ref);
  }
  printf("fmadd_ph  a[5]*b[5]+c[5] = %g*%g%+g = %g (0x%04x)\n", (double)a[5], (double)b[5],
         (double)c[5], (double)out[5], bits_of(out[5]));
  check("vfmadd*ph single rounding (32 lanes)", ok);

  _mm512_storeu_ph(out, _mm512_scalef_ph(va, vb));
  ok = 1;
  for (int i = 0; i < 32; i++) {
    float e = __builtin_floorf((float)b[i]);
    ok &= bits_of(out[i]) == bits_of((_Float16)__builtin_ldexpf((float)a[i], (int)e));
  }
  printf("scalef_ph a[1]*2^floor(b[1]) = %g*2^%g = %g\n", (double)a[1],
         (double)__builtin_floorf((float)b[1]), (double)out[1]);
  check("vscalefph = a*2^floor(b) (32 lanes)", ok);

  _mm512_storeu_ps(f, _mm512_cvtxph_ps(_mm256_loadu_ph(a)));
  ok = 1;
  for (int i = 0; i < 16; i++) ok &= f[i] == (float)a[i];
  printf("cvtxph_ps a[0..3] = %g %g %g %g\n", f[0], f[1], f[2], f[3]);
  check("vcvtph2psx widens exactly (16 lanes)", ok);

  // Overflow and subnormals: 65504 + 8 rounds back to 65504, 65504 + 16 =
  // 65520 is the tie between 65504 (odd) and 2^16, so it overflows to +inf;
  // 2^-12 * 2^-12 = 2^-24 is the smallest subnormal and survives.
  __m512h big = _mm512_set1_ph((_Float16)65504.0f);
  _mm512_storeu_ph(out, _mm512_add_ph(big, _mm512_set1_ph((_Float16)8.0f)));
  uint16_t r8 = bits_of(out[0]);
  _mm512_storeu_ph(out, _mm512_add_ph(big, _mm512_set1_ph((_Float16)16.0f)));
  uint16_t r16 = bits_of(out[0]);
  _mm512_storeu_ph(out, _mm512_mul_ph(_mm512_set1_ph((_Float16)0x1p-12f),
                                      _mm512_set1_ph((_Float16)0x1p-12f)));
  uint16_t sub = bits_of(out[0]);
  printf("edge      65504+8=0x%04x 65504+16=0x%04x 2^-12*2^-12=0x%04x\n", r8, r16, sub);
  check("fp16 overflow/ties/subnormal", r8 == 0x7bff && r16 == 0x7c00 && sub == 0x0001);

  volatile _Float16 x = (_Float16)1.5f, y = (_Float16)2.25f;
  _Float16 s = x * y + x;  // scalar vmulsh/vaddsh or vfmadd*sh
  printf("scalar    1.5*2.25+1.5 = %g\n", (double)s);
  check("scalar _Float16 arithmetic", bits_of(s) == bits_of((_Float16)4.875f));
}

// Eight independent accumulators in registers: 8 FMAs + 3 loop instructions
// a round. The probe prints the emulated TSC delta, which Bochs advances by
// one a guest instruction, so ticks / wall seconds is the emulation speed.
#define BENCH_LOOP(T, SET1, FMA, ADD)                                              \
  T a0 = SET1(0), a1 = SET1(1e-3), a2 = SET1(2e-3), a3 = SET1(3e-3), a4 = SET1(4e-3), \
    a5 = SET1(5e-3), a6 = SET1(6e-3), a7 = SET1(7e-3);                             \
  T m = SET1(0.999), d = SET1(0.0005);                                               \
  unsigned long long t0 = __rdtsc();                                                 \
  for (long i = 0; i < n; i++) {                                                     \
    a0 = FMA(a0, m, d); a1 = FMA(a1, m, d); a2 = FMA(a2, m, d); a3 = FMA(a3, m, d);  \
    a4 = FMA(a4, m, d); a5 = FMA(a5, m, d); a6 = FMA(a6, m, d); a7 = FMA(a7, m, d);  \
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), \
                     "+v"(a6), "+v"(a7));                                            \
  }                                                                                  \
  unsigned long long ticks = __rdtsc() - t0;                                         \
  T sum = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));

#define SET1PH(x) _mm512_set1_ph((_Float16)(x))
#define SET1PS(x) _mm512_set1_ps((float)(x))

static void bench(long n) {
  BENCH_LOOP(__m512h, SET1PH, _mm512_fmadd_ph, _mm512_add_ph)
  _Float16 out[32];
  _mm512_storeu_ph(out, sum);
  printf("bench     %ld rounds x 8 vfmadd*ph zmm: result %g, %llu emulated TSC ticks\n", n,
         (double)out[0], ticks);
}

static void bench_ps(long n) {
  BENCH_LOOP(__m512, SET1PS, _mm512_fmadd_ps, _mm512_add_ps)
  printf("bench-ps  %ld rounds x 8 vfmadd*ps zmm: result %g, %llu emulated TSC ticks\n", n,
         _mm512_reduce_add_ps(sum), ticks);
}

static void bench_int(long n) {
  unsigned long x = 1, y = 2;
  unsigned long long t0 = __rdtsc();
  for (long i = 0; i < n; i++) {  // about 8 integer instructions a round
    x = x * 6364136223846793005ul + 1442695040888963407ul;
    y ^= x >> 7;
    __asm__ volatile("" : "+r"(x), "+r"(y));
  }
  unsigned long long ticks = __rdtsc() - t0;
  printf("bench-int %ld rounds of integer mul/add/xor: %lx, %llu emulated TSC ticks\n", n,
         x ^ y, ticks);
}

int main(int argc, char **argv) {
  print_cpu();
  fp16_checks();
  for (int i = 1; i + 1 < argc; i++)
    if (!strcmp(argv[i], "bench")) bench(atol(argv[i + 1]));
    else if (!strcmp(argv[i], "bench-ps")) bench_ps(atol(argv[i + 1]));
    else if (!strcmp(argv[i], "bench-int")) bench_int(atol(argv[i + 1]));
  printf("%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}
