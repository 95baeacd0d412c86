// Binding of the CPU int8 linear kernels (see csrc/cpu/int8_linear.h).
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <string>
#include <tuple>

#include "bindings/cpu_checks.h"
#include "cpu/cpu_features.h"
#include "cpu/int8_linear.h"

namespace py = pybind11;
using namespace bigperf::cpu;
using bigperf::bindings::check_activation;
using bigperf::bindings::kernel_for_isa;
using bigperf::bindings::require;
using bigperf::bindings::set_shared_args;
using bigperf::bindings::to_dtype;

namespace {

constexpr const char* kWeightFn = "bigperf._C.int8_weight_linear";
constexpr const char* kWeightPanelFn = "bigperf._C.int8_weight_linear_panel";
constexpr const char* kWeightPanelBf16Fn = "bigperf._C.int8_weight_linear_panel_bf16";
constexpr const char* kDynamicFn = "bigperf._C.int8_dynamic_linear";
constexpr const char* kPanelsFn = "bigperf._C.int8_dynamic_linear_panels";
constexpr const char* kWeightPanelsFn = "bigperf._C.int8_weight_linear_panels";

using WeightFn = void (*)(const Int8WeightLinearArgs&);
using DynamicFn = void (*)(const Int8DynamicLinearArgs&);

// The checks both ops share; nonzero M and N only (nothing is touched otherwise).
void check_common(const char* fn, uintptr_t x, int64_t x_row_stride, uintptr_t qw, int64_t qw_row_stride,
                  uintptr_t scale, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K) {
  require(out != 0, fn, "argument 'out' is a null pointer");
  require(scale != 0, fn, "argument 'scale' is a null pointer");
  require(K == 0 || (x != 0 && qw != 0), fn, "argument 'x' or 'qweight' is a null pointer");
  require(out_row_stride >= N || M == 1, fn,
          "argument 'out_row_stride' " + std::to_string(out_row_stride) + " is smaller than N = " + std::to_string(N));
  require(x_row_stride >= K || M == 1, fn,
          "argument 'x_row_stride' " + std::to_string(x_row_stride) + " is smaller than K = " + std::to_string(K));
  require(qw_row_stride >= K || N == 1, fn,
          "argument 'qw_row_stride' " + std::to_string(qw_row_stride) + " is smaller than K = " + std::to_string(K));
}

void check_sizes(const char* fn, int64_t M, int64_t N, int64_t K, int act, int num_threads) {
  require(M >= 0 && N >= 0 && K >= 0, fn, "arguments 'M', 'N' and 'K' must be non-negative");
  check_activation(act, fn);
  require(num_threads >= 1, fn, "argument 'num_threads' must be >= 1");
}

// What both W8A8 entry points check beyond check_sizes: the activation bits, and a K whose
// int8 products the int32 accumulator holds exactly.
void check_dynamic(const char* fn, int64_t K, int act_bits) {
  require(act_bits == 7 || act_bits == 8, fn,
          "argument 'act_bits' must be 7 or 8 (bits of the per-token activation codes), got " +
              std::to_string(act_bits));
  require(K <= kInt8DynamicMaxK, fn,
          "argument 'K' " + std::to_string(K) + " exceeds " + std::to_string(kInt8DynamicMaxK) +
              ", past which int8 products may overflow the int32 accumulator");
}

// The forms of the weight-only kernel (int8_linear.h) on the row-major weight.
enum class WeightForm { dot, panel, panel_bf16 };

// bf16 arithmetic (panel_gemm_bf16.h) needs the AVX-512 unit (AVX512-BF16) and whole pairs of k.
void check_bf16_form(const char* fn, const std::string& isa, int64_t K) {
  require(isa == "avx512", fn, "the bf16 panel form runs on the 'avx512' ISA path only, got '" + isa + "'");
  require(K % 2 == 0, fn, "the bf16 panel form needs an even K (pairs of k), got K = " + std::to_string(K));
}

// Every form takes these arguments; panel: for arithmetic-bound M; panel_bf16: the same in
// bf16 arithmetic, for calls whose precision admits it.
template <WeightForm Form>
void int8_weight_linear(const std::string& isa, uintptr_t x, int64_t x_row_stride, int x_dtype, uintptr_t qw,
                        int64_t qw_row_stride, uintptr_t scale, uintptr_t zero_point, int64_t groups,
                        uintptr_t bias, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K,
                        int act, int num_threads) {
  const char* fn = Form == WeightForm::dot ? kWeightFn : Form == WeightForm::panel ? kWeightPanelFn : kWeightPanelBf16Fn;
  check_sizes(fn, M, N, K, act, num_threads);
  if (Form == WeightForm::panel_bf16) check_bf16_form(fn, isa, K);
  Int8WeightLinearArgs a{};
  a.x_dtype = to_dtype(x_dtype, fn, "x_dtype");
  require(groups >= 1, fn, "argument 'groups' must be >= 1, got " + std::to_string(groups));
  require(K % groups == 0, fn,
          "argument 'groups' " + std::to_string(groups) + " does not divide K = " + std::to_string(K));
  WeightFn kernel = Form == WeightForm::dot ? kernel_for_isa<WeightFn>(isa, fn, ISA_KERNELS(int8_weight_linear))
                                            : kernel_for_isa<WeightFn>(isa, fn, ISA_KERNELS(int8_weight_linear_panel));
#if defined(BIGPERF_X86)
  if (Form == WeightForm::panel_bf16) kernel = int8_weight_linear_panel_bf16_avx512;
#endif
  if (M == 0 || N == 0) return;
  check_common(fn, x, x_row_stride, qw, qw_row_stride, scale, out, out_row_stride, M, N, K);
  // K == 0: out = act(bias); the portable path handles it without vector-width cases.
  if (K == 0) kernel = int8_weight_linear_scalar;
  set_shared_args(a, x, x_row_stride, bias, out, out_row_stride, M, N, K, act, num_threads);
  a.qw = reinterpret_cast<const int8_t*>(qw);
  a.qw_row_stride = qw_row_stride;
  a.scale = reinterpret_cast<const float*>(scale);
  a.zero_point = reinterpret_cast<const int8_t*>(zero_point);
  a.groups = groups;
  py::gil_scoped_release release;
  kernel(a);
}

template <bool Dot>
void int8_dynamic_linear(const std::string& isa, uintptr_t x, int64_t x_row_stride, int x_dtype, uintptr_t qw,
                         int64_t qw_row_stride, uintptr_t w_scale, uintptr_t bias, uintptr_t out,
                         int64_t out_row_stride, int64_t M, int64_t N, int64_t K, int act, int num_threads,
                         int act_bits, uintptr_t x_absmax) {
  const char* fn = kDynamicFn;
  check_sizes(fn, M, N, K, act, num_threads);
  check_dynamic(fn, K, act_bits);
  Int8DynamicLinearArgs a{};
  a.x_dtype = to_dtype(x_dtype, fn, "x_dtype");
  DynamicFn kernel = kernel_for_isa<DynamicFn>(isa, kDynamicFn, ISA_KERNELS(int8_dynamic_linear));
  if (M == 0 || N == 0) return;
  check_common(fn, x, x_row_stride, qw, qw_row_stride, w_scale, out, out_row_stride, M, N, K);
  if (K == 0) kernel = int8_dynamic_linear_scalar;
  set_shared_args(a, x, x_row_stride, bias, out, out_row_stride, M, N, K, act, num_threads);
  a.qw = reinterpret_cast<const int8_t*>(qw);
  a.qw_row_stride = qw_row_stride;
  a.w_scale = reinterpret_cast<const float*>(w_scale);
  a.act_bits = act_bits;
  require(x_absmax == 0 || x_absmax % alignof(float) == 0, fn, "argument 'x_absmax' must be 0 or fp32-aligned");
  a.x_absmax = reinterpret_cast<const float*>(x_absmax);
  a.dot_form = Dot;
  py::gil_scoped_release release;
  kernel(a);
}

// W8A8 on the w8a8-cpu layout (int8_linear.h): panels [ceil(N / 16) * Kp * 16] int8 and
// colsum [ceil(N / 16) * 16] int32, Kp = K rounded up to 32; the kernel of ISA path `isa`
// ("avx2" or "avx512") at any M.
void int8_dynamic_linear_panels(const std::string& isa, uintptr_t x, int64_t x_row_stride, int x_dtype,
                                uintptr_t panels, uintptr_t colsum, uintptr_t w_scale, uintptr_t bias, uintptr_t out,
                                int64_t out_row_stride, int64_t M, int64_t N, int64_t K, int act, int num_threads,
                                int act_bits, uintptr_t x_absmax) {
  const char* fn = kPanelsFn;
  check_sizes(fn, M, N, K, act, num_threads);
  check_dynamic(fn, K, act_bits);
  require(isa == "avx2" || isa == "avx512", fn, "argument 'isa' must be 'avx2' or 'avx512', got '" + isa + "'");
  require(isa_runnable(isa), fn, "argument 'isa': ISA path '" + isa + "' is not compiled in or not supported by this CPU");
  Int8DynamicLinearArgs a{};
  a.x_dtype = to_dtype(x_dtype, fn, "x_dtype");
  if (M == 0 || N == 0) return;
  require(K > 0, fn, "argument 'K' must be positive");
  check_common(fn, x, x_row_stride, panels, K, w_scale, out, out_row_stride, M, N, K);
  require(colsum != 0 && colsum % alignof(int32_t) == 0, fn, "argument 'colsum' must be an int32-aligned pointer");
  require(x_absmax == 0 || x_absmax % alignof(float) == 0, fn, "argument 'x_absmax' must be 0 or fp32-aligned");
  set_shared_args(a, x, x_row_stride, bias, out, out_row_stride, M, N, K, act, num_threads);
  a.w_scale = reinterpret_cast<const float*>(w_scale);
  a.act_bits = act_bits;
  a.x_absmax = reinterpret_cast<const float*>(x_absmax);
  a.panels = reinterpret_cast<const int8_t*>(panels);
  a.colsum = reinterpret_cast<const int32_t*>(colsum);
  py::gil_scoped_release release;
#if defined(BIGPERF_X86)
  if (isa == "avx512") int8_dynamic_linear_panels_avx512(a);
  else int8_dynamic_linear_panels_avx2(a);
#endif
}

// Rows [r0, r1) of the w8a16-cpu layout's panels (panels [ceil(N / 16) * K * 16] int8) as
// dtype `dtype` into out (row stride out_row_stride elements): PyTorch's paths on the layout.
void int8_panels_to_rows(uintptr_t panels, int64_t K, int64_t r0, int64_t r1, uintptr_t out, int64_t out_row_stride,
                         int dtype) {
  const char* fn = "bigperf._C.int8_panels_to_rows";
  const DType d = to_dtype(dtype, fn, "dtype");
  require(isa_runnable("avx2"), fn, "needs the AVX2 path, which this build or CPU lacks");
  require(K > 0 && r0 >= 0 && r0 % 16 == 0 && r1 >= r0, fn,
          "arguments 'K' > 0 and 0 <= 'r0' <= 'r1' with 'r0' a multiple of 16 required");
  require(out_row_stride >= K, fn, "argument 'out_row_stride' is smaller than K");
  require(panels != 0 && out != 0, fn, "argument 'panels' or 'out' is a null pointer");
  py::gil_scoped_release release;
#if defined(BIGPERF_X86)
  int8_panels_to_rows_avx2(reinterpret_cast<const int8_t*>(panels), K * 16, K, r0, r1, reinterpret_cast<void*>(out),
                           out_row_stride, d);
#endif
}

// W8A16 on the w8a16-cpu layout (int8_linear.h): panels [ceil(N / 16) * K * 16] int8, scale
// [groups][Np] fp32 and zero_point [groups][Np] int8 or 0 (group-major, Np = N rounded up to
// 16); form "dot" or "gemm" (int8_weight_panels.h) of ISA path `isa` ("avx2" or "avx512"), or
// "gemm-bf16" (the gemm form in bf16 arithmetic, panel_gemm_bf16.h: "avx512" only, K even).
void int8_weight_linear_panels(const std::string& isa, const std::string& form, uintptr_t x, int64_t x_row_stride, int x_dtype,
                               uintptr_t panels, uintptr_t scale, uintptr_t zero_point, int64_t groups,
                               uintptr_t bias, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N,
                               int64_t K, int act, int num_threads) {
  const char* fn = kWeightPanelsFn;
  check_sizes(fn, M, N, K, act, num_threads);
  require(form == "dot" || form == "gemm" || form == "gemm-bf16", fn,
          "argument 'form' must be 'dot', 'gemm' or 'gemm-bf16', got '" + form + "'");
  require(isa == "avx2" || isa == "avx512", fn, "argument 'isa' must be 'avx2' or 'avx512', got '" + isa + "'");
  require(isa_runnable(isa), fn, "argument 'isa': ISA path '" + isa + "' is not compiled in or not supported by this CPU");
  Int8WeightLinearArgs a{};
  a.x_dtype = to_dtype(x_dtype, fn, "x_dtype");
  if (M == 0 || N == 0) return;
  require(K > 0, fn, "argument 'K' must be positive");
  if (form == "gemm-bf16") check_bf16_form(fn, isa, K);
  check_common(fn, x, x_row_stride, panels, K, scale, out, out_row_stride, M, N, K);
  require(scale % alignof(float) == 0, fn, "argument 'scale' must be fp32-aligned");
  require(groups >= 1 && K % groups == 0, fn,
          "argument 'groups' " + std::to_string(groups) + " must be >= 1 and divide K = " + std::to_string(K));
  set_shared_args(a, x, x_row_stride, bias, out, out_row_stride, M, N, K, act, num_threads);
  a.qw = reinterpret_cast<const int8_t*>(panels);
  a.qw_row_stride = K * 16;
  a.scale = reinterpret_cast<const float*>(scale);
  a.zero_point = reinterpret_cast<const int8_t*>(zero_point);
  a.groups = groups;
  py::gil_scoped_release release;
#if defined(BIGPERF_X86)
  if (isa == "avx512") {
    if (form == "dot") int8_weight_linear_panels_dot_avx512(a);
    else if (form == "gemm") int8_weight_linear_panels_gemm_avx512(a);
    else int8_weight_linear_panels_gemm_bf16_avx512(a);
  } else {
    if (form == "dot") int8_weight_linear_panels_dot_avx2(a);
    else int8_weight_linear_panels_gemm_avx2(a);
  }
#endif
}

}  // namespace

