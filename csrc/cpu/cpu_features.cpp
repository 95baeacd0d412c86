#include "cpu/cpu_features.h"

#include <algorithm>

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
