// Host side of the CUDA kernels that needs no GPU: argument validation, the choice of tile
// configuration and K split, and what each configuration asks of the device (shared
// memory). Plain C++ (compiled by the host compiler, no device passes), linked into
// bigperf._C_cuda and into the tests' emulator module, so both check arguments and plan
// launches with the same code.
#include <climits>
#include <stdexcept>
#include <string>

#include "cuda/arg_checks.h"
#include "cuda/cuda_api.h"
#include "cuda/fused_linear_tile.h"
#include "cuda/sparse24_tile.h"
#include "cuda/w8a16_tile.h"

namespace bigperf::cuda {

using util::require;

namespace {

int64_t tiles_of(int64_t rows, int64_t row_block, int64_t cols, int64_t col_block) {
  return ((rows + row_block - 1) / row_block) * ((cols + col_block - 1) / col_block);
}

void check_codes(const char* fn, int dtype, int act) {
  require(dtype == 1 || dtype == 2, fn, "dtype_code must be 1 (float16) or 2 (bfloat16), got " + std::to_string(dtype));
  require(act >= 0 && act <= 4, fn,
          "act_code must be 0..4 (none, relu, gelu_erf, gelu_tanh, silu), got " + std::to_string(act));
}

// A size in [0, max]; max is 2^31-1 less what the kernel pads the dimension by.
void check_size(const char* fn, const char* name, int64_t v, int64_t max) {
  require(v >= 0 && v <= max, fn,
          std::string(name) + " must be in [0, 2^31-" + std::to_string(int64_t(INT_MAX) - max + 1) + "], got " +
              std::to_string(v));
}

void check_config_index(const char* fn, int config, int num_configs) {
  require(config >= -1 && config < num_configs, fn,
          "config must be -1 (auto) or 0.." + std::to_string(num_configs - 1) + ", got " + std::to_string(config));
}

}  // namespace

// ----------------------------------------------------------------------------- fused linear

int fused_linear_num_configs() { return fl::kNumConfigs; }

std::string fused_linear_config_name(int config) {
  switch (config) {
    case 0: return "small_16x32x128_w1x1x4_s4";
    case 1: return "medium_64x64x64_w2x2x1_s4";
    case 2: return "large_128x128x32_w2x4x1_s4";
    default: return "";
  }
}

int fused_linear_config_smem(int config) {
  switch (config) {
    case 0: return fl::ConfigSmall::SMEM_BYTES;
    case 1: return fl::ConfigMedium::SMEM_BYTES;
    case 2: return fl::ConfigLarge::SMEM_BYTES;
    default: return 0;
  }
}

int fused_linear_choose_config(int64_t M, int64_t N, int sm_count, int max_smem) {
  if (M <= 16) return util::first_fitting({0}, max_smem, fused_linear_config_smem);
  // 128x128 tiles only when they still give every SM a CTA; otherwise the 4x smaller
  // medium tiles win by parallelism.
  if (M > 64 && tiles_of(M, 128, N, 128) >= sm_count) {
    return util::first_fitting({2, 1, 0}, max_smem, fused_linear_config_smem);
  }
  return util::first_fitting({1, 0}, max_smem, fused_linear_config_smem);
}

void fused_linear_validate(const FusedLinearArgs& a, const char* fn) {
  check_size(fn, "M", a.M, INT_MAX);
  check_size(fn, "N", a.N, INT_MAX);
  check_size(fn, "K", a.K, INT_MAX);
  check_codes(fn, a.dtype, a.act);
  check_config_index(fn, a.config, fl::kNumConfigs);
  require(a.K % kFusedLinearKMultiple == 0, fn,
          "K must be a multiple of 8 (16-byte cp.async chunks), got " + std::to_string(a.K));
  if (a.M == 0 || a.N == 0) return;
  if (a.K > 0) {
    util::check_matrix(fn, a.x, "x_ptr", a.x_row_stride, "x_row_stride", a.M, a.K, "K");
    util::check_matrix(fn, a.w, "w_ptr", a.w_row_stride, "w_row_stride", a.N, a.K, "K");
  }
  util::check_matrix(fn, a.out, "out_ptr", a.out_row_stride, "out_row_stride", a.M, a.N, "N");
  if (a.residual != 0) {
    util::check_matrix(fn, a.residual, "residual_ptr", a.residual_row_stride, "residual_row_stride", a.M, a.N, "N");
  }
  require(a.bias % kFusedLinearBiasAlignment == 0, fn, "bias_ptr must be 4-byte aligned (float32)");
}

// ----------------------------------------------------------------------------- W8A16

int w8a16_num_configs() { return w8::kNumConfigs; }

std::string w8a16_config_name(int config) {
  switch (config) {
    case 0: return "m16_16x64x128_w2x4_s4";
    case 1: return "m32_32x64x128_w2x4_s4";
    default: return "";
  }
}

int w8a16_config_smem(int config) {
  switch (config) {
    case 0: return w8::ConfigM16::SMEM_BYTES;
    case 1: return w8::ConfigM32::SMEM_BYTES;
    default: return 0;
  }
}

W8A16Plan w8a16_plan(int64_t M, int64_t N, int64_t K, int sm_count, int config, int splits, int max_smem) {
  W8A16Plan plan;
  plan.config = config >= 0 ? config : (M <= 16 ? util::first_fitting({0}, max_smem, w8a16_config_smem)
                                                   : util::first_fitting({1, 0}, max_smem, w8a16_config_smem));
  if (plan.config < 0) return plan;
  const int64_t tiles = plan.config == 0 ? tiles_of(M, w8::ConfigM16::BM, N, w8::ConfigM16::BN)
                                         : tiles_of(M, w8::ConfigM32::BM, N, w8::ConfigM32::BN);
  const int64_t kp = (K + w8::kPackK - 1) / w8::kPackK * w8::kPackK;
  const int64_t ktiles = (kp + w8::ConfigM16::BK - 1) / w8::ConfigM16::BK;
  if (splits > 0) {
    plan.splits = splits;
  } else {
    // Two CTAs per SM keep every SM streaming weights (the kernel is bound by weight
    // bandwidth); at least 4 k tiles per split keep the pipeline full; and a split that
    // pushes the grid past one resident wave (3 CTAs of the m16 configuration fit an SM by
    // registers, 2 of m32) would leave a ragged second wave that costs more than it gains.
    const int64_t sms = sm_count > 0 ? sm_count : 132;
    const int64_t resident = (plan.config == 0 ? 3 : 2) * sms;
    int64_t s = tiles > 0 ? (2 * sms + tiles - 1) / tiles : 1;
    s = s < ktiles / 4 ? s : ktiles / 4;
    s = s < w8::kMaxSplits ? s : w8::kMaxSplits;
    while (s > 1 && tiles * s > resident) --s;
    plan.splits = int(s > 1 ? s : 1);
  }
  if (plan.splits > 1) {
    const int64_t np = (N + w8::kPackN - 1) / w8::kPackN * w8::kPackN;
    plan.workspace_bytes = int64_t(plan.splits) * M * np * 4;
    plan.counters = tiles;
  }
  return plan;
}

void w8a16_validate(const W8A16Args& a, const char* fn) {
  check_size(fn, "M", a.M, INT_MAX);
  check_size(fn, "N", a.N, INT_MAX - w8::kPackN);
  check_size(fn, "K", a.K, INT_MAX - w8::kPackK);
  check_codes(fn, a.dtype, a.act);
  check_config_index(fn, a.config, w8::kNumConfigs);
  require(a.splits == -1 || (a.splits >= 1 && a.splits <= w8::kMaxSplits), fn,
          "splits must be -1 (auto) or 1.." + std::to_string(w8::kMaxSplits) + ", got " + std::to_string(a.splits));
  require(a.K % 8 == 0, fn, "K must be a multiple of 8 (16-byte cp.async chunks of x), got " + std::to_string(a.K));
  require(a.group_size == 0 || a.group_size == 32 || a.group_size == 64 || a.group_size == 128 ||
              a.group_size == 256,
          fn, "group_size must be 0 (per channel), 32, 64, 128 or 256, got " + std::to_string(a.group_size));
  require(a.group_size == 0 || a.K % a.group_size == 0, fn,
          "group_size " + std::to_string(a.group_size) + " must divide K = " + std::to_string(a.K));
  if (a.M == 0 || a.N == 0) return;
  util::check_matrix(fn, a.out, "out_ptr", a.out_row_stride, "out_row_stride", a.M, a.N, "N");
  require(a.bias % 4 == 0, fn, "bias_ptr must be 4-byte aligned (float32)");
  if (a.K == 0) return;
  util::check_matrix(fn, a.x, "x_ptr", a.x_row_stride, "x_row_stride", a.M, a.K, "K");
  require(a.w != 0 && a.w % 16 == 0, fn, "w_ptr (packed weight) must be non-null and 16-byte aligned");
  require(a.scale != 0 && a.scale % 16 == 0, fn, "scale_ptr (packed scales) must be non-null and 16-byte aligned");
  require(a.zero % 16 == 0, fn, "zero_ptr (packed zero points) must be 16-byte aligned");
  require(a.workspace % 16 == 0, fn, "workspace_ptr must be 16-byte aligned");
  require(a.counters % 4 == 0, fn, "counters_ptr must be 4-byte aligned (int32)");
}

void w8a16_check_workspace(const W8A16Args& a, const W8A16Plan& plan, const char* fn) {
  if (plan.splits <= 1) return;
  require(a.workspace != 0 && a.workspace_bytes >= plan.workspace_bytes, fn,
          "workspace_ptr must hold " + std::to_string(plan.workspace_bytes) + " bytes for splits = " +
              std::to_string(plan.splits) + ", got " + std::to_string(a.workspace_bytes) +
              (a.workspace == 0 ? " (null)" : ""));
  require(a.counters != 0 && a.counters_count >= plan.counters, fn,
          "counters_ptr must hold " + std::to_string(plan.counters) + " zeroed int32 for splits = " +
              std::to_string(plan.splits) + ", got " + std::to_string(a.counters_count) +
              (a.counters == 0 ? " (null)" : ""));
}

// ----------------------------------------------------------------------------- 2:4 sparse

int s24_num_configs() { return s24::kNumConfigs; }

std::string s24_config_name(int config) {
  switch (config) {
    case 0: return "small_64x16x128_w4x1x2_s4";
    case 1: return "medium_64x64x64_w2x2x1_s4";
    case 2: return "large_128x128x64_w2x4x1_s4";
    case 3: return "narrow_32x16x128_w2x1x2_s4";
    default: return "";
  }
}

int s24_config_smem(int config) {
  switch (config) {
    case 0: return s24::ConfigSmall::SMEM_BYTES;
    case 1: return s24::ConfigMedium::SMEM_BYTES;
    case 2: return s24::ConfigLarge::SMEM_BYTES;
    case 3: return s24::ConfigNarrow::SMEM_BYTES;
    default: return 0;
  }
}

int s24_choose_config(int64_t M, int64_t N, int sm_count, int max_smem) {
  // Fallbacks in order of preference: the large tile's 4-stage ring (100 KiB) exceeds the
  // 99 KiB a block may have on sm_86 / sm_89 / sm_120, where the medium tiles serve.
  const int64_t sms = sm_count > 0 ? sm_count : 132;
  if (M <= 16) {
    // Decode: one CTA per 64 W rows streams the weight; when that leaves SMs idle (N =
    // 4096 gives 64 CTAs on 132 SMs), 32-row tiles double the CTAs.
    const bool fills = tiles_of(N, s24::ConfigSmall::BR, 1, 1) >= sms;
    return fills ? util::first_fitting({0, 3}, max_smem, s24_config_smem)
                 : util::first_fitting({3}, max_smem, s24_config_smem);
  }
  // 128 x 128 tiles only when they still give every SM a CTA; otherwise the 4x smaller
  // medium tiles win by parallelism.
  if (M > 64 && tiles_of(M, 128, N, 128) >= sms) return util::first_fitting({2, 1, 3}, max_smem, s24_config_smem);
  return util::first_fitting({1, 3}, max_smem, s24_config_smem);
}

void s24_validate(const S24Args& a, const char* fn) {
  check_size(fn, "M", a.M, INT_MAX);
  check_size(fn, "N", a.N, INT_MAX - s24::kRowBlock);
  check_size(fn, "K", a.K, INT_MAX - s24::kKBlock);
  check_codes(fn, a.dtype, a.act);
  check_config_index(fn, a.config, s24::kNumConfigs);
  require(a.K % 8 == 0, fn, "K must be a multiple of 8 (16-byte cp.async chunks of x), got " + std::to_string(a.K));
  if (a.M == 0 || a.N == 0) return;
  util::check_matrix(fn, a.out, "out_ptr", a.out_row_stride, "out_row_stride", a.M, a.N, "N");
  require(a.bias % 4 == 0, fn, "bias_ptr must be 4-byte aligned (float32)");
  if (a.K == 0) return;
  const int64_t kp = (a.K + s24::kKBlock - 1) / s24::kKBlock * s24::kKBlock;
  util::check_matrix(fn, a.x, "x_ptr", a.x_row_stride, "x_row_stride", a.M, a.K, "K");
  util::check_matrix(fn, a.values, "values_ptr", a.values_row_stride, "values_row_stride", a.N, kp / 2,
                     "Kp/2 (K rounded up to 32, halved)");
  require(a.meta != 0 && a.meta % 16 == 0, fn, "meta_ptr (packed metadata) must be non-null and 16-byte aligned");
}

}  // namespace bigperf::cuda
