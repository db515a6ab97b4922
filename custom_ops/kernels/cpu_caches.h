// The data cache sizes of this machine's cores, read once at run time: the
// op layer sizes row groups, blocks and the long-row threshold from them
// rather than from constants tuned on one machine.
#pragma once

#include <cstddef>

namespace quake {

struct CacheSizes {
  size_t l1d;  // bytes per core
  size_t l2;   // bytes per core (or per cluster, as Linux reports it)
  size_t l3;   // bytes, shared; 0 when there is none
};

// Linux's /sys/devices/system/cpu/cpu0/cache (what the kernel read from
// CPUID leaf 4 / 0x8000001D or the device tree), then sysconf, then 32 KB /
// 1 MB / 0 when neither says. sysconf comes second because glibc misreads
// some virtual CPUs (320 MB of L3 on a 32 MB EPYC VM). QUAKE_L1D_BYTES and
// QUAKE_L2_BYTES override (for tests and for tuning experiments).
const CacheSizes& cache_sizes();

}  // namespace quake
