// Argument checks shared by the CPU bindings: every size that reaches a kernel is
// re-checked here, whatever the Python wrapper already did.
#pragma once
#include <stdexcept>
#include <string>

#include "cpu/cpu_features.h"
#include "cpu/fused_linear.h"

namespace bigperf::bindings {

inline void require(bool ok, const char* function, const std::string& message) {
  if (!ok) throw std::invalid_argument(std::string(function) + ": " + message);
}

inline cpu::DType to_dtype(int code, const char* function, const char* name) {
  require(code >= 0 && code <= 2, function, std::string(name) + " has unknown dtype code " + std::to_string(code));
  return static_cast<cpu::DType>(code);
}

// The kernel of one ISA path, refusing a path this build or CPU cannot run (calling it
// would be an illegal instruction). Pass the three entry points with ISA_KERNELS(name).
template <typename Fn>
Fn kernel_for_isa(const std::string& isa, const char* function, Fn avx512, Fn avx2, Fn scalar) {
  require(cpu::isa_runnable(isa), function,
          "argument 'isa': ISA path '" + isa + "' is not compiled in or not supported by this CPU");
  if (isa == "avx512") return avx512;
  if (isa == "avx2") return avx2;
  return scalar;
}

}  // namespace bigperf::bindings

// Only x86 builds have the vector entry points; elsewhere isa_runnable admits "scalar" alone.
#if defined(BIGPERF_X86)
#define ISA_KERNELS(name) name##_avx512, name##_avx2, name##_scalar
#else
#define ISA_KERNELS(name) name##_scalar, name##_scalar, name##_scalar
#endif
