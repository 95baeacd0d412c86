// bigperf._C_cuda: CUDA kernels behind a raw-pointer interface (no torch headers).
// Pointers arrive as integers from the Python op wrappers, which validate tensors first;
// the C++ side re-checks every size, stride and alignment it is given.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/cuda_host_api.h"
#include "cuda/cuda_api.h"

namespace py = pybind11;
using namespace bigperf::cuda;
using namespace bigperf::cuda::bindings;

namespace {

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
              pointers must be device memory of the current device (not checked unless
              set_pointer_checks(True): the caller knows where its tensors live).
  config:     -1 picks the tile configuration from M, N, the SM count and the shared
              memory the device allows a block; 0..2 force one (see
              fused_linear_requirements()["configs"] and ["config_smem_bytes"]).
Requirements (see fused_linear_requirements()): K % 8 == 0; x, w, residual and out
16-byte aligned; each row stride a multiple of 8 and >= K (x, w) or >= N (residual, out)
whenever that matrix has more than one row; bias 4-byte aligned. out must not overlap x,
w or bias; out == residual (same stride) is allowed. Releases the GIL.
Raises ValueError for bad arguments (a forced config the device cannot hold included),
RuntimeError without a CUDA device or on a launch error.)doc";

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
  stream:     as fused_linear (device pointers of the current device, not checked).
  config, splits: -1 picks them from the shape, the SM count and the device's shared
              memory per block (see w8a16_plan). With
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
  stream:     as fused_linear (device pointers of the current device, not checked).
  config:     -1 picks the tile configuration from M, N, the SM count and the device's
              shared memory per block (the large tile needs 100 KiB, more than sm_86 /
              sm_89 allow); 0..3 force one.
Requirements (see sparse24_requirements()): K % 8 == 0; x, values, meta and out 16-byte
aligned; x and out row strides a multiple of 8 and >= K / >= N when there is more than one
row; bias 4-byte aligned. Releases the GIL. Raises ValueError for bad arguments,
RuntimeError without a CUDA device or on a launch error.)doc";

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "bigperf CUDA kernels (raw-pointer interface; see bigperf/ops for the torch ops)";
  m.def("device_count", &device_count, "CUDA devices visible (0 without a driver)");
  m.def("runtime_info", &runtime_info);
  m.def("compiled_archs", &compiled_archs,
        "Archs with SASS in this module, e.g. ['80', '90a'] (without a BIGPERF_CUDA_ARCHS_STR "
        "define at build time: nvcc's __CUDA_ARCH_LIST__, which drops the 'a' suffix)");
  m.def("compiled_ptx_archs", &compiled_ptx_archs,
        "Virtual archs whose PTX this module carries for the driver to JIT on GPUs without matching SASS, "
        "e.g. ['80'] (empty when the build did not say)");
  m.def("set_pointer_checks", &set_pointer_checks, py::arg("on"),
        "Check every pointer of every launch with cudaPointerGetAttributes (off by default; "
        "BIGPERF_CUDA_CHECK_POINTERS=1 turns it on at import)");
  m.def("pointer_checks", &pointer_checks, "Whether launches check their pointers (see set_pointer_checks)");
  bind_host_api(m);
  m.def(
      "fused_linear",
      [](uintptr_t x, int64_t x_row_stride, uintptr_t w, int64_t w_row_stride, uintptr_t bias, uintptr_t residual,
         int64_t residual_row_stride, uintptr_t out, int64_t out_row_stride, int64_t M, int64_t N, int64_t K,
         int dtype_code, int act_code, uintptr_t stream, int config) {
        const FusedLinearArgs a = make_fused_args(x, x_row_stride, w, w_row_stride, bias, residual,
                                                  residual_row_stride, out, out_row_stride, M, N, K, dtype_code,
                                                  act_code, config);
        py::gil_scoped_release release;
        fused_linear(a, stream);
      },
      BIGPERF_FUSED_LINEAR_PY_ARGS, py::arg("stream"), py::arg("config") = -1, kFusedLinearDoc);
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
      BIGPERF_W8A16_PY_ARGS, py::arg("stream"), py::arg("config") = -1, py::arg("splits") = -1, kW8A16Doc);
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
      BIGPERF_S24_PY_ARGS, py::arg("stream"), py::arg("config") = -1, kS24Doc);
}
