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

W8A16Args make_w8a16_args(uintptr_t x, int64_t x_row_stride, uintptr_t w, uintptr_t scale, uintptr_t zero,
                          int64_t group_size, uintptr_t bias, uintptr_t out, int64_t out_row_stride,
                          uintptr_t workspace, int64_t workspace_bytes, uintptr_t counters, int64_t counters_count,
                          int64_t M, int64_t N, int64_t K, int dtype_code, int act_code, int config, int splits) {
  W8A16Args a;
  a.x = x;
  a.x_row_stride = x_row_stride;
  a.w = w;
  a.scale = scale;
  a.zero = zero;
  a.group_size = group_size;
  a.bias = bias;
  a.out = out;
  a.out_row_stride = out_row_stride;
  a.workspace = workspace;
  a.workspace_bytes = workspace_bytes;
  a.counters = counters;
  a.counters_count = counters_count;
  a.M = M;
  a.N = N;
  a.K = K;
  a.dtype = dtype_code;
  a.act = act_code;
  a.config = config;
  a.splits = splits;
  return a;
}

S24Args make_s24_args(uintptr_t x, int64_t x_row_stride, uintptr_t values, int64_t values_row_stride, uintptr_t meta,
                      uintptr_t bias, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K,
                      int dtype_code, int act_code, int config) {
  S24Args a;
  a.x = x;
  a.x_row_stride = x_row_stride;
  a.values = values;
  a.values_row_stride = values_row_stride;
  a.meta = meta;
  a.bias = bias;
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

const char* kW8A16Doc = R"doc(
w8a16_linear(x_ptr, x_row_stride, w_ptr, scale_ptr, zero_ptr, group_size, bias_ptr,
             out_ptr, out_row_stride, workspace_ptr, workspace_bytes, counters_ptr,
             counters_count, M, N, K, dtype_code, act_code, stream, config=-1, splits=-1)

out[M,N] = act(x[M,K] @ dequant(W)^T + bias[N]) with int8 weights dequantised in
registers (tensor cores, mma.sync m16n8k16, fp32 accumulation), for small M.

W, its scales and zero points come in the packed layout of bigperf.cuda_layouts.pack_w8a16
(layout version w8a16_requirements()["layout_version"]): w_ptr [Np/32, Kp*32] int8,
scale_ptr [G, Np] float32, zero_ptr [G, Np] float32 or 0, with Np = N rounded up to 32,
Kp = K rounded up to 16 and G = K / group_size (group_size 0 = per channel, G = 1).
  dtype_code: 1 = float16, 2 = bfloat16 (x and out); bias is float32 (0 = none).
  act_code:   0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh), 4 silu.
  config, splits: -1 picks them from the shape and the SM count (see w8a16_plan). With
              splits > 1, workspace_ptr must hold w8a16_plan(...)["workspace_bytes"] bytes
              and counters_ptr w8a16_plan(...)["counters"] int32 that are zero on entry
              (the kernel leaves them zero); both must not be shared by concurrent launches.
Requirements (see w8a16_requirements()): K % 8 == 0; group_size in {0, 32, 64, 128, 256}
dividing K; x, out, w, scale, zero and workspace 16-byte aligned; x and out row strides a
multiple of 8 and >= K / >= N when there is more than one row; bias and counters 4-byte
aligned. Releases the GIL. Raises ValueError for bad arguments, RuntimeError without a
CUDA device or on a launch error.)doc";

const char* kS24Doc = R"doc(
sparse24_linear(x_ptr, x_row_stride, values_ptr, values_row_stride, meta_ptr, bias_ptr,
                out_ptr, out_row_stride, M, N, K, dtype_code, act_code, stream, config=-1)

out[M,N] = act(x[M,K] @ W^T + bias[N]) with W 2:4-sparse along K on the sparse tensor
cores (mma.sp m16n8k32, out^T = W x^T with W as the sparse operand, fp32 accumulation).

