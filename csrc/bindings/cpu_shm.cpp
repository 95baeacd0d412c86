// Binding of the shared-memory all-reduce (see csrc/cpu/shm_all_reduce.h).
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "bindings/cpu_checks.h"
#include "cpu/shm_all_reduce.h"

namespace py = pybind11;
using namespace bigperf::cpu;
using bigperf::bindings::require;

namespace {

constexpr const char* kFn = "bigperf._C.shm_all_reduce";

void shm_all_reduce(uintptr_t segment, int64_t capacity, int rank, int world, uintptr_t data, int64_t numel,
                    int op, uint64_t seq, double timeout_s) {
  require(world >= 1 && world <= kShmMaxRanks, kFn,
          "argument 'world' must be in [1, " + std::to_string(kShmMaxRanks) + "], got " + std::to_string(world));
  require(rank >= 0 && rank < world, kFn, "argument 'rank' must be in [0, world), got " + std::to_string(rank));
  require(capacity > 0 && capacity % kShmLine == 0, kFn, "argument 'capacity' must be a positive multiple of 64");
  require(numel >= 0 && numel * static_cast<int64_t>(sizeof(float)) <= capacity, kFn,
          "argument 'numel' " + std::to_string(numel) + " does not fit a slot of " + std::to_string(capacity) +
              " bytes");
  require(segment != 0 && segment % kShmLine == 0, kFn, "argument 'segment' must be a 64-byte aligned address");
  require(numel == 0 || (data != 0 && data % alignof(float) == 0), kFn, "argument 'data' must be fp32-aligned");
  require(op == 0 || op == 1, kFn, "argument 'op' must be 0 (sum) or 1 (max)");
  require(seq >= 1, kFn, "argument 'seq' must be >= 1");
  bool done;
  {
    py::gil_scoped_release release;
    done = shm_all_reduce_f32(reinterpret_cast<void*>(segment), capacity, rank, world,
                              reinterpret_cast<float*>(data), numel, static_cast<ShmReduceOp>(op), seq, timeout_s);
  }
  if (!done)
    throw std::runtime_error(std::string(kFn) + ": rank " + std::to_string(rank) + " waited " +
                             std::to_string(timeout_s) + " s for the other ranks of call " + std::to_string(seq) +
                             "; a rank has stopped or called collectives in another order");
}

}  // namespace

void register_shm(py::module_& m) {
  m.attr("SHM_HEADER_BYTES") = kShmHeader;
  m.attr("SHM_MAX_RANKS") = kShmMaxRanks;
  m.def("shm_segment_bytes", &shm_segment_bytes, py::arg("world"), py::arg("capacity"),
        "bytes of a shared segment for `world` ranks with slots of `capacity` bytes");
  m.def("shm_all_reduce", &shm_all_reduce, py::arg("segment"), py::arg("capacity"), py::arg("rank"),
        py::arg("world"), py::arg("data"), py::arg("numel"), py::arg("op"), py::arg("seq"), py::arg("timeout_s"),
        "all-reduce (0 sum, 1 max) of numel fp32 at data among the ranks sharing segment; call seq of each "
        "rank (1, 2, ...); releases the GIL; RuntimeError after timeout_s");
}
