// Sparse linear layers for the CPU: the contract between csrc/bindings/cpu_sparse_linear.cpp
// and the per-ISA kernels (sparse_linear_{scalar,avx2,avx512}.cpp).
//
//   2:4:  out = act(x @ W^T + bias), W [N, K] stored compressed as in bigperf/sparsity.py:
//         values [N, K/2] (the two kept values of each group of 4 along K, in K order),
//         meta [N, K/8] uint8 (byte j: groups 2j and 2j+1, 2 bits per kept position,
//         the lower position first). int8 values carry a per-row fp32 scale [N, 1].
//   BSR:  out = act(x @ W^T + bias), W as (bn, bk) blocks: values [nnz, bn, bk] contiguous,
//         col_indices [nnz] (block column), row_ptr [N/bn + 1].
//
// fp32 accumulation; the output has x's dtype (round to nearest even). The binding has
// checked every size, and for BSR every index of its own copy of the index arrays (the
// pointers a kernel gets), before a kernel runs.
#pragma once
#include <cstdint>

#include "cpu/fused_linear.h"  // DType, Activation

namespace bigperf::cpu {

// Value dtype codes of the 2:4 binding: the float codes of DType, then int8.
enum class S24Values : int { f32 = 0, f16 = 1, bf16 = 2, i8 = 3 };

struct Sparse24Args {
  const void* x;              // [M, K] in x_dtype, unit stride along K
  int64_t x_row_stride;       // elements
  DType x_dtype;
  const void* values;         // [N, K/2] (lane layout: see below)
  int64_t values_row_stride;  // elements (canonical layout only)
  S24Values values_dtype;
  const uint8_t* meta;        // [N, K/8] (lane layout: see below)
  int64_t meta_row_stride;    // bytes (canonical layout only)
  const float* scale;         // [N] (contiguous [N, 1]; lane layout [N16]) for int8 values, else nullptr
  const float* bias;          // [N] or nullptr
  void* out;                  // [M, N] in x_dtype
  int64_t out_row_stride;
  int64_t M, N, K;            // K % 8 == 0
  Activation act;
  int num_threads;
};

struct BsrArgs {
  const void* x;              // [M, K] in x_dtype, unit stride along K
  int64_t x_row_stride;
  DType x_dtype;
  const void* values;         // [nnz, bn, bk] contiguous
  DType values_dtype;
  int64_t bn, bk;             // N % bn == 0, K % bk == 0
  const int32_t* col_indices; // [nnz], each in [0, K/bk)
  const int32_t* row_ptr;     // [N/bn + 1], non-decreasing, 0 .. nnz
  int64_t nnz;
  const float* bias;
  void* out;
  int64_t out_row_stride;
  int64_t M, N, K;
  Activation act;
  int num_threads;
};

// 2:4 in the CPU lane layout (bigperf/cpu_layouts.py, version 1), Sparse24Args without the
// row strides (values_row_stride, meta_row_stride unused): rows are taken 16 at a
// time (blocks; N16 = N rounded up to 16, padding rows hold zeros with positions (0, 1)),
// one row per vector lane, so a kernel needs no horizontal sums and picks the x of 8 kept
// values with one in-lane permute of the group's 4 x values.
//   meta    [N16/16][K/8][16] uint8: block b, byte j, lane l = canonical meta byte j of row
//           16b + l (bits 1:0 / 3:2 the positions of group 2j, bits 5:4 / 7:6 of group 2j+1).
//   values  per block b and group g (K/4 groups), lane l, slot s (0: lower position):
//           bf16 [b][g][l][s] (one 32-bit word per lane, slot 0 in the low half);
//           int8 [b][g/2][l][g%2][s] (one 32-bit word per lane holds a metadata byte's
//           four values: group 2j slots 0 and 1, then group 2j+1's);
//           f32, f16 [b][g][s][l].
//   scale   [N16] fp32 for int8 values.

// BSR in the CPU lane layout (bigperf/cpu_layouts.py, version 1): BsrArgs with values laid
// out per block and 16-row group q (bn % 16 == 0), one row per lane:
//   bf16 (bk even) [b][q][bk/2][16][2]: element (c, l, s) = canonical values[b][16q + l][2c + s]
//   f32, f16       [b][q][bk][16]:      element (c, l)    = canonical values[b][16q + l][c]
// col_indices and row_ptr as in the canonical form.

void sparse24_linear_scalar(const Sparse24Args& args);
void sparse24_lanes_linear_scalar(const Sparse24Args& args);
// The lane-layout 2:4 op in the panel form (sparse24_lanes_kernel.h), for M where arithmetic
// bounds the call; the scalar path has one form only.
void sparse24_lanes_linear_panel_scalar(const Sparse24Args& args);
void block_sparse_linear_scalar(const BsrArgs& args);
void block_sparse_lanes_linear_scalar(const BsrArgs& args);
// The lane-layout BSR op in the panel form (bsr_lanes_kernel.h), for M where arithmetic
// bounds the call; the scalar path has one form only.
void block_sparse_lanes_linear_panel_scalar(const BsrArgs& args);
#if defined(BIGPERF_X86)
void sparse24_linear_avx2(const Sparse24Args& args);
void sparse24_lanes_linear_avx2(const Sparse24Args& args);
void block_sparse_linear_avx2(const BsrArgs& args);
void block_sparse_lanes_linear_avx2(const BsrArgs& args);
void sparse24_linear_avx512(const Sparse24Args& args);
void sparse24_lanes_linear_avx512(const Sparse24Args& args);
void sparse24_lanes_linear_panel_avx2(const Sparse24Args& args);
void sparse24_lanes_linear_panel_avx512(const Sparse24Args& args);
void block_sparse_linear_avx512(const BsrArgs& args);
// The lane layouts with bf16 values (2:4 also int8 codes, exact in bf16) in bf16 arithmetic
// (panel_gemm_bf16.h: x rounded to bf16, fp32 sums; AVX512-BF16), for M where arithmetic
// bounds the call: 2:4 as dense pair strips of the GEMM, BSR over the stored blocks only
// (each already a pair strip).
void sparse24_lanes_linear_panel_bf16_avx512(const Sparse24Args& args);
void block_sparse_lanes_linear_panel_bf16_avx512(const BsrArgs& args);
void block_sparse_lanes_linear_avx512(const BsrArgs& args);
void block_sparse_lanes_linear_panel_avx2(const BsrArgs& args);
void block_sparse_lanes_linear_panel_avx512(const BsrArgs& args);
#endif

}  // namespace bigperf::cpu