W comes in the packed layout of bigperf.cuda_layouts.pack_s24 (layout version
sparse24_requirements()["layout_version"]): values_ptr [N, Kp/2] in x's dtype (row stride
values_row_stride >= Kp/2, a multiple of 8), meta_ptr [ceil(N/16), Kp/32, 16] uint32, with
Kp = K rounded up to 32.
  dtype_code: 1 = float16, 2 = bfloat16 (x, values, out); bias is float32 (0 = none).
  act_code:   0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh), 4 silu.
  config:     -1 picks the tile configuration from M, N and the SM count; 0..2 force one.
Requirements (see sparse24_requirements()): K % 8 == 0; x, values, meta and out 16-byte
aligned; x and out row strides a multiple of 8 and >= K / >= N when there is more than one
row; bias 4-byte aligned. Releases the GIL. Raises ValueError for bad arguments,
RuntimeError without a CUDA device or on a launch error.)doc";

py::dict act_codes() {
  py::dict acts;
  acts["none"] = 0;
  acts["relu"] = 1;
  acts["gelu_erf"] = 2;
  acts["gelu_tanh"] = 3;
  acts["silu"] = 4;
  return acts;
}

py::dict w8a16_requirements() {
  py::dict d;
  d["layout_version"] = kW8A16LayoutVersion;
  d["k_multiple"] = 8;
  d["pack_n"] = 32;
  d["pack_k"] = 16;
  d["group_sizes"] = py::make_tuple(0, 32, 64, 128, 256);
  d["row_stride_multiple"] = 8;
  d["pointer_alignment"] = 16;
  d["bias_alignment"] = 4;
  py::dict dtypes;
  dtypes["float16"] = 1;
  dtypes["bfloat16"] = 2;
  d["dtype_codes"] = dtypes;
  d["act_codes"] = act_codes();
  py::list configs;
  for (int c = 0; c < w8a16_num_configs(); ++c) configs.append(w8a16_config_name(c));
  d["configs"] = configs;
  return d;
}

