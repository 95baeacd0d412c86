// _cuda_emulators: the host emulators of bigperf's CUDA kernels as a Python module, for the
// tests only (tests/cuda_emulators.py builds it on demand; bigperf._C_cuda never carries
// them). Besides the three emulate_* entry points it binds the same host API as
// bigperf._C_cuda (requirements, configuration choices, the W8A16 plan), so that the
// emulator tests need nvcc's headers but not a CUDA build of bigperf.
#include <pybind11/pybind11.h>

#include "bindings/cuda_host_api.h"
#include "emulators.h"

namespace py = pybind11;
using namespace bigperf::cuda;
using namespace bigperf::cuda::bindings;

PYBIND11_MODULE(_cuda_emulators, m) {
  m.doc() = "Host emulators of bigperf's CUDA kernels (HOST pointers; slow; for layout tests only)";
  bind_host_api(m);
  m.def(
      "emulate_fused_linear",
      [](uintptr_t x, int64_t x_row_stride, uintptr_t w, int64_t w_row_stride, uintptr_t bias, uintptr_t residual,
         int64_t residual_row_stride, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K,
         int dtype_code, int act_code, int config) {
        const FusedLinearArgs a = make_fused_args(x, x_row_stride, w, w_row_stride, bias, residual,
                                                  residual_row_stride, out, out_row_stride, M, N, K, dtype_code,
                                                  act_code, config);
        py::gil_scoped_release release;
        fused_linear_emulate(a);
      },
      BIGPERF_FUSED_LINEAR_PY_ARGS, py::arg("config"),
      "bigperf._C_cuda.fused_linear's index maps and fragment layouts on the CPU (same arguments without the "
      "stream; config required)");
  m.def(
      "emulate_w8a16_linear",
      [](uintptr_t x, int64_t x_row_stride, uintptr_t w, uintptr_t scale, uintptr_t zero, int64_t group_size,
         uintptr_t bias, uintptr_t out, int64_t out_row_stride, uintptr_t workspace, int64_t workspace_bytes,
         uintptr_t counters, int64_t counters_count, int64_t M, int64_t N, int64_t K, int dtype_code, int act_code,
         int config, int splits) {
        const W8A16Args a = make_w8a16_args(x, x_row_stride, w, scale, zero, group_size, bias, out, out_row_stride,
                                            workspace, workspace_bytes, counters, counters_count, M, N, K,
                                            dtype_code, act_code, config, splits);
        py::gil_scoped_release release;
        w8a16_emulate(a);
      },
      BIGPERF_W8A16_PY_ARGS, py::arg("config"), py::arg("splits"),
      "bigperf._C_cuda.w8a16_linear's index maps, register dequantisation and split-K protocol on the CPU (same "
      "arguments without the stream; config and splits required)");
  m.def(
      "emulate_sparse24_linear",
      [](uintptr_t x, int64_t x_row_stride, uintptr_t values, int64_t values_row_stride, uintptr_t meta,
         uintptr_t bias, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K, int dtype_code,
         int act_code, int config) {
        const S24Args a = make_s24_args(x, x_row_stride, values, values_row_stride, meta, bias, out, out_row_stride,
                                        M, N, K, dtype_code, act_code, config);
        py::gil_scoped_release release;
        s24_emulate(a);
      },
      BIGPERF_S24_PY_ARGS, py::arg("config"),
      "bigperf._C_cuda.sparse24_linear's index maps and mma.sp fragment/metadata layouts on the CPU (same "
      "arguments without the stream; config required)");
}
