// Binding of the CPU sparse linear kernels (see csrc/cpu/sparse_linear.h). Every size is
// re-checked here, so that no input can make a kernel read or write out of bounds. BSR
// indices are copied (O(nnz), a few microseconds) and the copy is checked and read by the
// kernel: another thread, or a numpy view, may write the caller's index tensors while the
// kernel runs without the GIL, and a kernel that read them there could be sent anywhere.
// 2:4 metadata needs no copy: each 2-bit field addresses a position inside its own group,
// whatever its value.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <initializer_list>
#include <string>
#include <tuple>
#include <vector>

#include "bindings/cpu_checks.h"
#include "bindings/sparse_nonfinite.h"
#include "cpu/cpu_features.h"
#include "cpu/sparse_linear.h"

namespace py = pybind11;
using namespace bigperf::cpu;
using bigperf::bindings::check_activation;
using bigperf::bindings::kernel_for_isa;
using bigperf::bindings::nan_where_pruned_meets_nonfinite;
using bigperf::bindings::require;
using bigperf::bindings::set_shared_args;
using bigperf::bindings::to_dtype;

namespace {

constexpr const char* k24Fn = "bigperf._C.sparse24_linear";
constexpr const char* kBsrFn = "bigperf._C.block_sparse_linear";
constexpr const char* kLanesFn = "bigperf._C.sparse24_lanes_linear";
constexpr const char* kLanesPanelFn = "bigperf._C.sparse24_lanes_linear_panel";
constexpr const char* kBsrLanesFn = "bigperf._C.block_sparse_lanes_linear";
constexpr const char* kBsrLanesPanelFn = "bigperf._C.block_sparse_lanes_linear_panel";
constexpr const char* kLanesPanelBf16Fn = "bigperf._C.sparse24_lanes_linear_panel_bf16";
constexpr const char* kBsrLanesPanelBf16Fn = "bigperf._C.block_sparse_lanes_linear_panel_bf16";

// The forms of the lane-layout kernels: vector (any M), panel (arithmetic-bound M), and
// panel_bf16 (the panel form in bf16 arithmetic: AVX-512 with AVX512-BF16, bf16 values).
enum class LanesForm { vector, panel, panel_bf16 };

template <LanesForm Form>
constexpr const char* lanes_fn(const char* vector, const char* panel, const char* panel_bf16) {
  return Form == LanesForm::vector ? vector : Form == LanesForm::panel ? panel : panel_bf16;
}

// What the bf16 form needs beyond the other forms' checks.
void check_bf16_form(const char* fn, const std::string& isa, bool readable_values, const char* readable) {
  require(isa == "avx512", fn, "the bf16 panel form runs on the 'avx512' ISA path only, got '" + isa + "'");
  require(readable_values, fn, std::string("the bf16 panel form reads ") + readable + " values only");
}

using S24Fn = void (*)(const Sparse24Args&);
using BsrFn = void (*)(const BsrArgs&);

std::string str(int64_t v) { return std::to_string(v); }

S24Values s24_values_dtype(int code, const char* fn) {
  require(code >= 0 && code <= 3, fn,
          "argument 'values_dtype' has unknown code " + std::to_string(code) + " (0 f32, 1 f16, 2 bf16, 3 int8)");
  return static_cast<S24Values>(code);
}

void check_common(const char* fn, int64_t M, int64_t N, int64_t K, int act, int num_threads, uintptr_t x,
                  int64_t x_row_stride, uintptr_t out, int64_t out_row_stride) {
  require(M >= 0, fn, "argument 'M' must be non-negative, got " + str(M));
  require(N >= 0, fn, "argument 'N' must be non-negative, got " + str(N));
  require(K >= 0, fn, "argument 'K' must be non-negative, got " + str(K));
  check_activation(act, fn);
  require(num_threads >= 1, fn, "argument 'num_threads' must be >= 1, got " + std::to_string(num_threads));
  if (M == 0 || N == 0) return;
  require(out != 0, fn, "argument 'out' is a null pointer");
  require(K == 0 || x != 0, fn, "argument 'x' is a null pointer");
  require(x_row_stride >= K || M == 1, fn,
          "argument 'x_row_stride' " + str(x_row_stride) + " is smaller than K = " + str(K));
  require(out_row_stride >= N || M == 1, fn,
          "argument 'out_row_stride' " + str(out_row_stride) + " is smaller than N = " + str(N));
}

// The arguments both 2:4 layouts share, checked (the row strides are the canonical call's).
Sparse24Args s24_args(const char* fn, uintptr_t x, int64_t x_row_stride, int x_dtype, uintptr_t values,
                      int values_dtype, uintptr_t meta, uintptr_t scale, uintptr_t bias, uintptr_t out,
                      int64_t out_row_stride, int64_t M, int64_t N, int64_t K, int act, int num_threads) {
  check_common(fn, M, N, K, act, num_threads, x, x_row_stride, out, out_row_stride);
  Sparse24Args a{};
  a.x_dtype = to_dtype(x_dtype, fn, "argument 'x_dtype'");
  a.values_dtype = s24_values_dtype(values_dtype, fn);
  require(K % 8 == 0, fn, "argument 'K' = " + str(K) + " must be a multiple of 8 for the 2:4 format");
  require(a.values_dtype != S24Values::i8 || scale != 0, fn, "argument 'scale' is required for int8 values");
  require(M == 0 || N == 0 || K == 0 || (values != 0 && meta != 0), fn,
          "argument 'values' or 'meta' is a null pointer");
  set_shared_args(a, x, x_row_stride, bias, out, out_row_stride, M, N, K, act, num_threads);
  a.values = reinterpret_cast<const void*>(values);
  a.meta = reinterpret_cast<const uint8_t*>(meta);
  a.scale = a.values_dtype == S24Values::i8 ? reinterpret_cast<const float*>(scale) : nullptr;
  return a;
}

// Whether the 2-bit-per-position metadata nibble of a 2:4 group leaves position p pruned.
inline bool nibble_prunes(unsigned nibble, int64_t p) {
  return static_cast<int64_t>(nibble & 3u) != p && static_cast<int64_t>((nibble >> 2) & 3u) != p;
}

// lanes: the CPU lane layout's metadata ([N16/16][K/8][16]), else the canonical [N, K/8].
void run_s24(S24Fn kernel, const Sparse24Args& a, bool lanes) {
  if (a.M == 0 || a.N == 0) return;
  py::gil_scoped_release release;
  kernel(a);
  const int64_t steps = a.K / 8;
  nan_where_pruned_meets_nonfinite(a, [&](int64_t n, int64_t k) {
    const int64_t g = k / 4;
    const uint8_t byte = lanes ? a.meta[((n / 16) * steps + g / 2) * 16 + n % 16]
                               : a.meta[n * a.meta_row_stride + g / 2];
    return nibble_prunes(byte >> (4 * (g % 2)), k % 4);
  });
}

void sparse24_linear(const std::string& isa, uintptr_t x, int64_t x_row_stride, int x_dtype, uintptr_t values,
                     int64_t values_row_stride, int values_dtype, uintptr_t meta, int64_t meta_row_stride,
                     uintptr_t scale, uintptr_t bias, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N,
                     int64_t K, int act, int num_threads) {
  const char* fn = k24Fn;
  Sparse24Args a = s24_args(fn, x, x_row_stride, x_dtype, values, values_dtype, meta, scale, bias, out,
                            out_row_stride, M, N, K, act, num_threads);
  S24Fn kernel = kernel_for_isa<S24Fn>(isa, fn, ISA_KERNELS(sparse24_linear));
  require(values_row_stride >= K / 2 || N <= 1, fn,
          "argument 'values_row_stride' " + str(values_row_stride) + " is smaller than K/2 = " + str(K / 2));
  require(meta_row_stride >= K / 8 || N <= 1, fn,
          "argument 'meta_row_stride' " + str(meta_row_stride) + " is smaller than K/8 = " + str(K / 8));
  a.values_row_stride = values_row_stride;
  a.meta_row_stride = meta_row_stride;
  run_s24(kernel, a, false);
}

// The lane layout's buffers are whole 16-row blocks of K/8 steps; their sizes are the
// Python op's to check (bigperf/ops/sparse24_lanes_linear.py), as for every raw pointer here.
// Every form of the kernel (LanesForm) takes these arguments.
template <LanesForm Form>
void sparse24_lanes_linear(const std::string& isa, uintptr_t x, int64_t x_row_stride, int x_dtype, uintptr_t values,
                           int values_dtype, uintptr_t meta, uintptr_t scale, uintptr_t bias, uintptr_t out,
                           int64_t out_row_stride, int64_t M, int64_t N, int64_t K, int act, int num_threads) {
  const char* fn = lanes_fn<Form>(kLanesFn, kLanesPanelFn, kLanesPanelBf16Fn);
  const Sparse24Args a = s24_args(fn, x, x_row_stride, x_dtype, values, values_dtype, meta, scale, bias, out,
                                  out_row_stride, M, N, K, act, num_threads);
  S24Fn kernel = Form == LanesForm::vector ? kernel_for_isa<S24Fn>(isa, fn, ISA_KERNELS(sparse24_lanes_linear))
                                           : kernel_for_isa<S24Fn>(isa, fn, ISA_KERNELS(sparse24_lanes_linear_panel));
#if defined(BIGPERF_X86)
  if (Form == LanesForm::panel_bf16) {
    check_bf16_form(fn, isa, a.values_dtype == S24Values::bf16 || a.values_dtype == S24Values::i8,
                    "bfloat16 or int8");
    kernel = sparse24_lanes_linear_panel_bf16_avx512;
  }
#endif
  run_s24(kernel, a, true);
}

// One BSR call: the kernel's arguments, whose index pointers point at this call's own
// copies of the caller's index arrays (checked after copying: what is checked is what the
// kernel reads). The copies live in buffers of the calling thread, reused from call to
// call (no allocation per call; a thread runs one call at a time).
struct BsrCall {
  BsrArgs args{};
  std::vector<int32_t>& col_indices;
  std::vector<int32_t>& row_ptr;
};

BsrCall new_bsr_call() {
  thread_local std::vector<int32_t> col_indices, row_ptr;
  return BsrCall{BsrArgs{}, col_indices, row_ptr};
}

// The BSR arguments both layouts share, into `call`, every index copied and checked
// (O(nnz), a few microseconds).
void bsr_args(BsrCall& call, const char* fn, uintptr_t x, int64_t x_row_stride, int x_dtype, uintptr_t values,
              int values_dtype, int64_t bn, int64_t bk, uintptr_t col_indices, uintptr_t row_ptr, int64_t nnz,
              uintptr_t bias, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K, int act,
              int num_threads) {
  check_common(fn, M, N, K, act, num_threads, x, x_row_stride, out, out_row_stride);
  BsrArgs& a = call.args;
  a.x_dtype = to_dtype(x_dtype, fn, "argument 'x_dtype'");
  a.values_dtype = to_dtype(values_dtype, fn, "argument 'values_dtype'");
  require(bn >= 1, fn, "argument 'bn' must be >= 1, got " + str(bn));
  require(bk >= 1, fn, "argument 'bk' must be >= 1, got " + str(bk));
  require(N % bn == 0, fn, "argument 'N' = " + str(N) + " is not a multiple of the block height bn = " + str(bn));
  require(K % bk == 0, fn, "argument 'K' = " + str(K) + " is not a multiple of the block width bk = " + str(bk));
  require(nnz >= 0, fn, "argument 'nnz' must be non-negative, got " + str(nnz));
  set_shared_args(a, x, x_row_stride, bias, out, out_row_stride, M, N, K, act, num_threads);
  a.values = reinterpret_cast<const void*>(values);
  a.bn = bn;
  a.bk = bk;
  a.nnz = nnz;
  if (M == 0 || N == 0) return;
  require(row_ptr != 0, fn, "argument 'row_ptr' is a null pointer");
  require(nnz == 0 || (values != 0 && col_indices != 0), fn, "argument 'values' or 'col_indices' is a null pointer");
  // N / bn + 1 row pointers is what the caller's row_ptr must hold (N is derived from it
  // on the Python side).
  const int64_t block_rows = N / bn, block_cols = K / bk;
  const auto* caller_rp = reinterpret_cast<const int32_t*>(row_ptr);
  const auto* caller_ci = reinterpret_cast<const int32_t*>(col_indices);
  // Copied without writing entries that already hold the value (the same layer called
  // again): a written line would leave the other kernel threads' caches, and re-reading it
  // from the writer's core cost ~1.5 us per call at 768x768 (benchmarks/NOTES.md).
  call.row_ptr.resize(static_cast<size_t>(block_rows + 1));
  call.col_indices.resize(static_cast<size_t>(nnz));
  int32_t* rp_copy = call.row_ptr.data();
  for (int64_t i = 0; i <= block_rows; ++i) {
    const int32_t r = caller_rp[i];
    if (rp_copy[i] != r) rp_copy[i] = r;
  }
  const int32_t* rp = rp_copy;
  require(rp[0] == 0, fn, "argument 'row_ptr' must start at 0, got " + str(rp[0]));
  int64_t decreasing = -1;  // (the message is built only on failure: this loop is per call)
  for (int64_t i = 0; i < block_rows && decreasing < 0; ++i)
    if (rp[i + 1] < rp[i]) decreasing = i;
  require(decreasing < 0, fn, "argument 'row_ptr' decreases at block row " + str(decreasing));
  require(rp[block_rows] == nnz, fn,
          "argument 'row_ptr' ends at " + str(rp[block_rows]) + ", expected nnz = " + str(nnz));
  int32_t* ci = call.col_indices.data();
  int32_t lo = 0, hi = 0;
  for (int64_t i = 0; i < nnz; ++i) {  // copy and range in one pass: the range is of the copy
    const int32_t c = caller_ci[i];
    if (ci[i] != c) ci[i] = c;
    lo = c < lo ? c : lo;
    hi = c > hi ? c : hi;
  }
  require(lo >= 0 && (nnz == 0 || hi < block_cols), fn,
          "argument 'col_indices' holds block columns outside [0, " + str(block_cols) + ")");
  a.col_indices = ci;
  a.row_ptr = rp;
}

void run_bsr(BsrFn kernel, const BsrCall& call) {
  const BsrArgs& a = call.args;
  if (a.M == 0 || a.N == 0) return;
  py::gil_scoped_release release;
  kernel(a);
  // A block that is not stored is zeros in the dense weight (see sparse_nonfinite.h).
  nan_where_pruned_meets_nonfinite(a, [&](int64_t n, int64_t k) {
    const int64_t br = n / a.bn, column = k / a.bk;
    const int32_t* begin = a.col_indices + a.row_ptr[br];
    const int32_t* end = a.col_indices + a.row_ptr[br + 1];
    return std::find(begin, end, column) == end;
  });
}

void block_sparse_linear(const std::string& isa, uintptr_t x, int64_t x_row_stride, int x_dtype, uintptr_t values,
                         int values_dtype, int64_t bn, int64_t bk, uintptr_t col_indices, uintptr_t row_ptr,
                         int64_t nnz, uintptr_t bias, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N,
                         int64_t K, int act, int num_threads) {
  BsrFn kernel = kernel_for_isa<BsrFn>(isa, kBsrFn, ISA_KERNELS(block_sparse_linear));
  BsrCall call = new_bsr_call();
  bsr_args(call, kBsrFn, x, x_row_stride, x_dtype, values, values_dtype, bn, bk, col_indices, row_ptr, nnz, bias,
           out, out_row_stride, M, N, K, act, num_threads);
  run_bsr(kernel, call);
}

// values in the BSR lane layout (sparse_linear.h): 16-row groups, bf16 column pairs. Every
// form of the kernel (LanesForm) takes these arguments.
template <LanesForm Form>
void block_sparse_lanes_linear(const std::string& isa, uintptr_t x, int64_t x_row_stride, int x_dtype,
                               uintptr_t values, int values_dtype, int64_t bn, int64_t bk, uintptr_t col_indices,
                               uintptr_t row_ptr, int64_t nnz, uintptr_t bias, uintptr_t out, int64_t out_row_stride,
                               int64_t M, int64_t N, int64_t K, int act, int num_threads) {
  const char* fn = lanes_fn<Form>(kBsrLanesFn, kBsrLanesPanelFn, kBsrLanesPanelBf16Fn);
  require(bn % 16 == 0, fn, "argument 'bn' = " + str(bn) + " must be a multiple of 16 for the lane layout");
  require(values_dtype != static_cast<int>(DType::bf16) || bk % 2 == 0, fn,
          "argument 'bk' = " + str(bk) + " must be even for bf16 values in the lane layout");
  BsrFn kernel = Form == LanesForm::vector ? kernel_for_isa<BsrFn>(isa, fn, ISA_KERNELS(block_sparse_lanes_linear))
                                           : kernel_for_isa<BsrFn>(isa, fn, ISA_KERNELS(block_sparse_lanes_linear_panel));
#if defined(BIGPERF_X86)
  if (Form == LanesForm::panel_bf16) {
    check_bf16_form(fn, isa, values_dtype == static_cast<int>(DType::bf16), "bfloat16");
    kernel = block_sparse_lanes_linear_panel_bf16_avx512;
  }
#endif
  BsrCall call = new_bsr_call();
  bsr_args(call, fn, x, x_row_stride, x_dtype, values, values_dtype, bn, bk, col_indices, row_ptr, nnz, bias, out,
           out_row_stride, M, N, K, act, num_threads);
  run_bsr(kernel, call);
}

}  // namespace

