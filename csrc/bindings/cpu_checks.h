// Argument checks shared by the CPU bindings: every size that reaches a kernel is
// re-checked here, whatever the Python wrapper already did.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/cpu_features.h"
#include "cpu/fused_linear.h"

namespace bigperf::bindings {

inline void require(bool ok, const char* function, const std::string& message) {
  if (!ok) throw std::invalid_argument(std::string(function) + ": " + message);
}

// Activation codes are those of bigperf/ops/activations.py (see csrc/cpu/fused_linear.h).
inline void check_activation(int code, const char* function) {
  require(code >= 0 && code < cpu::kNumActivations, function,
          "argument 'act' has unknown activation code " + std::to_string(code) + " (codes 0.." +
              std::to_string(cpu::kNumActivations - 1) + ")");
}

inline cpu::DType to_dtype(int code, const char* function, const char* name) {
  require(code >= 0 && code <= 2, function, std::string(name) + " has unknown dtype code " + std::to_string(code));
  return static_cast<cpu::DType>(code);
}

// The fields every CPU kernel's argument struct shares (x, bias, out, sizes, epilogue,
// threads), from a binding's raw arguments; the binding checks them.
template <class Args>
void set_shared_args(Args& a, uintptr_t x, int64_t x_row_stride, uintptr_t bias, uintptr_t out,
                     int64_t out_row_stride, int64_t M, int64_t N, int64_t K, int act, int num_threads) {
  a.x = reinterpret_cast<const void*>(x);
  a.x_row_stride = x_row_stride;
  a.bias = reinterpret_cast<const float*>(bias);
  a.out = reinterpret_cast<void*>(out);
  a.out_row_stride = out_row_stride;
  a.M = M;
  a.N = N;
  a.K = K;
  a.act = static_cast<cpu::Activation>(act);
  a.num_threads = num_threads;
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
