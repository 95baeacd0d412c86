// Plain C++ interface of the CUDA kernels (no torch, no CUDA headers needed by callers).
// Functions throw std::invalid_argument for bad arguments and std::runtime_error for
// CUDA failures (no device, launch errors); pybind11 turns them into ValueError and
// RuntimeError.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bigperf::cuda {

int device_count();
std::string runtime_info();

// Archs whose SASS the build embedded, e.g. {"80", "90a"}.
std::vector<std::string> compiled_archs();

// out[M,N] = act(x[M,K] @ w[N,K]^T + bias[N]) + residual[M,N], fp32 accumulation.
// Pointers are raw addresses (0 = absent); strides are in elements.
struct FusedLinearArgs {
  uintptr_t x = 0, w = 0, bias = 0, residual = 0, out = 0;
  int64_t x_row_stride = 0, w_row_stride = 0, residual_row_stride = 0, out_row_stride = 0;
  int64_t M = 0, N = 0, K = 0;
  int dtype = 0;    // 1 = float16, 2 = bfloat16 (x, w, residual, out)
  int act = 0;      // 0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh), 4 silu
  int config = -1;  // tile configuration index, -1 = chosen from M and N
};

constexpr int kFusedLinearKMultiple = 8;         // K % 8 == 0
constexpr int kFusedLinearStrideMultiple = 8;    // row strides (elements) % 8 == 0
constexpr int kFusedLinearPointerAlignment = 16; // bytes, x / w / residual / out
constexpr int kFusedLinearBiasAlignment = 4;     // bytes, fp32 bias

// Checks sizes, strides, alignment and codes; throws std::invalid_argument naming `fn`
// and the argument.
void fused_linear_validate(const FusedLinearArgs& args, const char* fn);

// Launches on `stream` (a cudaStream_t as an integer) of the current device; device
// pointers must belong to the current device.
void fused_linear(const FusedLinearArgs& args, uintptr_t stream);

// The configuration `fused_linear` picks for this shape on a GPU with `sm_count` SMs.
int fused_linear_choose_config(int64_t M, int64_t N, int sm_count);
std::string fused_linear_config_name(int config);
int fused_linear_num_configs();

// Runs the kernel's index maps (tiles, cp.async chunks, swizzle, ldmatrix addresses,
// mma fragment layouts, split-K reduction, epilogue) on the CPU with host pointers, so
// that layout bugs show up without a GPU. `args.config` must name a configuration.
void fused_linear_emulate(const FusedLinearArgs& args);

}  // namespace bigperf::cuda