void register_sparse_linear(py::module_& m) {
  m.def("sparse24_linear", &sparse24_linear, py::arg("isa"), py::arg("x"), py::arg("x_row_stride"),
        py::arg("x_dtype"), py::arg("values"), py::arg("values_row_stride"), py::arg("values_dtype"),
        py::arg("meta"), py::arg("meta_row_stride"), py::arg("scale"), py::arg("bias"), py::arg("out"),
        py::arg("out_row_stride"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("act"),
        py::arg("num_threads"),
        "out = act(x @ W^T + bias), W 2:4 compressed (values, meta[, scale]); raw pointers, releases the GIL");
  using S24Binding = void (*)(const std::string&, uintptr_t, int64_t, int, uintptr_t, int, uintptr_t, uintptr_t,
                              uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int64_t, int, int);
  const std::tuple<const char*, S24Binding, const char*> s24_forms[] = {
      {"sparse24_lanes_linear", &sparse24_lanes_linear<LanesForm::vector>,
       "out = act(x @ W^T + bias), W 2:4 in the CPU lane layout (bigperf/formats/sparse24_lanes.py); raw pointers, "
       "releases the GIL"},
      {"sparse24_lanes_linear_panel", &sparse24_lanes_linear<LanesForm::panel>,
       "sparse24_lanes_linear in the panel form (x packed transposed, each kept value broadcast over rows of x), for "
       "M where arithmetic bounds the call"},
      {"sparse24_lanes_linear_panel_bf16", &sparse24_lanes_linear<LanesForm::panel_bf16>,
       "sparse24_lanes_linear in bf16 arithmetic (a panel GEMM over the kept values only, each pair's two x picked "
       "by a byte shuffle; x rounded to bf16, fp32 sums): bfloat16 values or int8 codes, isa 'avx512' only"}};
  for (const auto& [name, binding, doc] : s24_forms)
    m.def(name, binding, py::arg("isa"), py::arg("x"), py::arg("x_row_stride"), py::arg("x_dtype"), py::arg("values"),
          py::arg("values_dtype"), py::arg("meta"), py::arg("scale"), py::arg("bias"), py::arg("out"),
          py::arg("out_row_stride"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("act"), py::arg("num_threads"),
          doc);
  m.def("block_sparse_linear", &block_sparse_linear, py::arg("isa"), py::arg("x"), py::arg("x_row_stride"),
        py::arg("x_dtype"), py::arg("values"), py::arg("values_dtype"), py::arg("bn"), py::arg("bk"),
        py::arg("col_indices"), py::arg("row_ptr"), py::arg("nnz"), py::arg("bias"), py::arg("out"),
        py::arg("out_row_stride"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("act"),
        py::arg("num_threads"),
        "out = act(x @ W^T + bias), W in BSR form (only stored blocks are read); raw pointers, releases the GIL");
  using BsrBinding = void (*)(const std::string&, uintptr_t, int64_t, int, uintptr_t, int, int64_t, int64_t, uintptr_t,
                              uintptr_t, int64_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int64_t, int, int);
  const std::tuple<const char*, BsrBinding, const char*> bsr_forms[] = {
      {"block_sparse_lanes_linear", &block_sparse_lanes_linear<LanesForm::vector>,
       "block_sparse_linear with values in the CPU lane layout (bigperf/formats/bsr_lanes.py); raw pointers, releases "
       "the GIL"},
      {"block_sparse_lanes_linear_panel", &block_sparse_lanes_linear<LanesForm::panel>,
       "block_sparse_lanes_linear in the panel form (register tiles over each stored block's fp32 panel), for M where "
       "arithmetic bounds the call"},
      {"block_sparse_lanes_linear_panel_bf16", &block_sparse_lanes_linear<LanesForm::panel_bf16>,
       "block_sparse_lanes_linear in bf16 arithmetic (register tiles over the stored blocks, which are bf16 pair "
       "strips already; x rounded to bf16, fp32 sums): bfloat16 values, isa 'avx512' only"}};
  for (const auto& [name, binding, doc] : bsr_forms)
    m.def(name, binding, py::arg("isa"), py::arg("x"), py::arg("x_row_stride"), py::arg("x_dtype"), py::arg("values"),
          py::arg("values_dtype"), py::arg("bn"), py::arg("bk"), py::arg("col_indices"), py::arg("row_ptr"),
          py::arg("nnz"), py::arg("bias"), py::arg("out"), py::arg("out_row_stride"), py::arg("M"), py::arg("N"),
          py::arg("K"), py::arg("act"), py::arg("num_threads"), doc);
}