void register_int8_linear(py::module_& m) {
  using WeightBinding = void (*)(const std::string&, uintptr_t, int64_t, int, uintptr_t, int64_t, uintptr_t, uintptr_t,
                                 int64_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int64_t, int, int);
  const std::tuple<const char*, WeightBinding, const char*> weight_forms[] = {
      {"int8_weight_linear", &int8_weight_linear<WeightForm::dot>,
       "W8A16: out = act(x @ ((qw - zero_point) * scale)^T + bias) on raw pointers; releases the GIL"},
      {"int8_weight_linear_panel", &int8_weight_linear<WeightForm::panel>,
       "int8_weight_linear in the panel form (outer-product tiles on weight panels dequantised to fp32), "
       "for M where arithmetic bounds the GEMM"},
      {"int8_weight_linear_panel_bf16", &int8_weight_linear<WeightForm::panel_bf16>,
       "int8_weight_linear's panel form in bf16 arithmetic (x and the dequantised weight rounded to bf16, fp32 "
       "sums; AVX512-BF16: isa 'avx512' only, K even)"}};
  for (const auto& [name, binding, doc] : weight_forms)
    m.def(name, binding, py::arg("isa"), py::arg("x"), py::arg("x_row_stride"), py::arg("x_dtype"), py::arg("qw"),
          py::arg("qw_row_stride"), py::arg("scale"), py::arg("zero_point"), py::arg("groups"), py::arg("bias"),
          py::arg("out"), py::arg("out_row_stride"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("act"),
          py::arg("num_threads"), doc);
  for (const bool dot : {false, true})
    m.def(dot ? "int8_dynamic_linear_dot" : "int8_dynamic_linear",
          dot ? &int8_dynamic_linear<true> : &int8_dynamic_linear<false>, py::arg("isa"), py::arg("x"),
          py::arg("x_row_stride"), py::arg("x_dtype"), py::arg("qw"), py::arg("qw_row_stride"), py::arg("w_scale"),
          py::arg("bias"), py::arg("out"), py::arg("out_row_stride"), py::arg("M"), py::arg("N"), py::arg("K"),
          py::arg("act"), py::arg("num_threads"), py::arg("act_bits") = 8, py::arg("x_absmax") = 0,
          dot ? "int8_dynamic_linear with AVX2's dot form at any M (row blocks, no weight packing); the other "
                "ISA paths run their one form"
              : "W8A8: x quantised per row (act_bits 8: codes in [-127, 127], 7: [-63, 63]; against the [M] fp32 "
                "absmax at x_absmax when not 0, else each row's own), int32 accumulation, rescaled, + bias, act; "
                "releases the GIL");
  m.def("int8_dynamic_linear_panels", &int8_dynamic_linear_panels, py::arg("isa"), py::arg("x"), py::arg("x_row_stride"),
        py::arg("x_dtype"), py::arg("panels"), py::arg("colsum"), py::arg("w_scale"), py::arg("bias"), py::arg("out"),
        py::arg("out_row_stride"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("act"), py::arg("num_threads"),
        py::arg("act_bits"), py::arg("x_absmax") = 0,
        "int8_dynamic_linear on the weight held in the w8a8-cpu layout (AVX2, any M); releases the GIL");
  m.def("int8_panels_to_rows", &int8_panels_to_rows, py::arg("panels"), py::arg("K"), py::arg("r0"), py::arg("r1"),
        py::arg("out"), py::arg("out_row_stride"), py::arg("dtype"));
  m.def("int8_weight_linear_panels", &int8_weight_linear_panels, py::arg("isa"), py::arg("form"), py::arg("x"),
        py::arg("x_row_stride"), py::arg("x_dtype"), py::arg("panels"), py::arg("scale"), py::arg("zero_point"),
        py::arg("groups"), py::arg("bias"), py::arg("out"), py::arg("out_row_stride"), py::arg("M"), py::arg("N"),
        py::arg("K"), py::arg("act"), py::arg("num_threads"),
        "W8A16 on the w8a16-cpu layout (16-column panels [K][16] int8, group-major scales and zero points): form 'dot' "
        "(weight streams, small M), 'gemm' (panel GEMM) or 'gemm-bf16' (the panel GEMM in bf16 arithmetic, AVX-512 "
        "only); releases the GIL");
}
