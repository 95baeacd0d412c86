// bigperf._C_cuda: CUDA kernels behind a raw-pointer interface (no torch headers).
// Pointers arrive as integers from the Python op wrappers, which validate tensors first;
// the C++ side re-checks every size, stride and alignment it is given.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cuda/cuda_api.h"

namespace py = pybind11;
using namespace bigperf::cuda;

namespace {

FusedLinearArgs make_args(uintptr_t x, int64_t x_row_stride, uintptr_t w, int64_t w_row_stride, uintptr_t bias,
                          uintptr_t residual, int64_t residual_row_stride, uintptr_t out, int64_t out_row_stride,
                          int64_t M, int64_t N, int64_t K, int dtype_code, int act_code, int config) {
  FusedLinearArgs a;
  a.x = x;
  a.x_row_stride = x_row_stride;
  a.w = w;
  a.w_row_stride = w_row_stride;
  a.bias = bias;
  a.residual = residual;
  a.residual_row_stride = residual_row_stride;
  a.out = out;
  a.out_row_stride = out_row_stride;
  a.M = M;
  a.N = N;
  a.K = K;
  a.dtype = dtype_code;
  a.act = act_code;
  a.config = config;
  return a;
}

const char* kFusedLinearDoc = R"doc(
fused_linear(x_ptr, x_row_stride, w_ptr, w_row_stride, bias_ptr, residual_ptr,
             residual_row_stride, out_ptr, out_row_stride, M, N, K, dtype_code, act_code,
             stream, config=-1)

out[M,N] = act(x[M,K] @ w[N,K]^T + bias[N]) + residual[M,N] on tensor cores
(mma.sync m16n8k16, fp32 accumulation), enqueued on `stream` of the current device.

Pointers are integer device addresses (0 = absent for bias_ptr / residual_ptr); strides
are in elements, one per row (the column stride must be 1).
  dtype_code: 1 = float16, 2 = bfloat16 -- x, w, residual and out all have this dtype;
              bias is float32.
  act_code:   0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh), 4 silu.
  stream:     cudaStream_t as an integer (torch.cuda.current_stream().cuda_stream); the
              pointers must live on the current device.
  config:     -1 picks the tile configuration from M, N and the SM count; 0..2 force one
              (see fused_linear_requirements()["configs"]).
Requirements (see fused_linear_requirements()): K % 8 == 0; x, w, residual and out
16-byte aligned; each row stride a multiple of 8 and >= K (x, w) or >= N (residual, out)
whenever that matrix has more than one row; bias 4-byte aligned. out must not overlap x,
w or bias; out == residual (same stride) is allowed. Releases the GIL.
Raises ValueError for bad arguments, RuntimeError without a CUDA device or on a launch
error.)doc";

py::dict fused_linear_requirements() {
  py::dict d;
  d["k_multiple"] = kFusedLinearKMultiple;
  d["row_stride_multiple"] = kFusedLinearStrideMultiple;
  d["pointer_alignment"] = kFusedLinearPointerAlignment;
  d["bias_alignment"] = kFusedLinearBiasAlignment;
  d["column_stride"] = 1;
  py::dict dtypes;
  dtypes["float16"] = 1;
  dtypes["bfloat16"] = 2;
  d["dtype_codes"] = dtypes;
  d["bias_dtype"] = "float32";
  py::dict acts;
  acts["none"] = 0;
  acts["relu"] = 1;
  acts["gelu_erf"] = 2;
  acts["gelu_tanh"] = 3;
  acts["silu"] = 4;
  d["act_codes"] = acts;
  py::list configs;
  for (int c = 0; c < fused_linear_num_configs(); ++c) configs.append(fused_linear_config_name(c));
  d["configs"] = configs;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "bigperf CUDA kernels (raw-pointer interface; see bigperf/ops for the torch ops)";
  m.def("device_count", &device_count, "CUDA devices visible (0 without a driver)");
  m.def("runtime_info", &runtime_info);
  m.def("compiled_archs", &compiled_archs,
        "Archs with SASS in this module, e.g. ['80', '90a'] (without a BIGPERF_CUDA_ARCHS_STR "
        "define at build time: nvcc's __CUDA_ARCH_LIST__, which drops the 'a' suffix)");
  m.def("fused_linear_requirements", &fused_linear_requirements,
        "What fused_linear needs from its arguments (alignment, strides, codes, configs)");
  m.def("fused_linear_choose_config", &fused_linear_choose_config, py::arg("M"), py::arg("N"),
        py::arg("sm_count"), "Index of the tile configuration fused_linear picks for this shape");
  m.def(
      "fused_linear",
      [](uintptr_t x, int64_t x_row_stride, uintptr_t w, int64_t w_row_stride, uintptr_t bias, uintptr_t residual,
         int64_t residual_row_stride, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K,
         int dtype_code, int act_code, uintptr_t stream, int config) {
        const FusedLinearArgs a = make_args(x, x_row_stride, w, w_row_stride, bias, residual, residual_row_stride,
                                            out, out_row_stride, M, N, K, dtype_code, act_code, config);
        py::gil_scoped_release release;
        fused_linear(a, stream);
      },
      py::arg("x_ptr"), py::arg("x_row_stride"), py::arg("w_ptr"), py::arg("w_row_stride"), py::arg("bias_ptr"),
      py::arg("residual_ptr"), py::arg("residual_row_stride"), py::arg("out_ptr"), py::arg("out_row_stride"),
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("dtype_code"), py::arg("act_code"), py::arg("stream"),
      py::arg("config") = -1, kFusedLinearDoc);
  m.def(
      "_emulate_fused_linear",
      [](uintptr_t x, int64_t x_row_stride, uintptr_t w, int64_t w_row_stride, uintptr_t bias, uintptr_t residual,
         int64_t residual_row_stride, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K,
         int dtype_code, int act_code, int config) {
        const FusedLinearArgs a = make_args(x, x_row_stride, w, w_row_stride, bias, residual, residual_row_stride,
                                            out, out_row_stride, M, N, K, dtype_code, act_code, config);
        py::gil_scoped_release release;
        fused_linear_emulate(a);
      },
      py::arg("x_ptr"), py::arg("x_row_stride"), py::arg("w_ptr"), py::arg("w_row_stride"), py::arg("bias_ptr"),
      py::arg("residual_ptr"), py::arg("residual_row_stride"), py::arg("out_ptr"), py::arg("out_row_stride"),
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("dtype_code"), py::arg("act_code"), py::arg("config"),
      "Test hook: runs fused_linear's index maps and the PTX fragment layouts on the CPU with HOST pointers "
      "(same arguments as fused_linear, config required, no stream). Slow; for layout tests only.");
}
