// bigperf._C: the CPU kernels behind a raw-pointer interface (no torch headers).
// Pointers arrive as integers from the Python op wrappers, which validate tensors
// first; each op family's binding file re-checks every size before a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu/cpu_features.h"

namespace py = pybind11;
using namespace bigperf::cpu;

// One registration function per op family (csrc/bindings/cpu_<family>.cpp).
void register_fused_linear(py::module_& m);
void register_int8_linear(py::module_& m);
void register_sparse_linear(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "bigperf CPU kernels (raw-pointer interface; see bigperf/ops for the torch ops)";
  m.def("compiled_isas", &compiled_isas, "ISA paths compiled into this module, best first");
  m.def("runnable_isas", &runnable_isas, "compiled ISA paths this CPU can execute, best first");
  m.def("cpu_features", [] {
    const CpuFeatures& f = cpu_features();
    py::dict d;
    d["avx2"] = f.avx2; d["fma"] = f.fma; d["f16c"] = f.f16c;
    d["avx512f"] = f.avx512f; d["avx512bw"] = f.avx512bw; d["avx512vl"] = f.avx512vl;
    d["avx512dq"] = f.avx512dq; d["avx512vnni"] = f.avx512vnni; d["avx512bf16"] = f.avx512bf16;
    return d;
  });
  register_fused_linear(m);
  register_int8_linear(m);
  register_sparse_linear(m);
}
