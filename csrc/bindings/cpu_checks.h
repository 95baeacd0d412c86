// Argument checks shared by the CPU bindings: every size that reaches a kernel is
// re-checked here, whatever the Python wrapper already did.
#pragma once
#include <stdexcept>
#include <string>

#include "cpu/fused_linear.h"

namespace bigperf::bindings {

inline void require(bool ok, const char* function, const std::string& message) {
  if (!ok) throw std::invalid_argument(std::string(function) + ": " + message);
}

inline cpu::DType to_dtype(int code, const char* function, const char* name) {
  require(code >= 0 && code <= 2, function, std::string(name) + " has unknown dtype code " + std::to_string(code));
  return static_cast<cpu::DType>(code);
}

}  // namespace bigperf::bindings
