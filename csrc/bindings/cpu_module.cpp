// bigperf._C: the CPU kernels behind a raw-pointer interface (no torch headers).
// Pointers arrive as integers from the Python op wrappers, which validate tensors
// first; each op family's binding file re-checks every size before a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/fused_linear.h"  // kNumActivations
#include "cpu/thread_pool.h"

namespace py = pybind11;
using namespace bigperf::cpu;

// One registration function per op family (csrc/bindings/cpu_<family>.cpp).
void register_fused_linear(py::module_& m);
void register_int8_linear(py::module_& m);
void register_sparse_linear(py::module_& m);
void register_shm(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "bigperf CPU kernels (raw-pointer interface; see bigperf/ops for the torch ops)";
  // The activation codes the kernels know: 0 .. NUM_ACTIVATIONS - 1, bigperf/ops/activations.py's order.
  m.attr("NUM_ACTIVATIONS") = kNumActivations;
  m.def("compiled_isas", &compiled_isas, "ISA paths compiled into this module, best first");
  m.def("runnable_isas", &runnable_isas, "compiled ISA paths this CPU can execute, best first");
  m.def("cpu_features", [] {
    const CpuFeatures& f = cpu_features();
    py::dict d;
    d["avx2"] = f.avx2; d["fma"] = f.fma; d["f16c"] = f.f16c;
    d["avx512f"] = f.avx512f; d["avx512bw"] = f.avx512bw; d["avx512vl"] = f.avx512vl;
    d["avx512dq"] = f.avx512dq; d["avx512vnni"] = f.avx512vnni; d["avx512bf16"] = f.avx512bf16;
    d["amx_tile"] = f.amx_tile; d["amx_bf16"] = f.amx_bf16; d["amx_int8"] = f.amx_int8;
    return d;
  });
  m.def("adopt_openmp_runtime", &adopt_openmp_runtime, py::arg("path"),
        "run parallel regions on the OpenMP runtime already loaded from path (torch's); False if it is not "
        "loaded or lacks GOMP_parallel");
  m.def("use_own_threads", &use_own_threads, "run parallel regions on bigperf's own thread pool");
  m.def("thread_runtime", &thread_runtime, "'own' or the path of the adopted OpenMP runtime");
  // For tests of the parallel regions themselves: how many times each index of [0, n) was
  // visited, raising RuntimeError from the chunk that holds index fail_at (if in range).
  m.def("_test_parallel_for", [](int64_t n, int threads, int64_t grain, int64_t fail_at) {
    std::vector<int> visits(static_cast<size_t>(n > 0 ? n : 0), 0);
    {
      py::gil_scoped_release release;
      parallel_for(n, threads, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          if (i == fail_at) throw std::runtime_error("chunk holding index " + std::to_string(i) + " failed");
          ++visits[static_cast<size_t>(i)];
        }
      });
    }
    return visits;
  }, py::arg("n"), py::arg("threads"), py::arg("grain"), py::arg("fail_at") = -1);
  register_fused_linear(m);
  register_int8_linear(m);
  register_sparse_linear(m);
  register_shm(m);
}
