#include "cpu/cpu_features.h"

#include <algorithm>
#include <cstdint>

#if defined(BIGPERF_X86) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace bigperf::cpu {

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(BIGPERF_X86) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.f16c = __builtin_cpu_supports("f16c");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512dq = __builtin_cpu_supports("avx512dq");
    f.avx512vnni = __builtin_cpu_supports("avx512vnni");
    f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
    // AMX: CPUID.(7, 0).EDX bits 24 (tile), 22 (bf16), 25 (int8), usable only where the OS
    // saves the tile state (XCR0 bits 17 and 18, read by xgetbv once OSXSAVE says it may be).
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx >> 24 & 1)) {
      unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
      bool tile_state = false;
      if (__get_cpuid(1, &a1, &b1, &c1, &d1) && (c1 >> 27 & 1)) {  // OSXSAVE
        uint32_t xcr0_lo = 0, xcr0_hi = 0;
        __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
        tile_state = (xcr0_lo >> 17 & 3) == 3;
      }
      f.amx_tile = tile_state;
      f.amx_bf16 = tile_state && (edx >> 22 & 1);
      f.amx_int8 = tile_state && (edx >> 25 & 1);
    }
#endif
    return f;
  }();
  return features;
}

std::vector<std::string> compiled_isas() {
#if defined(BIGPERF_X86)
  return {"avx512", "avx2", "scalar"};
#else
  return {"scalar"};
#endif
}

bool isa_runnable(const std::string& isa) {
  const CpuFeatures& f = cpu_features();
  const auto compiled = compiled_isas();
  if (std::find(compiled.begin(), compiled.end(), isa) == compiled.end()) return false;
  if (isa == "scalar") return true;
  const bool avx2 = f.avx2 && f.fma && f.f16c;
  if (isa == "avx2") return avx2;
  // The AVX-512 unit is built with VNNI and BF16 flags; require every feature it may use.
  if (isa == "avx512")
    return avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni && f.avx512bf16;
  return false;
}

std::vector<std::string> runnable_isas() {
  std::vector<std::string> result;
  for (const auto& isa : compiled_isas())
    if (isa_runnable(isa)) result.push_back(isa);
  return result;
}

}  // namespace bigperf::cpu