py::dict s24_requirements() {
  py::dict d;
  d["layout_version"] = kS24LayoutVersion;
  d["k_multiple"] = 8;
  d["pack_k"] = 32;
  d["pack_rows"] = 16;
  d["row_stride_multiple"] = 8;
  d["pointer_alignment"] = 16;
  d["bias_alignment"] = 4;
  py::dict dtypes;
  dtypes["float16"] = 1;
  dtypes["bfloat16"] = 2;
  d["dtype_codes"] = dtypes;
  d["act_codes"] = act_codes();
  py::list configs;
  for (int c = 0; c < s24_num_configs(); ++c) configs.append(s24_config_name(c));
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

  // ------------------------------------------------------------------------- W8A16
  m.def("w8a16_requirements", &w8a16_requirements,
        "What w8a16_linear needs from its arguments (layout version, alignment, codes, configs)");
  m.def(
      "w8a16_plan",
      [](int64_t M, int64_t N, int64_t K, int sm_count, int config, int splits) {
        const W8A16Plan plan = w8a16_plan(M, N, K, sm_count, config, splits);
        py::dict d;
        d["config"] = plan.config;
        d["splits"] = plan.splits;
        d["workspace_bytes"] = plan.workspace_bytes;
        d["counters"] = plan.counters;
        return d;
      },
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("sm_count"), py::arg("config") = -1, py::arg("splits") = -1,
      "The tile configuration and K split w8a16_linear runs for this shape, and the split-K workspace "
      "(bytes) and counters (int32) it then needs");
  m.def(
      "w8a16_linear",
      [](uintptr_t x, int64_t x_row_stride, uintptr_t w, uintptr_t scale, uintptr_t zero, int64_t group_size,
         uintptr_t bias, uintptr_t out, int64_t out_row_stride, uintptr_t workspace, int64_t workspace_bytes,
         uintptr_t counters, int64_t counters_count, int64_t M, int64_t N, int64_t K, int dtype_code, int act_code,
         uintptr_t stream, int config, int splits) {
        const W8A16Args a = make_w8a16_args(x, x_row_stride, w, scale, zero, group_size, bias, out, out_row_stride,
                                            workspace, workspace_bytes, counters, counters_count, M, N, K,
                                            dtype_code, act_code, config, splits);
        py::gil_scoped_release release;
        w8a16_linear(a, stream);
      },
      py::arg("x_ptr"), py::arg("x_row_stride"), py::arg("w_ptr"), py::arg("scale_ptr"), py::arg("zero_ptr"),
      py::arg("group_size"), py::arg("bias_ptr"), py::arg("out_ptr"), py::arg("out_row_stride"),
      py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("counters_ptr"), py::arg("counters_count"),
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("dtype_code"), py::arg("act_code"), py::arg("stream"),
      py::arg("config") = -1, py::arg("splits") = -1, kW8A16Doc);
  m.def(
      "_emulate_w8a16_linear",
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
      py::arg("x_ptr"), py::arg("x_row_stride"), py::arg("w_ptr"), py::arg("scale_ptr"), py::arg("zero_ptr"),
      py::arg("group_size"), py::arg("bias_ptr"), py::arg("out_ptr"), py::arg("out_row_stride"),
      py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("counters_ptr"), py::arg("counters_count"),
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("dtype_code"), py::arg("act_code"), py::arg("config"),
      py::arg("splits"),
      "Test hook: runs w8a16_linear's index maps, register dequantisation and split-K protocol on the CPU with "
      "HOST pointers (same arguments, no stream, config and splits required). Slow; for layout tests only.");

  // ------------------------------------------------------------------------- 2:4 sparse
  m.def("sparse24_requirements", &s24_requirements,
        "What sparse24_linear needs from its arguments (layout version, alignment, codes, configs)");
  m.def("sparse24_choose_config", &s24_choose_config, py::arg("M"), py::arg("N"), py::arg("sm_count"),
        "Index of the tile configuration sparse24_linear picks for this shape");
  m.def(
      "sparse24_linear",
      [](uintptr_t x, int64_t x_row_stride, uintptr_t values, int64_t values_row_stride, uintptr_t meta,
         uintptr_t bias, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K, int dtype_code,
         int act_code, uintptr_t stream, int config) {
        const S24Args a = make_s24_args(x, x_row_stride, values, values_row_stride, meta, bias, out, out_row_stride,
                                        M, N, K, dtype_code, act_code, config);
        py::gil_scoped_release release;
        s24_linear(a, stream);
      },
      py::arg("x_ptr"), py::arg("x_row_stride"), py::arg("values_ptr"), py::arg("values_row_stride"),
      py::arg("meta_ptr"), py::arg("bias_ptr"), py::arg("out_ptr"), py::arg("out_row_stride"), py::arg("M"),
      py::arg("N"), py::arg("K"), py::arg("dtype_code"), py::arg("act_code"), py::arg("stream"),
      py::arg("config") = -1, kS24Doc);
  m.def(
      "_emulate_sparse24_linear",
      [](uintptr_t x, int64_t x_row_stride, uintptr_t values, int64_t values_row_stride, uintptr_t meta,
         uintptr_t bias, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K, int dtype_code,
         int act_code, int config) {
        const S24Args a = make_s24_args(x, x_row_stride, values, values_row_stride, meta, bias, out, out_row_stride,
                                        M, N, K, dtype_code, act_code, config);
        py::gil_scoped_release release;
        s24_emulate(a);
      },
      py::arg("x_ptr"), py::arg("x_row_stride"), py::arg("values_ptr"), py::arg("values_row_stride"),
      py::arg("meta_ptr"), py::arg("bias_ptr"), py::arg("out_ptr"), py::arg("out_row_stride"), py::arg("M"),
      py::arg("N"), py::arg("K"), py::arg("dtype_code"), py::arg("act_code"), py::arg("config"),
      "Test hook: runs sparse24_linear's index maps and the PTX mma.sp fragment/metadata layouts on the CPU "
      "with HOST pointers (same arguments, no stream, config required). Slow; for layout tests only.");
}
