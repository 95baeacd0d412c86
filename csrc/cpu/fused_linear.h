// Fused linear for the CPU: out = act(x @ W^T + bias) + residual, fp32 accumulation.
//
// The contract between the pybind11 binding and the per-ISA kernels. The Python op
// wrapper has already validated dtypes, devices, shapes and strides; the binding
// (fused_linear in csrc/bindings/cpu_fused_linear.cpp) re-checks the sizes so that no
// input can make a kernel read or write out of bounds.
#pragma once
#include <cstdint>

namespace bigperf::cpu {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };
// Codes shared with ACTIVATIONS in bigperf/ops/activations.py (its order); every kernel
// family uses them. bigperf._C exports kNumActivations as NUM_ACTIVATIONS, and a test
// holds it equal to len(ACTIVATIONS).
enum class Activation : int { none = 0, relu = 1, gelu_erf = 2, gelu_tanh = 3, silu = 4 };
constexpr int kNumActivations = 5;
static_assert(static_cast<int>(Activation::silu) + 1 == kNumActivations, "a new activation must be counted");

struct FusedLinearArgs {
  const void* x;              // [M, K], x_dtype, unit stride along K
  int64_t x_row_stride;       // elements between rows of x
  DType x_dtype;
  const void* w;              // [N, K], w_dtype, unit stride along K
  int64_t w_row_stride;
  DType w_dtype;
  const float* bias;          // [N] fp32, or nullptr
  const void* residual;       // [M, N] in x_dtype, or nullptr
  int64_t residual_row_stride;
  void* out;                  // [M, N] in x_dtype
  int64_t out_row_stride;
  int64_t M, N, K;
  Activation act;
  int num_threads;            // threads to use (torch.get_num_threads() of the caller)
};

// One entry per ISA; each lives in its own translation unit with its own target flags.
void fused_linear_scalar(const FusedLinearArgs& args);
#if defined(BIGPERF_X86)
void fused_linear_avx2(const FusedLinearArgs& args);
void fused_linear_avx512(const FusedLinearArgs& args);
#endif
// The panel form (cpu/panel_gemm.h) of the same op, for M where arithmetic bounds the GEMM.
// The scalar path has one form only: its panel entry runs fused_linear_scalar.
void fused_linear_panel_scalar(const FusedLinearArgs& args);
#if defined(BIGPERF_X86)
void fused_linear_panel_avx2(const FusedLinearArgs& args);
void fused_linear_panel_avx512(const FusedLinearArgs& args);
// The panel form in bf16 arithmetic (panel_gemm_bf16.h; AVX512-BF16, K even).
void fused_linear_panel_bf16_avx512(const FusedLinearArgs& args);
#endif

}  // namespace bigperf::cpu
