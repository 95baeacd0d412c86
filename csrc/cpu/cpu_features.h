// Runtime CPU feature detection: which of the compiled ISA paths this CPU can execute.
#pragma once
#include <string>
#include <vector>

namespace bigperf::cpu {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false;
};

const CpuFeatures& cpu_features();
// ISA paths compiled into this module, best first.
std::vector<std::string> compiled_isas();
// Compiled paths this CPU can run, best first. "scalar" is always present.
std::vector<std::string> runnable_isas();
bool isa_runnable(const std::string& isa);

}  // namespace bigperf::cpu
