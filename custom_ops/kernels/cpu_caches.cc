#include "cpu_caches.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace quake {
namespace {

// "32K", "1024K", "32M" -> bytes; 0 when unreadable.
size_t read_size(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return 0;
  char buf[32] = {0};
  const size_t got = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  if (got == 0) return 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(buf, &end, 10);
  const char unit = end ? *end : '\0';
  const size_t scale = unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : unit == 'G' ? 1024ull * 1024 * 1024 : 1;
  return static_cast<size_t>(v) * scale;
}

std::string read_word(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return "";
  char buf[32] = {0};
  const size_t got = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  std::string s(buf, got);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

void from_sysfs(CacheSizes* c) {
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    const std::string level = read_word(dir + "level"), type = read_word(dir + "type");
    if (level.empty()) continue;
    if (type != "Data" && type != "Unified") continue;
    const size_t size = read_size(dir + "size");
    if (level == "1" && !c->l1d) c->l1d = size;
    if (level == "2" && !c->l2) c->l2 = size;
    if (level == "3" && !c->l3) c->l3 = size;
  }
}

void from_sysconf(CacheSizes* c) {
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
  const long l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE), l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (!c->l1d && l1 > 0) c->l1d = static_cast<size_t>(l1);
  if (!c->l2 && l2 > 0) c->l2 = static_cast<size_t>(l2);
#endif
#if defined(_SC_LEVEL3_CACHE_SIZE)
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (!c->l3 && l3 > 0) c->l3 = static_cast<size_t>(l3);
#endif
  (void)c;
}

size_t env_bytes(const char* name) {
  const char* v = std::getenv(name);
  return v ? static_cast<size_t>(std::strtoull(v, nullptr, 10)) : 0;
}

CacheSizes detect() {
  CacheSizes c{0, 0, 0};
  from_sysfs(&c);
  from_sysconf(&c);
  if (!c.l1d) c.l1d = 32 * 1024;
  if (!c.l2) c.l2 = 1024 * 1024;
  if (const size_t v = env_bytes("QUAKE_L1D_BYTES")) c.l1d = v;
  if (const size_t v = env_bytes("QUAKE_L2_BYTES")) c.l2 = v;
  return c;
}

}  // namespace

const CacheSizes& cache_sizes() {
  static const CacheSizes sizes = detect();
  return sizes;
}

}  // namespace quake
