// int8 linear layers for the CPU: the contract between csrc/bindings/cpu_int8_linear.cpp
// and the per-ISA kernels (int8_linear_{scalar,avx2,avx512}.cpp).
//
//   weight-only (W8A16): out = act(x @ ((q - zero) * scale)^T + bias), fp32 accumulation
//   dynamic (W8A8):      x quantised per row here (torch.round semantics), int32
//                        accumulation, out = act(acc * x_scale[m] * w_scale[n] + bias);
//                        act_bits 8: codes in [-127, 127], 7: [-63, 63] (fbgemm's
//                        reduce_range accuracy class, which AVX2 computes faster);
//                        x_absmax, when given, is the absmax each row is quantised
//                        against (codes clamp to +-qmax if a row exceeds it)
//
// Layouts are those of bigperf/quant.py: qweight [N, K] int8 (unit stride along K),
// scale [N, groups] fp32 contiguous, zero_point [N, groups] int8 contiguous or null.
// The binding has checked every size before a kernel runs.
#pragma once
#include <cstdint>

#include "cpu/fused_linear.h"  // DType, Activation

namespace bigperf::cpu {

struct Int8WeightLinearArgs {
  const void* x;              // [M, K] in x_dtype, unit stride along K
  int64_t x_row_stride;       // elements
  DType x_dtype;
  const int8_t* qw;           // [N, K]
  int64_t qw_row_stride;      // elements (bytes)
  const float* scale;         // [N, groups]
  const int8_t* zero_point;   // [N, groups] or nullptr (symmetric)
  int64_t groups;             // 1 (per channel) or K / group_size
  const float* bias;          // [N] or nullptr
  void* out;                  // [M, N] in x_dtype
  int64_t out_row_stride;
  int64_t M, N, K;
  Activation act;
  int num_threads;
};

struct Int8DynamicLinearArgs {
  const void* x;
  int64_t x_row_stride;
  DType x_dtype;
  const int8_t* qw;           // [N, K], any int8 value (the accumulation is exact for all)
  int64_t qw_row_stride;
  const float* w_scale;       // [N] (per channel)
  const float* bias;          // [N] or nullptr
  void* out;
  int64_t out_row_stride;
  int64_t M, N, K;
  Activation act;
  int num_threads;
  int act_bits = 8;           // 8 or 7 (checked by the binding): see act_qmax
  const float* x_absmax = nullptr;  // [M] or nullptr: each row quantised against this absmax
                                    // instead of its own (a row-wise shard's all-reduced one)
  bool dot_form = false;  // AVX2: the dot form at any M, in row blocks (the dispatcher's cpu:dot);
                          // the other ISA paths have one form each and ignore it
  // The weight as the layer holds it in the "w8a8-cpu" layout (bigperf/formats/w8a8_cpu.py),
  // read by int8_dynamic_linear_panels_* in place of qw: 16-column panels, each
  // [Kp / u][16][u] int8 with u = 2 (act_bits 8) or 4 (act_bits 7) consecutive k per column,
  // Kp = K rounded up to kW8A8PanelK, zero padded; colsum [Np] int32 = sum over K of each
  // column's codes (act_bits 7 takes back the x offset with it).
  const int8_t* panels = nullptr;
  const int32_t* colsum = nullptr;
};

// The w8a8-cpu layout's panel width (columns) and K padding.
constexpr int64_t kW8A8PanelN = 16;
constexpr int64_t kW8A8PanelK = 32;

// The largest |code| of x: bigperf.quant.quantize_activation_per_token(x, bits).
constexpr int act_qmax(int act_bits) { return act_bits == 7 ? 63 : 127; }

// Row m's given absmax (x_absmax), or nullptr: the row is quantised against its own.
inline const float* given_absmax(const Int8DynamicLinearArgs& a, int64_t m) {
  return a.x_absmax ? a.x_absmax + m : nullptr;
}

// |sum of K int8 x int8 products| <= K * 128 * 128 must fit int32.
constexpr int64_t kInt8DynamicMaxK = (int64_t{1} << 31) / (128 * 128) - 1;

void int8_weight_linear_scalar(const Int8WeightLinearArgs& args);
void int8_dynamic_linear_scalar(const Int8DynamicLinearArgs& args);
// The weight-only op in the panel form (int8_weight_panel.h), for M where arithmetic bounds
// the GEMM; the scalar path has one form only, so its panel entry runs the scalar kernel.
void int8_weight_linear_panel_scalar(const Int8WeightLinearArgs& args);
#if defined(BIGPERF_X86)
void int8_weight_linear_avx2(const Int8WeightLinearArgs& args);
void int8_dynamic_linear_avx2(const Int8DynamicLinearArgs& args);
void int8_weight_linear_avx512(const Int8WeightLinearArgs& args);
void int8_dynamic_linear_avx512(const Int8DynamicLinearArgs& args);
void int8_weight_linear_panel_avx2(const Int8WeightLinearArgs& args);
void int8_weight_linear_panel_avx512(const Int8WeightLinearArgs& args);
// W8A8 on the weight held in the w8a8-cpu layout (args.panels, args.colsum), any M: AVX2
// (vpmaddwd / vpmaddubsw) and AVX-512 VNNI (vpdpbusd; pairs interleaved in registers).
void int8_dynamic_linear_panels_avx2(const Int8DynamicLinearArgs& args);
void int8_dynamic_linear_panels_avx512(const Int8DynamicLinearArgs& args);
// W8A16 on the "w8a16-cpu" layout (int8_weight_panels.h): qw = 16-column panels [K][16] int8,
// qw_row_stride = 16 K; scale [groups][Np] fp32 and zero_point [groups][Np] int8 or null,
// group-major (Np = N rounded up to 16).
void int8_weight_linear_panels_dot_avx2(const Int8WeightLinearArgs& args);
void int8_weight_linear_panels_gemm_avx2(const Int8WeightLinearArgs& args);
void int8_weight_linear_panels_dot_avx512(const Int8WeightLinearArgs& args);
// Weight rows [r0, r1) of the w8a16-cpu panels as values of d (int8_linear_avx2.cpp).
void int8_panels_to_rows_avx2(const int8_t* panels, int64_t panel_bytes, int64_t K, int64_t r0, int64_t r1, void* out,
                              int64_t out_row_stride, DType d);
void int8_weight_linear_panels_gemm_avx512(const Int8WeightLinearArgs& args);
// The panel GEMMs (row-major weight; w8a16-cpu layout) in bf16 arithmetic (panel_gemm_bf16.h):
// x and the dequantised weight rounded to bf16, fp32 sums; K even; AVX-512 unit only.
void int8_weight_linear_panel_bf16_avx512(const Int8WeightLinearArgs& args);
void int8_weight_linear_panels_gemm_bf16_avx512(const Int8WeightLinearArgs& args);
#endif

}  // namespace bigperf::cpu
