// Binding of the CPU fused linear (see csrc/cpu/fused_linear.h).
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <string>
#include <tuple>

#include "bindings/cpu_checks.h"
#include "cpu/cpu_features.h"
#include "cpu/fused_linear.h"

namespace py = pybind11;
using namespace bigperf::cpu;
using bigperf::bindings::check_activation;
using bigperf::bindings::kernel_for_isa;
using bigperf::bindings::require;
using bigperf::bindings::set_shared_args;
using bigperf::bindings::to_dtype;

namespace {

using KernelFn = void (*)(const FusedLinearArgs&);

// The forms of the kernel (fused_linear.h): dot (any M), panel (arithmetic-bound M), and the
// panel form in bf16 arithmetic (AVX512-BF16: isa "avx512" only, K even).
enum class Form { dot, panel, panel_bf16 };

template <Form F>
void fused_linear(const std::string& isa, uintptr_t x, int64_t x_row_stride, int x_dtype,
                  uintptr_t w, int64_t w_row_stride, int w_dtype, uintptr_t bias,
                  uintptr_t residual, int64_t residual_row_stride, uintptr_t out,
                  int64_t out_row_stride, int64_t M, int64_t N, int64_t K, int act,
                  int num_threads) {
  const char* fn = F == Form::dot     ? "bigperf._C.fused_linear"
                   : F == Form::panel ? "bigperf._C.fused_linear_panel"
                                      : "bigperf._C.fused_linear_panel_bf16";
  require(M >= 0 && N >= 0 && K >= 0, fn, "M, N and K must be non-negative");
  check_activation(act, fn);
  require(num_threads >= 1, fn, "num_threads must be >= 1");
  FusedLinearArgs args{};
  args.x_dtype = to_dtype(x_dtype, fn, "x");
  args.w_dtype = to_dtype(w_dtype, fn, "weight");
  KernelFn kernel = F == Form::dot ? kernel_for_isa<KernelFn>(isa, fn, ISA_KERNELS(fused_linear))
                                   : kernel_for_isa<KernelFn>(isa, fn, ISA_KERNELS(fused_linear_panel));
#if defined(BIGPERF_X86)
  if (F == Form::panel_bf16) {
    require(isa == "avx512", fn, "the bf16 panel form runs on the 'avx512' ISA path only, got '" + isa + "'");
    require(K % 2 == 0, fn, "the bf16 panel form needs an even K (pairs of k), got K = " + std::to_string(K));
    kernel = fused_linear_panel_bf16_avx512;
  }
#endif
  if (M == 0 || N == 0) return;
  require(out != 0, fn, "out pointer is null");
  require(out_row_stride >= N || M == 1, fn, "out row stride is smaller than N");
  require(K == 0 || (x != 0 && w != 0), fn, "x or weight pointer is null");
  require(x_row_stride >= K || M == 1, fn, "x row stride is smaller than K");
  require(w_row_stride >= K || N == 1, fn, "weight row stride is smaller than K");
  require(residual == 0 || residual_row_stride >= N || M == 1, fn, "residual row stride is smaller than N");
  set_shared_args(args, x, x_row_stride, bias, out, out_row_stride, M, N, K, act, num_threads);
  args.w = reinterpret_cast<const void*>(w);
  args.w_row_stride = w_row_stride;
  args.residual = reinterpret_cast<const void*>(residual);
  args.residual_row_stride = residual_row_stride;
  py::gil_scoped_release release;
  kernel(args);
}

}  // namespace

void register_fused_linear(py::module_& m) {
  using Binding = void (*)(const std::string&, uintptr_t, int64_t, int, uintptr_t, int64_t, int, uintptr_t, uintptr_t,
                           int64_t, uintptr_t, int64_t, int64_t, int64_t, int64_t, int, int);
  const std::tuple<const char*, Binding, const char*> forms[] = {
      {"fused_linear", &fused_linear<Form::dot>, "out = act(x @ w^T + bias) + residual on raw pointers; releases the GIL"},
      {"fused_linear_panel", &fused_linear<Form::panel>,
       "fused_linear in the panel form (outer-product tiles on weight panels converted to fp32), for M where "
       "arithmetic bounds the GEMM"},
      {"fused_linear_panel_bf16", &fused_linear<Form::panel_bf16>,
       "fused_linear's panel form in bf16 arithmetic (x and the weight rounded to bf16, fp32 sums; AVX512-BF16: "
       "isa 'avx512' only, K even)"}};
  for (const auto& [name, binding, doc] : forms)
    m.def(name, binding, py::arg("isa"), py::arg("x"), py::arg("x_row_stride"), py::arg("x_dtype"), py::arg("w"),
          py::arg("w_row_stride"), py::arg("w_dtype"), py::arg("bias"), py::arg("residual"),
          py::arg("residual_row_stride"), py::arg("out"), py::arg("out_row_stride"), py::arg("M"), py::arg("N"),
          py::arg("K"), py::arg("act"), py::arg("num_threads"), doc);
}
