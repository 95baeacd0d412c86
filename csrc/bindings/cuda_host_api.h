// The part of bigperf._C_cuda's interface that needs no GPU: argument structs built from
// the bindings' integers, the published requirements, and the configuration / K-split
// choices. Shared by the production module (cuda_module.cpp) and the tests' emulator
// module (tests/csrc/cuda_emulation), so that both marshal arguments and plan launches
// with one piece of code.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "cuda/cuda_api.h"

namespace bigperf::cuda::bindings {

namespace py = pybind11;

inline FusedLinearArgs make_fused_args(uintptr_t x, int64_t x_row_stride, uintptr_t w, int64_t w_row_stride,
                                       uintptr_t bias, uintptr_t residual, int64_t residual_row_stride, uintptr_t out,
                                       int64_t out_row_stride, int64_t M, int64_t N, int64_t K, int dtype_code,
                                       int act_code, int config) {
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

inline W8A16Args make_w8a16_args(uintptr_t x, int64_t x_row_stride, uintptr_t w, uintptr_t scale, uintptr_t zero,
                                 int64_t group_size, uintptr_t bias, uintptr_t out, int64_t out_row_stride,
                                 uintptr_t workspace, int64_t workspace_bytes, uintptr_t counters,
                                 int64_t counters_count, int64_t M, int64_t N, int64_t K, int dtype_code,
                                 int act_code, int config, int splits) {
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

inline S24Args make_s24_args(uintptr_t x, int64_t x_row_stride, uintptr_t values, int64_t values_row_stride,
                             uintptr_t meta, uintptr_t bias, uintptr_t out, int64_t out_row_stride, int64_t M,
                             int64_t N, int64_t K, int dtype_code, int act_code, int config) {
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

// The argument names of the three entry points, launch and emulation alike.
#define BIGPERF_FUSED_LINEAR_PY_ARGS                                                                            \
  py::arg("x_ptr"), py::arg("x_row_stride"), py::arg("w_ptr"), py::arg("w_row_stride"), py::arg("bias_ptr"),   \
      py::arg("residual_ptr"), py::arg("residual_row_stride"), py::arg("out_ptr"), py::arg("out_row_stride"), \
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("dtype_code"), py::arg("act_code")
#define BIGPERF_W8A16_PY_ARGS                                                                                   \
  py::arg("x_ptr"), py::arg("x_row_stride"), py::arg("w_ptr"), py::arg("scale_ptr"), py::arg("zero_ptr"),      \
      py::arg("group_size"), py::arg("bias_ptr"), py::arg("out_ptr"), py::arg("out_row_stride"),               \
      py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("counters_ptr"), py::arg("counters_count"), \
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("dtype_code"), py::arg("act_code")
#define BIGPERF_S24_PY_ARGS                                                                                      \
  py::arg("x_ptr"), py::arg("x_row_stride"), py::arg("values_ptr"), py::arg("values_row_stride"),               \
      py::arg("meta_ptr"), py::arg("bias_ptr"), py::arg("out_ptr"), py::arg("out_row_stride"), py::arg("M"),     \
      py::arg("N"), py::arg("K"), py::arg("dtype_code"), py::arg("act_code")

inline py::dict act_codes() {
  py::dict acts;
  acts["none"] = 0;
  acts["relu"] = 1;
  acts["gelu_erf"] = 2;
  acts["gelu_tanh"] = 3;
  acts["silu"] = 4;
  return acts;
}

// What every kernel publishes: dtype and activation codes, its configurations by index,
// and the dynamic shared memory each configuration needs per block.
inline py::dict requirements(int num_configs, std::string (*name_of)(int), int (*smem_of)(int)) {
  py::dict d;
  py::dict dtypes;
  dtypes["float16"] = 1;
  dtypes["bfloat16"] = 2;
  d["dtype_codes"] = dtypes;
  d["act_codes"] = act_codes();
  py::list configs, smem;
  for (int c = 0; c < num_configs; ++c) {
    configs.append(name_of(c));
    smem.append(smem_of(c));
  }
  d["configs"] = configs;
  d["config_smem_bytes"] = smem;
  d["row_stride_multiple"] = 8;
  d["pointer_alignment"] = 16;
  d["bias_alignment"] = 4;
  return d;
}

inline py::dict fused_linear_requirements() {
  py::dict d = requirements(fused_linear_num_configs(), fused_linear_config_name, fused_linear_config_smem);
  d["k_multiple"] = kFusedLinearKMultiple;
  d["column_stride"] = 1;
  d["bias_dtype"] = "float32";
  return d;
}

inline py::dict w8a16_requirements() {
  py::dict d = requirements(w8a16_num_configs(), w8a16_config_name, w8a16_config_smem);
  d["layout_version"] = kW8A16LayoutVersion;
  d["k_multiple"] = 8;
  d["pack_n"] = 32;
  d["pack_k"] = 16;
  d["group_sizes"] = py::make_tuple(0, 32, 64, 128, 256);
  return d;
}

inline py::dict s24_requirements() {
  py::dict d = requirements(s24_num_configs(), s24_config_name, s24_config_smem);
  d["layout_version"] = kS24LayoutVersion;
  d["k_multiple"] = 8;
  d["pack_k"] = 32;
  d["pack_rows"] = 16;
  return d;
}

// Requirements, configuration choices and the W8A16 plan: everything of the module that
// runs without a GPU.
inline void bind_host_api(py::module_& m) {
  m.def("fused_linear_requirements", &fused_linear_requirements,
        "What fused_linear needs from its arguments (alignment, strides, codes, configs and their shared memory)");
  m.def("fused_linear_choose_config", &fused_linear_choose_config, py::arg("M"), py::arg("N"), py::arg("sm_count"),
        py::arg("max_smem_bytes") = 0,
        "Index of the tile configuration fused_linear picks for this shape on a GPU with sm_count SMs that allows "
        "max_smem_bytes of shared memory per block (0 = no limit); -1 when none fits");
  m.def("w8a16_requirements", &w8a16_requirements,
        "What w8a16_linear needs from its arguments (layout version, alignment, codes, configs and their shared "
        "memory)");
  m.def(
      "w8a16_plan",
      [](int64_t M, int64_t N, int64_t K, int sm_count, int config, int splits, int max_smem) {
        const W8A16Plan plan = w8a16_plan(M, N, K, sm_count, config, splits, max_smem);
        py::dict d;
        d["config"] = plan.config;
        d["splits"] = plan.splits;
        d["workspace_bytes"] = plan.workspace_bytes;
        d["counters"] = plan.counters;
        return d;
      },
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("sm_count"), py::arg("config") = -1, py::arg("splits") = -1,
      py::arg("max_smem_bytes") = 0,
      "The tile configuration (-1: none fits max_smem_bytes of shared memory per block; 0 = no limit) and K split "
      "w8a16_linear runs for this shape, and the split-K workspace (bytes) and counters (int32) it then needs");
  m.def("sparse24_requirements", &s24_requirements,
        "What sparse24_linear needs from its arguments (layout version, alignment, codes, configs and their shared "
        "memory)");
  m.def("sparse24_choose_config", &s24_choose_config, py::arg("M"), py::arg("N"), py::arg("sm_count"),
        py::arg("max_smem_bytes") = 0,
        "Index of the tile configuration sparse24_linear picks for this shape (as fused_linear_choose_config)");
}

}  // namespace bigperf::cuda::bindings
