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
// Virtual archs whose PTX the build embedded (JIT-compiled by the driver on newer GPUs), e.g. {"80"}.
std::vector<std::string> compiled_ptx_archs();

// cudaPointerGetAttributes on every pointer of every launch (a host pointer or another
// GPU's memory is then a ValueError instead of an illegal-address fault). Off by default:
// it costs about a microsecond per pointer, and bigperf's Python wrappers hand over only
// tensors they have checked to live on the launch's device. On with
// BIGPERF_CUDA_CHECK_POINTERS=1 (read once) or set_pointer_checks(true), for debugging and
// for callers of the raw bindings.
void set_pointer_checks(bool on);
bool pointer_checks();

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

// The configuration `fused_linear` picks for this shape on a GPU with `sm_count` SMs that
// allows `max_smem` bytes of shared memory per block (0 = no limit); -1 when none fits.
int fused_linear_choose_config(int64_t M, int64_t N, int sm_count, int max_smem = 0);
std::string fused_linear_config_name(int config);
int fused_linear_num_configs();
int fused_linear_config_smem(int config);  // dynamic shared memory per block, bytes

// ----------------------------------------------------------------------------- W8A16
// out[M,N] = act(x[M,K] @ dequant(W)^T + bias[N]) with W int8 in the packed layout of
// bigperf/cuda_layouts.py (pack_w8a16, version kW8A16LayoutVersion; see w8a16_tile.h):
// w [Np/32][Kp/16][512] int8, scale [G, Np] fp32, zero [G, Np] fp32 or absent, where
// Np = N rounded up to 32, Kp = K rounded up to 16 and G = K / group_size (1 per channel).
// With splits > 1 the K range is split over CTAs whose fp32 partials meet in `workspace`
// (splits * M * Np floats) and `counters` (one int32 per output tile, zero on entry,
// left zero on exit).
constexpr int kW8A16LayoutVersion = 1;

struct W8A16Args {
  uintptr_t x = 0, w = 0, scale = 0, zero = 0, bias = 0, out = 0, workspace = 0, counters = 0;
  int64_t x_row_stride = 0, out_row_stride = 0;
  int64_t M = 0, N = 0, K = 0;
  int64_t group_size = 0;  // 0 = per channel, else 32, 64, 128 or 256 dividing K
  int64_t workspace_bytes = 0, counters_count = 0;
  int dtype = 0;    // 1 = float16, 2 = bfloat16 (x, out)
  int act = 0;      // as FusedLinearArgs
  int config = -1;  // -1 = chosen from M
  int splits = -1;  // -1 = chosen from the shape and the SM count
};

struct W8A16Plan {
  int config = 0, splits = 1;
  int64_t workspace_bytes = 0, counters = 0;
};

void w8a16_validate(const W8A16Args& args, const char* fn);
// config -1 picks the configuration from M among those that fit `max_smem` bytes of shared
// memory per block (0 = no limit; plan.config = -1 when none fits); splits -1 picks the K
// split from the tile count and `sm_count`.
W8A16Plan w8a16_plan(int64_t M, int64_t N, int64_t K, int sm_count, int config = -1, int splits = -1,
                     int max_smem = 0);
// The split-K buffers the caller passed must fit `plan` (checked once the plan is known).
void w8a16_check_workspace(const W8A16Args& args, const W8A16Plan& plan, const char* fn);
std::string w8a16_config_name(int config);
int w8a16_num_configs();
int w8a16_config_smem(int config);
void w8a16_linear(const W8A16Args& args, uintptr_t stream);

// ----------------------------------------------------------------------------- 2:4 sparse
// out[M,N] = act(x[M,K] @ W^T + bias[N]) with W 2:4-sparse along K, computed as
// out^T = W x^T on the sparse tensor cores (mma.sp m16n8k32: W is the sparse A operand).
// Packed layout (bigperf/cuda_layouts.py, pack_s24, version kS24LayoutVersion; see
// sparse24_tile.h): values [N, Kp/2] fp16/bf16 (Kp = K rounded up to 32, zero padded),
// meta [Np16][Kp/32][16] uint32 (Np16 = ceil(N / 16)).
constexpr int kS24LayoutVersion = 1;

struct S24Args {
  uintptr_t x = 0, values = 0, meta = 0, bias = 0, out = 0;
  int64_t x_row_stride = 0, values_row_stride = 0, out_row_stride = 0;
  int64_t M = 0, N = 0, K = 0;
  int dtype = 0;    // 1 = float16, 2 = bfloat16 (x, values, out)
  int act = 0;
  int config = -1;
};

void s24_validate(const S24Args& args, const char* fn);
// As fused_linear_choose_config: -1 when no configuration fits `max_smem` (0 = no limit).
int s24_choose_config(int64_t M, int64_t N, int sm_count, int max_smem = 0);
std::string s24_config_name(int config);
int s24_num_configs();
int s24_config_smem(int config);
void s24_linear(const S24Args& args, uintptr_t stream);

}  // namespace bigperf::cuda
