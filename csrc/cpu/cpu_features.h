// Runtime CPU feature detection: which of the compiled ISA paths this CPU can execute.
#pragma once
#include <string>
#include <vector>

namespace bigperf::cpu {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false;
  // AMX tiles with bf16 / int8 products, present and enabled by the OS (XCR0 tile state).
  // None of our kernels use them; PyTorch's bf16 and int8 GEMMs do (oneDNN), so timings
  // against torch on such a CPU hold only there (tuning fingerprint, bench machine kind).
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
};

const CpuFeatures& cpu_features();
// ISA paths compiled into this module, best first.
std::vector<std::string> compiled_isas();
// Compiled paths this CPU can run, best first. "scalar" is always present.
std::vector<std::string> runnable_isas();
bool isa_runnable(const std::string& isa);

}  // namespace bigperf::cpu
