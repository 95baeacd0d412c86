// See shm_all_reduce.h.
#include "cpu/shm_all_reduce.h"

#include <sched.h>

#include <chrono>
#include <cmath>
#include <cstring>

namespace bigperf::cpu {
namespace {

uint64_t* counter(void* segment, int rank) {
  return reinterpret_cast<uint64_t*>(static_cast<char*>(segment) + rank * kShmLine);
}

float* slot(void* segment, int64_t capacity, int world, uint64_t seq, int rank) {
  char* banks = static_cast<char*>(segment) + kShmHeader;
  return reinterpret_cast<float*>(banks + (static_cast<int64_t>(seq % 2) * world + rank) * capacity);
}

// Every rank's counter at >= seq, or false after timeout_s. Spins on the cache lines,
// yielding the core between rounds once it has waited a while (more ranks than cores).
bool wait_all(void* segment, int world, uint64_t seq, double timeout_s) {
  const auto start = std::chrono::steady_clock::now();
  for (int64_t round = 0;; ++round) {
    int ready = 0;
    for (int r = 0; r < world; ++r) ready += __atomic_load_n(counter(segment, r), __ATOMIC_ACQUIRE) >= seq;
    if (ready == world) return true;
    if (round >= 256) {
      sched_yield();
      if ((round & 1023) == 0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s)
        return false;
    }
  }
}

}  // namespace

bool shm_all_reduce_f32(void* segment, int64_t capacity, int rank, int world, float* data, int64_t numel,
                        ShmReduceOp op, uint64_t seq, double timeout_s) {
  std::memcpy(slot(segment, capacity, world, seq, rank), data, static_cast<size_t>(numel) * sizeof(float));
  __atomic_store_n(counter(segment, rank), seq, __ATOMIC_RELEASE);
  if (!wait_all(segment, world, seq, timeout_s)) return false;
  std::memcpy(data, slot(segment, capacity, world, seq, 0), static_cast<size_t>(numel) * sizeof(float));
  for (int r = 1; r < world; ++r) {
    const float* other = slot(segment, capacity, world, seq, r);
    if (op == ShmReduceOp::sum) {
      for (int64_t i = 0; i < numel; ++i) data[i] += other[i];
    } else {
      for (int64_t i = 0; i < numel; ++i)
        data[i] = std::isnan(data[i]) || std::isnan(other[i]) ? NAN : (other[i] > data[i] ? other[i] : data[i]);
    }
  }
  return true;
}

}  // namespace bigperf::cpu
